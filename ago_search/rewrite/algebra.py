"""Rules from associativity, commutativity, distributivity and linearity: constant chains,
scales and batch norms folded into weights, common factors pulled out."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import tvm_ffi
from tvm import relax

from ago_search.rewrite.basic import call_like, ints, is_float, normalize_axes
from ago_search.rewrite.core import (
    RewriteContext,
    Rule,
    call_op_name,
    const_value,
    dtype_of,
    make_const,
    static_shape,
)

CONV_OPS = frozenset(
    {"relax.nn.conv1d", "relax.nn.conv2d", "relax.nn.conv3d", "relax.nn.conv2d_transpose"}
)
REORGANIZE_OPS = frozenset(
    {
        "relax.reshape",
        "relax.permute_dims",
        "relax.squeeze",
        "relax.expand_dims",
        "relax.flatten",
        "relax.strided_slice",
    }
)


# ---------------------------------------------------------------------------------------------
# x + c and x * c views of a call


@dataclass(frozen=True)
class _Term:
    """`call` read as x (+ or *) c, c a constant (as float64; `inverse`: c is a divisor)."""

    x: relax.Expr
    c: np.ndarray
    inverse: bool = False

    def value(self) -> np.ndarray:
        return 1.0 / self.c if self.inverse else self.c


def _float_const(expr: Any) -> np.ndarray | None:
    """A float constant's value. Relax arithmetic does not promote, so a float constant
    operand means a float operation (this also works on calls not yet normalized)."""
    value = const_value(expr)
    if value is None or not np.issubdtype(value.dtype, np.floating):
        return None
    return value


def _additive(call: Any) -> _Term | None:
    """call = x + c (add either way round, or x - c)."""
    name = call_op_name(call)
    if name not in ("relax.add", "relax.subtract"):
        return None
    a, b = call.args
    cb, ca = _float_const(b), _float_const(a)
    if cb is not None and ca is None:
        return _Term(a, cb.astype(np.float64) * (-1.0 if name == "relax.subtract" else 1.0))
    if name == "relax.add" and ca is not None and cb is None:
        return _Term(b, ca.astype(np.float64))
    return None


def _multiplicative(call: Any) -> _Term | None:
    """call = x * c (multiply either way round, or x / c with c nonzero)."""
    name = call_op_name(call)
    if name not in ("relax.multiply", "relax.divide"):
        return None
    a, b = call.args
    cb, ca = _float_const(b), _float_const(a)
    if cb is not None and ca is None:
        if name == "relax.divide":
            if not np.all(cb != 0):
                return None
            return _Term(a, cb.astype(np.float64), inverse=True)
        return _Term(a, cb.astype(np.float64))
    if name == "relax.multiply" and ca is not None and cb is None:
        return _Term(b, ca.astype(np.float64))
    return None


def _small_enough(result: np.ndarray, *parts: np.ndarray) -> bool:
    """A combined constant may not be bigger than the biggest constant it replaces."""
    return result.size <= max(p.size for p in parts)


def _bias_op(x: relax.Expr, c: np.ndarray, dtype: str) -> relax.Expr:
    return relax.op.add(x, make_const(c, dtype))


# ---------------------------------------------------------------------------------------------
# combine_constant_chain


def _layer_norm_vector(call: relax.Call, c: np.ndarray) -> np.ndarray | None:
    """c as a vector over layer_norm's normalized axes (gamma's shape), if it varies only there."""
    shape = static_shape(call)
    gamma_shape = static_shape(call.args[1])
    if shape is None or gamma_shape is None or c.ndim > len(shape):
        return None
    rank = len(shape)
    axes = normalize_axes(ints(call.attrs.axes), rank)
    full = c.reshape((1,) * (rank - c.ndim) + c.shape)
    if any(full.shape[i] != 1 for i in range(rank) if i not in axes):
        return None
    vec = full.reshape([full.shape[i] for i in sorted(axes)])
    try:
        return np.broadcast_to(vec, gamma_shape)
    except ValueError:
        return None


def _combine_constant_chain(ctx: RewriteContext, value: relax.Expr) -> relax.Expr | None:
    dtype = dtype_of(value)
    outer = _additive(value)
    if outer is not None:
        inner_call = ctx.absorbable(outer.x)
        if inner_call is None:
            return None
        inner = _additive(inner_call)
        if inner is not None:
            k = inner.c + outer.c
            if _small_enough(k, inner.c, outer.c):
                return _bias_op(inner.x, k, dtype)
        if call_op_name(inner_call) == "relax.nn.layer_norm" and inner_call.attrs.center:
            vec = _layer_norm_vector(inner_call, outer.c)
            beta = const_value(inner_call.args[2])
            if vec is not None and beta is not None:
                new_beta = make_const(beta.astype(np.float64) + vec, str(beta.dtype))
                args = list(inner_call.args)
                return call_like(inner_call, [args[0], args[1], new_beta])
        return None
    outer = _multiplicative(value)
    if outer is None:
        return None
    inner_call = ctx.absorbable(outer.x)
    if inner_call is None:
        return None
    inner = _multiplicative(inner_call)
    if inner is not None:
        k = inner.value() * outer.value()
        if not _small_enough(k, inner.c, outer.c):
            return None
        return relax.op.multiply(inner.x, make_const(k, dtype))
    inner = _additive(inner_call)
    if inner is None:
        return None
    # (x * c1 + c2) * c3 -> x * (c1 c3) + c2 c3: one multiply fewer
    scaled_call = ctx.absorbable(inner.x)
    scaled = _multiplicative(scaled_call) if scaled_call is not None else None
    if scaled is None:
        return None
    k_mul = scaled.value() * outer.value()
    k_add = inner.c * outer.value()
    if not (_small_enough(k_mul, scaled.c, outer.c) and _small_enough(k_add, inner.c, outer.c)):
        return None
    return _bias_op(relax.op.multiply(scaled.x, make_const(k_mul, dtype)), k_add, dtype)


COMBINE_CONSTANT_CHAIN = Rule(
    name="combine_constant_chain",
    property="associativity",
    formula=(
        "(x + c1) + c2 -> x + (c1+c2) (also with -, either operand order);  (x * c1) * c2 -> "
        "x * (c1 c2) (also with /);  (x*c1 + c2) * c3 -> x*(c1 c3) + c2 c3;  "
        "layer_norm(x, g, b) + c -> layer_norm(x, g, b+c)"
    ),
    precondition=(
        "float dtype; c1, c2, c3 compile-time constants (combined in float64, then rounded "
        "once); the inner result is read only by this binding; the combined constant is no "
        "larger than the largest one it replaces (no broadcast blow-up); for layer_norm, c "
        "varies only along the normalized axes and the norm has a bias (center=True)"
    ),
    apply=_combine_constant_chain,
)


# ---------------------------------------------------------------------------------------------
# fold_scale_into_linear


def _aligned(c: np.ndarray, rank: int) -> np.ndarray | None:
    if c.ndim > rank:
        return None
    return c.reshape((1,) * (rank - c.ndim) + c.shape)


def _only_along(c: np.ndarray, axis: int) -> bool:
    return all(n == 1 for i, n in enumerate(c.shape) if i != axis)


def _layout_axis(layout: Any, letter: str) -> int | None:
    layout = str(layout)
    if not layout.isalpha() or layout.count(letter) != 1:
        return None
    return layout.index(letter)


def _scale_weight(weight: np.ndarray, vec: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * weight.ndim
    shape[axis] = -1 if vec.size > 1 else 1
    return weight.astype(np.float64) * vec.reshape(shape)


def scale_expr(ctx: RewriteContext, expr: relax.Expr, c: np.ndarray) -> relax.Expr | None:
    """An expression equal to `expr * c` with no multiply, c pushed into constants, or None.

    c (float64) broadcasts to expr's shape without enlarging it. Linear producers are looked
    through: a constant is scaled; conv / conv_transpose by a per-output-channel c (weights
    scaled); matmul by a c along the output's last axis (constant right operand) or second last
    axis (constant left operand); add / subtract when both operands scale; multiply / divide by
    a constant; layer_norm by a c over its normalized axes (gamma and beta scaled); and, for a
    scalar c only, reorganizing ops (reshape, permute_dims, ...) and matmul of two variables.
    Every producer looked through must be read only by the expression being rewritten.
    """
    shape = static_shape(expr)
    dtype = dtype_of(expr)
    if shape is None or dtype is None or not dtype.startswith("float"):
        return None
    constant = const_value(expr)
    if constant is not None:
        # k * c may have another shape than k (a (C,1,1) bias times a (1,C,1,1) scale): both
        # broadcast to the consumer's shape, so the consumer's result keeps its shape
        try:
            result = constant.astype(np.float64) * c
        except ValueError:
            return None
        return make_const(result, dtype) if result.size <= max(constant.size, c.size) else None
    try:
        if tuple(np.broadcast_shapes(shape, c.shape)) != shape:
            return None
    except ValueError:
        return None
    call = ctx.absorbable(expr)
    if call is None:
        return None
    name = call_op_name(call)
    cf = _aligned(c, len(shape))
    if cf is None:
        return None
    scalar = c.size == 1
    args = list(call.args)

    if name in CONV_OPS:
        weight = const_value(args[1])
        out_axis = _layout_axis(call.attrs.out_layout, "C")
        w_axis = _layout_axis(call.attrs.kernel_layout, "O")
        if weight is None or out_axis is None or w_axis is None or not _only_along(cf, out_axis):
            return None
        if name == "relax.nn.conv2d_transpose" and int(call.attrs.groups) != 1 and not scalar:
            return None  # weight's O axis holds O/groups channels there
        vec = cf.reshape(-1)
        new_w = _scale_weight(weight, vec, w_axis)
        return call_like(call, [args[0], make_const(new_w, str(weight.dtype))])
    if name == "relax.matmul":
        a, b = args
        ka, kb = const_value(a), const_value(b)
        if kb is not None and kb.ndim >= 2 and _only_along(cf, len(shape) - 1):
            new_b = _scale_weight(kb, cf.reshape(-1), kb.ndim - 1)
            return call_like(call, [a, make_const(new_b, str(kb.dtype))])
        if ka is not None and ka.ndim >= 2 and len(shape) >= 2 and _only_along(cf, len(shape) - 2):
            new_a = _scale_weight(ka, cf.reshape(-1), ka.ndim - 2)
            return call_like(call, [make_const(new_a, str(ka.dtype)), b])
        if scalar and ka is None and kb is None:
            new_a = scale_expr(ctx, a, c)
            if new_a is not None:
                return call_like(call, [new_a, b])
            new_b = scale_expr(ctx, b, c)
            if new_b is not None:
                return call_like(call, [a, new_b])
        return None
    if name in ("relax.add", "relax.subtract"):
        new_args = [scale_expr(ctx, arg, c) for arg in args]
        if any(arg is None for arg in new_args):
            return None
        return call_like(call, new_args)
    if name in ("relax.multiply", "relax.divide"):
        term = _multiplicative(call)
        if term is None:
            return None
        k = term.value() * c
        if k.size > max(term.c.size, c.size):
            return None
        return relax.op.multiply(term.x, make_const(k, dtype))
    if name == "relax.nn.layer_norm" and call.attrs.scale:
        vec = _layer_norm_vector(call, c)
        gamma, beta = const_value(args[1]), const_value(args[2])
        if vec is None or gamma is None or beta is None:
            return None
        new_gamma = make_const(gamma.astype(np.float64) * vec, str(gamma.dtype))
        new_beta = make_const(beta.astype(np.float64) * vec, str(beta.dtype))
        return call_like(call, [args[0], new_gamma, new_beta])
    if name in REORGANIZE_OPS and scalar:
        new_x = scale_expr(ctx, args[0], c.reshape(()))
        return call_like(call, [new_x, *args[1:]]) if new_x is not None else None
    return None


def _fold_scale_into_linear(ctx: RewriteContext, value: relax.Expr) -> relax.Expr | None:
    term = _multiplicative(value)
    if term is None or const_value(term.x) is not None:
        return None
    return scale_expr(ctx, term.x, term.value())


FOLD_SCALE_INTO_LINEAR = Rule(
    name="fold_scale_into_linear",
    property="linearity",
    formula=(
        "conv(x, W) * c -> conv(x, W c);  (conv(x, W) + b) * c -> conv(x, W c) + b c;  "
        "(x @ W) * c -> x @ (W c);  scalar s: reshape/permute/slice(f(x)) * s -> "
        "reshape/permute/slice(f(x) * s) and (a @ b) * s -> (a s) @ b, pushed on into a "
        "constant;  layer_norm(x, g, b) * c -> layer_norm(x, g c, b c)"
    ),
    precondition=(
        "float dtype; c a compile-time constant that does not broadcast the product to a larger "
        "shape; per-channel c only along the conv's output-channel axis (any layout with a C "
        "and an O letter; conv2d_transpose only with groups=1), the matmul output's last axis "
        "(constant right operand) or second last (constant left operand), or layer_norm's "
        "normalized axes; any other axis pattern only for a one-element c; every producer on "
        "the way is read only by this chain; every constant it reaches stays no larger"
    ),
    apply=_fold_scale_into_linear,
)


# ---------------------------------------------------------------------------------------------
# fold_batch_norm


def _fold_batch_norm(ctx: RewriteContext, value: relax.Expr) -> relax.Expr | None:
    if not isinstance(value, relax.TupleGetItem) or int(value.index) != 0:
        return None
    bn = ctx.absorbable(value.tuple_value, "relax.nn.batch_norm")
    if bn is None or bool(bn.attrs.training):
        return None
    x = bn.args[0]
    gamma, beta, mean, var = (const_value(a) for a in bn.args[1:5])
    shape, dtype = static_shape(x), dtype_of(x)
    if any(v is None for v in (gamma, beta, mean, var)) or shape is None or dtype != "float32":
        return None
    axis = normalize_axes([int(bn.attrs.axis)], len(shape))[0]
    eps = float(bn.attrs.epsilon)
    scale = gamma.astype(np.float64) if bn.attrs.scale else np.ones(gamma.shape)
    shift = beta.astype(np.float64) if bn.attrs.center else np.zeros(beta.shape)
    s = scale / np.sqrt(var.astype(np.float64) + eps)
    t = shift - mean.astype(np.float64) * s
    channel_shape = [1] * len(shape)
    channel_shape[axis] = -1
    s, t = s.reshape(channel_shape), t.reshape(channel_shape)
    scaled = scale_expr(ctx, x, s)
    if scaled is None:
        return None
    # conv + b scaled is conv' + b s: the BN shift joins that bias instead of adding an op
    bias = _additive(scaled) if isinstance(scaled, relax.Call) else None
    if bias is not None and _small_enough(bias.c + t, bias.c, t):
        return _bias_op(bias.x, bias.c + t, dtype)
    return _bias_op(scaled, t, dtype)


FOLD_BATCH_NORM = Rule(
    name="fold_batch_norm",
    property="linearity",
    formula=(
        "batch_norm(conv(x, W) [+ b])[0] -> conv(x, W s) + (b s + t), s = gamma / sqrt(var + "
        "eps), t = beta - mean s (same for matmul and any producer fold_scale_into_linear "
        "accepts)"
    ),
    precondition=(
        "inference form (training=False) with constant gamma, beta, mean, var; float32; only "
        "field 0 of the batch_norm is read (its batch statistics are not); the producer absorbs "
        "the per-channel scale (see fold_scale_into_linear) and is read only by the batch_norm, "
        "else folding would change what its other readers see"
    ),
    apply=_fold_batch_norm,
)


# ---------------------------------------------------------------------------------------------
# distribute_common_factor


def _same_operand(a: Any, b: Any) -> bool:
    if a.same_as(b):
        return True
    ka, kb = const_value(a), const_value(b)
    return (
        ka is not None
        and kb is not None
        and ka.shape == kb.shape
        and ka.dtype == kb.dtype
        and bool(np.array_equal(ka, kb))
    )


def _combine(name: str, b: relax.Expr, c: relax.Expr, dtype: str) -> relax.Expr | None:
    kb, kc = const_value(b), const_value(c)
    if kb is not None and kc is not None:
        k = np.add(kb, kc, dtype=np.float64) if name == "relax.add" else np.subtract(kb, kc)
        return make_const(k, dtype) if k.size <= max(kb.size, kc.size) else None
    op = relax.op.add if name == "relax.add" else relax.op.subtract
    return op(b, c)


def _distribute_common_factor(ctx: RewriteContext, value: relax.Expr) -> relax.Expr | None:
    name = call_op_name(value)
    if name not in ("relax.add", "relax.subtract") or not is_float(value):
        return None
    p = ctx.absorbable(value.args[0])
    q = ctx.absorbable(value.args[1])
    if p is None or q is None or call_op_name(p) != call_op_name(q):
        return None
    kind = call_op_name(p)
    dtype = dtype_of(value)
    if kind == "relax.multiply":
        for i in (0, 1):
            for j in (0, 1):
                if _same_operand(p.args[i], q.args[j]):
                    inner = _combine(name, p.args[1 - i], q.args[1 - j], dtype)
                    if inner is not None:
                        return relax.op.multiply(p.args[i], inner)
        return None
    if kind == "relax.matmul" or kind in CONV_OPS:
        if not tvm_ffi.structural_equal(p.attrs, q.attrs):
            return None
        # x @ W1 + x @ W2 -> x @ (W1 + W2); W1 @ x + W2 @ x -> (W1 + W2) @ x (matmul only)
        sides = (0, 1) if kind == "relax.matmul" else (0,)
        for shared in sides:
            other = 1 - shared
            if not p.args[shared].same_as(q.args[shared]):
                continue
            if static_shape(p.args[other]) != static_shape(q.args[other]):
                continue
            inner = _combine(name, p.args[other], q.args[other], dtype)
            if inner is None:
                continue
            args = [None, None]
            args[shared], args[other] = p.args[shared], inner
            return call_like(p, args)
    return None


DISTRIBUTE_COMMON_FACTOR = Rule(
    name="distribute_common_factor",
    property="distributivity",
    formula=(
        "a*b + a*c -> a*(b+c) (also -, a in either operand position: commutativity);  "
        "x@W1 + x@W2 -> x@(W1+W2);  W1@x + W2@x -> (W1+W2)@x;  conv(x, W1) + conv(x, W2) -> "
        "conv(x, W1+W2)"
    ),
    precondition=(
        "float dtype; the common factor is the same value (the same Var, or equal constants); "
        "both products are read only by this sum; matmuls / convs have equal attributes and "
        "equal-shaped other operands; b+c of two constants is folded at once and must be no "
        "larger than the larger of them"
    ),
    apply=_distribute_common_factor,
)
