"""Rules that need no algebra across operators: constant folding, identities, strength
reduction, and composing layout operators."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tvm
from tvm import relax

from ago_search.rewrite.core import (
    RewriteContext,
    Rule,
    call_op_name,
    const_value,
    dtype_of,
    make_const,
    static_shape,
)

logger = logging.getLogger(__name__)

# A folded constant above this many elements is left unfolded: folding must not blow up the
# model's size (a broadcast_to of a scalar to a feature map, say).
MAX_FOLDED_ELEMENTS = 1 << 24

RESHAPE_LIKE = frozenset({"relax.reshape", "relax.squeeze", "relax.expand_dims", "relax.flatten"})


# ---------------------------------------------------------------------------------------------
# helpers shared by the rule modules


def ints(value: Any) -> list[int] | None:
    """An attribute holding int(s) (Array, IntImm, int) as a list; None stays None."""
    if value is None:
        return None
    if isinstance(value, int | tvm.tirx.IntImm):
        return [int(value)]
    return [int(v) for v in value]


def is_float(expr: Any) -> bool:
    dtype = dtype_of(expr)
    return dtype is not None and dtype.startswith(("float", "bfloat"))


def same_type(a: Any, b: Any) -> bool:
    """Same static shape and dtype: replacing one by the other keeps the binding's type."""
    shape = static_shape(a)
    return shape is not None and shape == static_shape(b) and dtype_of(a) == dtype_of(b)


def scalar_of(expr: Any) -> float | None:
    """The value of a constant holding one element (any rank), else None."""
    value = const_value(expr)
    if value is None or value.size != 1:
        return None
    return float(value.reshape(()))


def all_equal_to(expr: Any, number: float) -> bool:
    value = const_value(expr)
    return value is not None and value.size > 0 and bool(np.all(value == number))


def normalize_axes(axes: Sequence[int], rank: int) -> list[int]:
    return [a + rank if a < 0 else a for a in axes]


def call_like(call: relax.Call, args: Sequence[relax.Expr]) -> relax.Call:
    """`call` with new arguments (same operator and attributes)."""
    return relax.Call(call.op, list(args), call.attrs, call.ty_args)


# ---------------------------------------------------------------------------------------------
# fold_constants


def _shape_values(expr: Any) -> list[int] | None:
    if isinstance(expr, relax.ShapeExpr):
        values = expr.values
    elif isinstance(getattr(expr, "ty", None), relax.ShapeType) and expr.ty.values is not None:
        values = expr.ty.values
    else:
        return None
    if not all(isinstance(v, tvm.tirx.IntImm) for v in values):
        return None
    return [int(v.value) for v in values]


def _prim_number(expr: Any) -> float | None:
    value = getattr(expr, "value", None)
    if isinstance(value, tvm.tirx.IntImm | tvm.tirx.FloatImm):
        return value.value
    return None


def _reduce(fn: Callable) -> Callable:
    def run(call: relax.Call, x: np.ndarray) -> np.ndarray:
        axis = ints(call.attrs.axis)
        return fn(x, axis=None if axis is None else tuple(axis), keepdims=call.attrs.keepdims)

    return run


def _take(call: relax.Call, x: np.ndarray, idx: np.ndarray) -> np.ndarray | None:
    mode = {"fast": "raise", "clip": "clip", "wrap": "wrap"}.get(str(call.attrs.mode), "raise")
    try:
        return np.take(x, idx, axis=int(call.attrs.axis), mode=mode)
    except IndexError:
        return None  # out of bounds in "fast" mode: undefined in TVM, leave it alone


def _squeeze(call: relax.Call, x: np.ndarray) -> np.ndarray:
    axis = ints(call.attrs.axis)
    return np.squeeze(x) if axis is None else np.squeeze(x, axis=tuple(axis))


def _expand_dims(call: relax.Call, x: np.ndarray) -> np.ndarray:
    return np.expand_dims(x, tuple(ints(call.attrs.axis)))


def _permute(call: relax.Call, x: np.ndarray) -> np.ndarray:
    axes = ints(call.attrs.axes)
    return np.transpose(x, axes)


def _floats_only(fn: Callable) -> Callable:
    def run(call: relax.Call, *args: np.ndarray) -> np.ndarray | None:
        if not all(np.issubdtype(a.dtype, np.floating) for a in args):
            return None
        with np.errstate(all="ignore"):
            return fn(*args)

    return run


def _elementwise(fn: Callable) -> Callable:
    def run(call: relax.Call, *args: np.ndarray) -> np.ndarray:
        with np.errstate(all="ignore"):
            return fn(*args)

    return run


