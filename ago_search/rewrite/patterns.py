"""Rules that recognize a decomposed operator and put the fused operator back: Clip's
maximum/minimum pair, LayerNorm written as moments (reduce, then broadcast back), GELU's erf
form. Each one replaces a chain of one-to-one and reduction ops by a single operator whose
legalization computes the same formula."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import tvm
import tvm_ffi
from tvm import relax, topi

from ago_search.rewrite.basic import ints, is_float, normalize_axes, scalar_of
from ago_search.rewrite.core import (
    RewriteContext,
    Rule,
    call_op_name,
    const_value,
    dtype_of,
    make_const,
    static_shape,
)

# ---------------------------------------------------------------------------------------------
# clip_from_min_max

_TOPI_BOUND = {"max": topi.maximum, "min": topi.minimum}
_HIGH_LEVEL_BOUND = {"relax.maximum": "max", "relax.minimum": "min"}
_callee_cache: dict[tuple[int, str], bool] = {}


def _is_topi_bound(func: Any, kind: str, args: list[relax.Expr]) -> bool:
    """The call_tir callee is exactly what `emit_te(topi.maximum/minimum, ...)` generates for
    these argument types (how TVM's ONNX importer lowers Clip): checked structurally, not by
    name, since a kernel's name says nothing about what it computes."""
    if not isinstance(func, tvm.tirx.PrimFunc):
        return False
    key = (tvm_ffi.structural_hash(func, map_free_vars=True), kind)
    if key not in _callee_cache:
        bb = relax.BlockBuilder()
        params = [relax.Var(f"a{i}", a.ty) for i, a in enumerate(args)]
        with bb.function("f", params):
            out = bb.emit_te(_TOPI_BOUND[kind], *params)
            bb.emit_func_output(out)
        generated = [f for gv, f in bb.get().functions.items() if gv.name_hint != "f"]
        _callee_cache[key] = len(generated) == 1 and tvm_ffi.structural_equal(
            generated[0], func, map_free_vars=True
        )
    return _callee_cache[key]


def _bound(ctx: RewriteContext, call: Any) -> tuple[str, relax.Expr, float] | None:
    """call = max(x, b) or min(x, b) with b a one-element constant (relu = max(x, 0)):
    (kind, x, b)."""
    if not isinstance(call, relax.Call) or not is_float(call):
        return None
    name = call_op_name(call)
    if name == "relax.nn.relu":
        return "max", call.args[0], 0.0
    if name in _HIGH_LEVEL_BOUND:
        kind, args = _HIGH_LEVEL_BOUND[name], list(call.args)
    elif name == "relax.call_tir" and isinstance(call.args[1], relax.Tuple):
        args = list(call.args[1].fields)
        if len(args) != 2:
            return None
        callee = ctx.callee(call.args[0])
        kind = next((k for k in ("max", "min") if _is_topi_bound(callee, k, args)), None)
        if kind is None:
            return None
    else:
        return None
    for x, b in ((args[0], args[1]), (args[1], args[0])):
        bound = scalar_of(b)
        if bound is not None and const_value(x) is None and static_shape(x) == static_shape(call):
            return kind, x, bound
    return None


def _prim(value: float, dtype: str) -> relax.Expr:
    return relax.prim_value(tvm.tirx.FloatImm(dtype, value))


def _clip_from_min_max(ctx: RewriteContext, value: relax.Expr) -> relax.Expr | None:
    outer = _bound(ctx, value)
    if outer is None:
        return None
    kind, x, bound = outer
    dtype = dtype_of(value)
    if (kind, bound) in (("max", -math.inf), ("min", math.inf)):
        return x
    inner_call = ctx.absorbable(x)
    inner = _bound(ctx, inner_call) if inner_call is not None else None
    if inner is not None and inner[0] != kind:
        lo, hi = (bound, inner[2]) if kind == "max" else (inner[2], bound)
        if lo <= hi:
            return relax.op.clip(inner[1], _prim(lo, dtype), _prim(hi, dtype))
    if kind == "max" and bound == 0.0 and call_op_name(value) != "relax.nn.relu":
        return relax.op.nn.relu(x)
    return None


CLIP_FROM_MIN_MAX = Rule(
    name="clip_from_min_max",
    property="composition",
    formula=(
        "min(max(x, lo), hi) -> clip(x, lo, hi) (either nesting; relu(x) counts as max(x, 0));"
        "  max(x, 0) -> relu(x);  "
        "max(x, -inf) -> x;  min(x, +inf) -> x  (R.maximum/R.minimum, or the call_tir kernels "
        "TVM's ONNX importer emits for Clip)"
    ),
    precondition=(
        "float dtype; the bounds are one-element constants (fold_constants turns the "
        "importer's NaN guards, where(isnan(b), -inf, b), into constants first) with lo <= hi "
        "(otherwise min(max(x,lo),hi) is hi everywhere and clip would give lo); a call_tir "
        "kernel counts only if it is structurally identical to topi.maximum / topi.minimum for "
        "its argument types; the inner result is read only by the outer bound"
    ),
    apply=_clip_from_min_max,
)


# ---------------------------------------------------------------------------------------------
# recognize_layer_norm


def _mean_axes(call: Any, rank: int) -> list[int] | None:
    if call_op_name(call) != "relax.mean" or not bool(call.attrs.keepdims):
        return None
    axes = ints(call.attrs.axis)
    axes = list(range(rank)) if axes is None else normalize_axes(axes, rank)
    return sorted(axes)


def _recognize_layer_norm(ctx: RewriteContext, value: relax.Expr) -> relax.Expr | None:
    if call_op_name(value) != "relax.divide" or dtype_of(value) != "float32":
        return None
    d, s = value.args
    sqrt = ctx.absorbable(s, "relax.sqrt")
    var_eps = ctx.absorbable(sqrt.args[0], "relax.add") if sqrt is not None else None
    if var_eps is None:
        return None
    eps, m2 = next(
        (
            (scalar_of(b), a)
            for a, b in (var_eps.args, var_eps.args[::-1])
            if scalar_of(b) is not None
        ),
        (None, None),
    )
    if eps is None or eps < 0:
        return None
    m2_call = ctx.absorbable(m2)
    sq = ctx.absorbable(m2_call.args[0]) if m2_call is not None else None
    if sq is None:
        return None
    squares_d = (
        call_op_name(sq) == "relax.power" and sq.args[0].same_as(d) and scalar_of(sq.args[1]) == 2
    ) or (call_op_name(sq) == "relax.multiply" and sq.args[0].same_as(d) and sq.args[1].same_as(d))
    if not squares_d:
        return None
    # d feeds exactly the square and this divide
    if ctx.use_count(d) != 2:
        return None
    centered = ctx.producer_call(d, "relax.subtract")
    if centered is None:
        return None
    x, m1 = centered.args
    m1_call = ctx.absorbable(m1)
    shape = static_shape(x)
    if m1_call is None or shape is None or not m1_call.args[0].same_as(x):
        return None
    axes = _mean_axes(m1_call, len(shape))
    if axes is None or axes != _mean_axes(m2_call, len(shape)):
        return None
    norm_shape = [shape[a] for a in axes]
    gamma = make_const(np.ones(norm_shape), "float32")
    beta = make_const(np.zeros(norm_shape), "float32")
    return relax.op.nn.layer_norm(x, gamma, beta, axes=axes, epsilon=float(eps))


RECOGNIZE_LAYER_NORM = Rule(
    name="recognize_layer_norm",
    property="pattern",
    formula=(
        "d = x - mean(x, A); d / sqrt(mean(d*d or d**2, A) + eps) -> layer_norm(x, 1, 0, A, "
        "eps)  (reduce-then-broadcast: two reductions and four broadcasting ops become one "
        "normalization; gamma and beta multiplies/adds that follow are then absorbed by "
        "fold_scale_into_linear and combine_constant_chain)"
    ),
    precondition=(
        "float32; both means over the same axes with keepdims=True; eps a one-element "
        "constant >= 0; d is read only by the square and the divide, every other "
        "intermediate only once (x may have other readers). TVM 0.27's layer_norm computes "
        "the same two-pass formula (mean, then mean of (x - mean)^2, then rsqrt(var + eps)), "
        "so only rounding differs"
    ),
    apply=_recognize_layer_norm,
)


# ---------------------------------------------------------------------------------------------
# recognize_gelu

_SQRT2 = math.sqrt(2.0)


def _close(value: float | None, target: float) -> bool:
    return value is not None and abs(value - target) <= 1e-6 * abs(target)


def _product_factors(ctx: RewriteContext, call: relax.Call) -> list | None:
    """The factors of a multiply tree whose inner nodes are read only by it."""
    factors = []
    for arg in call.args:
        inner = ctx.absorbable(arg, "relax.multiply")
        if inner is not None:
            sub = _product_factors(ctx, inner)
            if sub is None:
                return None
            factors.extend(sub)
        else:
            factors.append(arg)
    return factors


def _erf_argument_is(ctx: RewriteContext, erf_plus_one: Any, x: relax.Expr) -> bool:
    """erf_plus_one = erf(x / sqrt 2) + 1 (or x * (1/sqrt 2)), intermediates read once."""
    add = ctx.absorbable(erf_plus_one, "relax.add")
    if add is None:
        return False
    erf = next(
        (
            ctx.absorbable(a, "relax.erf")
            for a, b in (add.args, add.args[::-1])
            if _close(scalar_of(b), 1.0)
        ),
        None,
    )
    if erf is None:
        return False
    scaled = ctx.absorbable(erf.args[0], "relax.divide", "relax.multiply")
    if scaled is None:
        return False
    if call_op_name(scaled) == "relax.divide":
        return scaled.args[0].same_as(x) and _close(scalar_of(scaled.args[1]), _SQRT2)
    return any(
        a.same_as(x) and _close(scalar_of(b), 1.0 / _SQRT2)
        for a, b in (scaled.args, scaled.args[::-1])
    )


def _recognize_gelu(ctx: RewriteContext, value: relax.Expr) -> relax.Expr | None:
    if call_op_name(value) != "relax.multiply" or dtype_of(value) != "float32":
        return None
    factors = _product_factors(ctx, value)
    if factors is None:
        return None
    constants = [scalar_of(f) for f in factors if const_value(f) is not None]
    others = [f for f in factors if const_value(f) is None]
    if len(others) != 2 or not _close(float(np.prod(constants)) if constants else None, 0.5):
        return None
    for x, rest in ((others[0], others[1]), (others[1], others[0])):
        if static_shape(x) == static_shape(value) and _erf_argument_is(ctx, rest, x):
            return relax.op.nn.gelu(x)
    return None


RECOGNIZE_GELU = Rule(
    name="recognize_gelu",
    property="pattern",
    formula="x * (erf(x / sqrt(2)) + 1) * 0.5 (any association and operand order) -> gelu(x)",
    precondition=(
        "float32; the constants are 0.5 (as one factor or a product of factors), 1 and sqrt(2) "
        "(or 1/sqrt(2) as a multiplier) within 1e-6 relative; every intermediate is read once; "
        "x has the result's shape. Relax's gelu is this erf form exactly"
    ),
    apply=_recognize_gelu,
)