# op -> evaluator(call, *numpy args); array-valued args only, non-tensor args handled below.
_EVALUATORS: dict[str, Callable[..., np.ndarray | None]] = {
    "relax.add": _elementwise(np.add),
    "relax.subtract": _elementwise(np.subtract),
    "relax.multiply": _elementwise(np.multiply),
    "relax.divide": _floats_only(np.divide),
    "relax.power": _floats_only(np.power),
    "relax.sqrt": _floats_only(np.sqrt),
    "relax.rsqrt": _floats_only(lambda x: 1.0 / np.sqrt(x)),
    "relax.exp": _floats_only(np.exp),
    "relax.log": _floats_only(np.log),
    "relax.negative": _elementwise(np.negative),
    "relax.abs": _elementwise(np.abs),
    "relax.maximum": _elementwise(np.maximum),
    "relax.minimum": _elementwise(np.minimum),
    "relax.isnan": _elementwise(np.isnan),
    "relax.isinf": _elementwise(np.isinf),
    "relax.less": _elementwise(np.less),
    "relax.greater": _elementwise(np.greater),
    "relax.equal": _elementwise(np.equal),
    "relax.where": _elementwise(np.where),
    "relax.nn.relu": _elementwise(lambda x: np.maximum(x, 0)),
    "relax.sigmoid": _floats_only(lambda x: 1.0 / (1.0 + np.exp(-x))),
    "relax.tanh": _floats_only(np.tanh),
    "relax.permute_dims": _permute,
    "relax.squeeze": _squeeze,
    "relax.expand_dims": _expand_dims,
    "relax.flatten": lambda call, x: x.reshape(-1),
    "relax.astype": lambda call, x: x,  # the cast to the binding's dtype happens below
    "relax.mean": _reduce(np.mean),
    "relax.sum": _reduce(np.sum),
    "relax.max": _reduce(np.max),
    "relax.min": _reduce(np.min),
    "relax.take": _take,
}


def _fold_constants(ctx: RewriteContext, value: relax.Expr) -> relax.Expr | None:
    if not isinstance(value, relax.Call):
        return None
    name = call_op_name(value)
    if name == "relax.shape_of":
        dims = static_shape(value.args[0])
        return relax.ShapeExpr(dims) if dims is not None else None
    if name == "relax.shape_to_tensor":
        dims = _shape_values(value.args[0])
        return make_const(np.array(dims, dtype="int64"), "int64") if dims is not None else None
    out_shape, out_dtype = static_shape(value), dtype_of(value)
    if out_shape is None or out_dtype is None or int(np.prod(out_shape)) > MAX_FOLDED_ELEMENTS:
        return None
    if name in ("relax.reshape", "relax.broadcast_to"):
        x = const_value(value.args[0])
        if x is None:
            return None
        result = np.broadcast_to(x, out_shape) if name == "relax.broadcast_to" else x
        return make_const(np.reshape(result, out_shape), out_dtype)
    if name == "relax.concat":
        fields = value.args[0].fields if isinstance(value.args[0], relax.Tuple) else None
        arrays = [const_value(f) for f in fields] if fields is not None else [None]
        if any(a is None for a in arrays):
            return None
        return make_const(np.concatenate(arrays, axis=int(value.attrs.axis)), out_dtype)
    if name == "relax.clip":
        x, lo, hi = (
            const_value(value.args[0]),
            _prim_number(value.args[1]),
            _prim_number(value.args[2]),
        )
        if x is None or lo is None or hi is None:
            return None
        return make_const(np.minimum(np.maximum(x, lo), hi), out_dtype)
    evaluator = _EVALUATORS.get(name)
    if evaluator is None:
        return None
    arrays = [const_value(a) for a in value.args]
    if not arrays or any(a is None for a in arrays):
        return None
    result = evaluator(value, *arrays)
    if result is None:
        return None
    result = np.asarray(result)
    if tuple(result.shape) != out_shape:
        logger.debug("fold_constants: %s gave shape %s, expected %s", name, result.shape, out_shape)
        return None
    return make_const(result, out_dtype)


FOLD_CONSTANTS = Rule(
    name="fold_constants",
    property="constant folding",
    formula="op(c1, ..., cn) -> c  (evaluated with numpy at rewrite time)",
    precondition=(
        "every tensor operand is a compile-time constant, the operator is one numpy can "
        f"evaluate exactly ({len(_EVALUATORS) + 6} ops: elementwise arithmetic, comparisons, "
        "where, isnan, layout ops, reductions, take, shape_of / shape_to_tensor of static "
        f"shapes), the result has at most {MAX_FOLDED_ELEMENTS} elements, and division, power, "
        "sqrt, exp, log only on floats. Replaces TVM's FoldConstant on the high-level module, "
        "which compiles every folded operator with LLVM (5.3 s on MobileNetV2 for Clip's NaN "
        "guards and the conv bias reshapes)"
    ),
    apply=_fold_constants,
)


# ---------------------------------------------------------------------------------------------
# eliminate_identity


def _inf_bound(expr: Any, sign: float) -> bool:
    value = const_value(expr)
    if value is None:
        number = _prim_number(expr)
        return number is not None and number == sign * np.inf
    return value.size > 0 and bool(np.all(value == sign * np.inf))


def _eliminate_identity(ctx: RewriteContext, value: relax.Expr) -> relax.Expr | None:
    if isinstance(value, relax.TupleGetItem):
        dropout = ctx.producer_call(value.tuple_value, "relax.nn.dropout")
        if dropout is not None and int(value.index) == 0:
            return dropout.args[0]
        return None
    name = call_op_name(value)
    if name is None:
        return None
    args = value.args

    def keep(x: Any) -> relax.Expr | None:
        return x if same_type(x, value) else None

    if name == "relax.add":
        if all_equal_to(args[1], 0.0):
            return keep(args[0])
        if all_equal_to(args[0], 0.0):
            return keep(args[1])
    elif name == "relax.subtract" and all_equal_to(args[1], 0.0):
        return keep(args[0])
    elif name == "relax.multiply":
        if all_equal_to(args[1], 1.0):
            return keep(args[0])
        if all_equal_to(args[0], 1.0):
            return keep(args[1])
    elif name in ("relax.divide", "relax.power") and all_equal_to(args[1], 1.0):
        return keep(args[0])
    elif name == "relax.maximum":
        if _inf_bound(args[1], -1.0):
            return keep(args[0])
        if _inf_bound(args[0], -1.0):
            return keep(args[1])
    elif name == "relax.minimum":
        if _inf_bound(args[1], 1.0):
            return keep(args[0])
        if _inf_bound(args[0], 1.0):
            return keep(args[1])
    elif name == "relax.clip":
        if _inf_bound(args[1], -1.0) and _inf_bound(args[2], 1.0):
            return keep(args[0])
    elif name == "relax.permute_dims":
        shape = static_shape(args[0])
        axes = ints(value.attrs.axes)
        rank = len(shape) if shape is not None else -1
        if axes is not None and normalize_axes(axes, rank) == list(range(rank)):
            return keep(args[0])
    elif name in RESHAPE_LIKE or name in ("relax.broadcast_to", "relax.astype"):
        return keep(args[0])
    elif name == "relax.concat":
        if isinstance(args[0], relax.Tuple) and len(args[0].fields) == 1:
            return keep(args[0].fields[0])
    elif name == "relax.strided_slice":
        strides = args[4] if len(args) > 4 else None
        if strides is None or all(int(s) == 1 for s in strides.fields):
            return keep(args[0])
    elif name in ("relax.nn.relu", "relax.abs") and ctx.producer_call(args[0], name) is not None:
        return keep(args[0])  # idempotence: relu(relu(x)) = relu(x)
    return None


ELIMINATE_IDENTITY = Rule(
    name="eliminate_identity",
    property="identity",
    formula=(
        "x+0, 0+x, x-0, x*1, 1*x, x/1, x**1, max(x,-inf), min(x,+inf), clip(x,-inf,inf), "
        "identity permute_dims, reshape/squeeze/expand_dims/flatten/broadcast_to/astype to the "
        "same type, concat of one tensor, strided_slice with unit strides covering x, "
        "dropout(x)[0] -> x;  relu(relu(x)) -> relu(x) (idempotence)"
    ),
    precondition=(
        "the neutral operand is a constant whose every element is the neutral value, and the "
        "result has exactly x's shape and dtype (a neutral constant that broadcasts x to a "
        "larger shape is not an identity). x+0.0 -> x differs only for x = -0.0"
    ),
    apply=_eliminate_identity,
)


# ---------------------------------------------------------------------------------------------
# strength_reduction


def _strength_reduction(ctx: RewriteContext, value: relax.Expr) -> relax.Expr | None:
    name = call_op_name(value)
    if name == "relax.divide" and is_float(value):
        divisor = const_value(value.args[1])
        if divisor is None or not np.issubdtype(divisor.dtype, np.floating):
            return None
        with np.errstate(all="ignore"):
            reciprocal = 1.0 / divisor.astype(np.float64)
        ok = np.all(np.isfinite(divisor)) and np.all(divisor != 0)
        ok = ok and np.all(np.isfinite(reciprocal.astype(divisor.dtype)))
        if not ok:
            return None
        return relax.op.multiply(value.args[0], make_const(reciprocal, str(divisor.dtype)))
    if name == "relax.power" and is_float(value):
        exponent = scalar_of(value.args[1])
        x = value.args[0]
        if exponent == 2.0 and same_type(x, value):
            return relax.op.multiply(x, x)
        if exponent == 0.5 and same_type(x, value):
            return relax.op.sqrt(x)
    return None


STRENGTH_REDUCTION = Rule(
    name="strength_reduction",
    property="strength reduction",
    formula="x / c -> x * (1/c);  x ** 2 -> x * x;  x ** 0.5 -> sqrt(x)",
    precondition=(
        "float dtype; for the division, c is a constant with every element finite and nonzero "
        "and 1/c finite in c's dtype (1/c is rounded once: the result may differ from x/c in "
        "the last bit unless c is a power of two); for powers, the exponent is a one-element "
        "constant and x already has the result's shape"
    ),
    apply=_strength_reduction,
)


# ---------------------------------------------------------------------------------------------
# combine_layout_ops


def _slice_then_squeeze(ctx: RewriteContext, value: relax.Call) -> relax.Expr | None:
    """squeeze(strided_slice(x, [a], [b], [b+1]), [a]) -> take(x, b, axis=a)."""
    sliced = ctx.absorbable(value.args[0], "relax.strided_slice")
    if sliced is None:
        return None
    x = sliced.args[0]
    shape = static_shape(x)
    if shape is None:
        return None
    axes, begin, end = (ints(a.fields) for a in sliced.args[1:4])
    strides = ints(sliced.args[4].fields) if len(sliced.args) > 4 else [1]
    squeezed = ints(value.attrs.axis)
    if len(axes) != 1 or strides != [1] or squeezed is None:
        return None
    axis = normalize_axes(axes, len(shape))[0]
    if normalize_axes(squeezed, len(shape)) != [axis]:
        return None
    start = begin[0] + shape[axis] if begin[0] < 0 else begin[0]
    stop = end[0] + shape[axis] if end[0] < 0 else end[0]
    if not (0 <= start < shape[axis] and stop == start + 1):
        return None
    return relax.op.take(x, make_const(np.array(start), "int64"), axis=axis)


def _combine_layout_ops(ctx: RewriteContext, value: relax.Expr) -> relax.Expr | None:
    name = call_op_name(value)
    if name == "relax.permute_dims":
        inner = ctx.producer_call(value.args[0], "relax.permute_dims")
        if inner is None:
            return None
        x = inner.args[0]
        shape = static_shape(x)
        if shape is None:
            return None
        rank = len(shape)
        p1 = ints(inner.attrs.axes)
        p2 = ints(value.attrs.axes)
        p1 = list(range(rank))[::-1] if p1 is None else normalize_axes(p1, rank)
        p2 = list(range(rank))[::-1] if p2 is None else normalize_axes(p2, rank)
        composed = [p1[j] for j in p2]
        if composed == list(range(rank)):
            return x if same_type(x, value) else None
        if not ctx.single_use(value.args[0]):
            return None
        return relax.op.permute_dims(x, composed)
    if name == "relax.squeeze":
        taken = _slice_then_squeeze(ctx, value)
        if taken is not None:
            return taken
    if name in RESHAPE_LIKE:
        inner = ctx.producer_call(value.args[0], *RESHAPE_LIKE)
        out_shape = static_shape(value)
        if inner is None or out_shape is None:
            return None
        x = inner.args[0]
        if same_type(x, value):
            return x
        if not ctx.single_use(value.args[0]) or dtype_of(x) != dtype_of(value):
            return None
        return relax.op.reshape(x, out_shape)
    return None


COMBINE_LAYOUT_OPS = Rule(
    name="combine_layout_ops",
    property="composition",
    formula=(
        "permute_dims(permute_dims(x, p1), p2) -> permute_dims(x, p1[p2]) (or x when that is "
        "the identity);  R(R'(x)) -> reshape(x, final shape) (or x) for R, R' among reshape, "
        "squeeze, expand_dims, flatten;  squeeze(strided_slice(x, [a], [b], [b+1]), [a]) -> "
        "take(x, b, axis=a)"
    ),
    precondition=(
        "static shapes; the inner operator's result is read only here (else both copies would "
        "be computed), except when the composition is the identity, which always removes an op; "
        "the slice is one element wide (unit stride, in bounds) on exactly the squeezed axis"
    ),
    apply=_combine_layout_ops,
)
