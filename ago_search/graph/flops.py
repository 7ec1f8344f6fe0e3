"""FLOPs of one operator from its shapes and attributes.

Conventions (one FLOP is one arithmetic operation; a multiply-add counts as 2):

- conv (1d/2d/3d, any groups, strides, dilation, padding): 2 * N * Cout * out_spatial *
  (Cin / groups) * kernel_spatial, i.e. 2 * out_elements * (weight elements per output
  channel). Padding zeros are not counted; a bias add is its own node.
- conv transpose: 2 * N * Cin * in_spatial * (Cout / groups) * kernel_spatial (every input
  element is scattered over the kernel window).
- matmul (batched, broadcasting, 1-d operands): 2 * out_elements * K; dense/Gemm import as
  permute_dims + matmul (+ add), so they are a matmul here.
- einsum: 2 * product of the sizes of all distinct subscripts when something is summed,
  else one per output element. attention: two matmuls plus a softmax.
- pooling (max, avg; 1d/2d/3d): out_elements * window size (one compare or add per window
  element; the average's final divide is not counted). Adaptive average pooling and all
  reductions (sum, mean, max, min, prod, argmax, argmin, cumsum): one per input element;
  variance/std: 3 per input element.
- per output element: elementwise arithmetic, comparisons, casts and transcendental functions
  1 (exp, erf, tanh, sqrt each count as 1); clip, leakyrelu, prelu 2; sigmoid, hard_sigmoid 4;
  silu, hard_swish 5; gelu 5 (x * 0.5 * (1 + erf(x / sqrt 2))); gelu_tanh 9; softplus 3;
  quantize/dequantize 2; softmax, log_softmax 5 (max, subtract, exp, sum, divide); inference
  batch norm 4 ((x - mean) / sqrt(var + eps) * gamma + beta); layer/group/instance norm 8
  (mean 1, variance 3, normalize 2, affine 2); rms_norm 4; l2_normalize 3.
- resize: 2 * taps per output element: nearest 0, linear 2 * 2^d, cubic 2 * 4^d (d spatial
  dims).
- data movement (reorganize, shuffle, broadcast/tile/gather, pad, concat, ...): 0.

`op_flops` returns None for an operator it has no formula for; the OpGraph then counts the
legalized kernel with TVM's `estimate_tir_flops` (which also counts a multiply-add as 2).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ago_search.graph.mapping import MappingType, known_mapping

Shape = tuple[int, ...]

PER_OUTPUT_ELEMENT: Mapping[str, int] = {
    "relax.clip": 2,
    "relax.nn.leakyrelu": 2,
    "relax.nn.prelu": 2,
    "relax.sigmoid": 4,
    "relax.nn.silu": 5,
    "relax.nn.gelu": 5,
    "relax.nn.gelu_tanh": 9,
    "relax.nn.softplus": 3,
    "relax.nn.selu": 4,
    "relax.quantize": 2,
    "relax.dequantize": 2,
    "relax.nn.softmax": 5,
    "relax.nn.log_softmax": 5,
    "relax.nn.batch_norm": 4,
    "relax.nn.layer_norm": 8,
    "relax.nn.group_norm": 8,
    "relax.nn.instance_norm": 8,
    "relax.nn.rms_norm": 4,
    "relax.nn.l2_normalize": 3,
    "relax.nn.dropout": 0,
    "relax.zeros_like": 0,
    "relax.ones_like": 0,
    "relax.full_like": 0,
    "tir.maximum": 1,
    "tir.minimum": 1,
    "tir.clip": 2,
    "tir.hard_sigmoid": 4,
    "tir.hard_swish": 5,
}

PER_INPUT_ELEMENT: Mapping[str, int] = {
    **{
        f"relax.{r}": 1
        for r in ("sum", "mean", "max", "min", "prod", "argmax", "argmin", "cumsum", "cumprod")
    },
    "relax.variance": 3,
    "relax.std": 3,
    **{f"relax.nn.adaptive_avg_pool{d}d": 1 for d in (1, 2, 3)},
}

_RESIZE_TAPS_PER_DIM: Mapping[str, int] = {"nearest_neighbor": 0, "linear": 2, "cubic": 4}

_ZERO_FLOP_TYPES = (MappingType.REORGANIZE, MappingType.SHUFFLE, MappingType.ONE_TO_MANY)


def num_elements(shape: Sequence[int]) -> int:
    """Elements of a tensor of `shape` (1 for a scalar)."""
    return math.prod(shape)


def _without_axes(shape: Shape, layout: str, letters: str) -> int:
    """Product of the dims of `shape` whose layout letter is not in `letters`."""
    if len(layout) != len(shape):
        # a layout string we cannot read (e.g. digits of a blocked layout): drop the outer dim
        return num_elements(shape[1:])
    return math.prod(d for d, c in zip(shape, layout, strict=True) if c not in letters)


def _conv(attrs: Mapping[str, Any], ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    weight = ins[1]
    layout = "".join(c for c in str(attrs.get("kernel_layout", "OIHW")) if c.isalpha())
    return 2 * num_elements(outs[0]) * _without_axes(weight, layout, "Oo")


def _conv_transpose(attrs: Mapping[str, Any], ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    data, weight = ins[0], ins[1]
    layout = "".join(c for c in str(attrs.get("kernel_layout", "IOHW")) if c.isalpha())
    return 2 * num_elements(data) * _without_axes(weight, layout, "Ii")


def _matmul(attrs: Mapping[str, Any], ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    a = ins[0]
    k = a[-1] if a else 1
    return 2 * num_elements(outs[0]) * k


def _einsum(attrs: Mapping[str, Any], ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    subscripts = str(attrs.get("subscripts", "")).replace(" ", "")
    lhs, _, rhs = subscripts.partition("->")
    terms = lhs.split(",")
    if "..." in subscripts or len(terms) != len(ins):
        return 2 * num_elements(outs[0]) * max((s[-1] for s in ins if s), default=1)
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, ins, strict=True):
        sizes.update(zip(term, shape, strict=False))
    summed = set(sizes) - set(rhs)
    if not summed:
        return num_elements(outs[0]) * max(1, len(ins) - 1)
    return 2 * math.prod(sizes.values()) * max(1, len(ins) - 1)


def _attention(attrs: Mapping[str, Any], ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    # query (B, S, N, H), key (B, T, N, H), value (B, T, N, Hv)
    (b, s, n, h), (_, t, _, _), (_, _, _, hv) = ins[0], ins[1], ins[2]
    scores = b * n * s * t
    return 2 * scores * h + 2 * scores * hv + PER_OUTPUT_ELEMENT["relax.nn.softmax"] * scores


def _pool(attrs: Mapping[str, Any], ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    window = num_elements(tuple(attrs.get("pool_size", ())))
    return num_elements(outs[0]) * window


def _resize(attrs: Mapping[str, Any], ins: Sequence[Shape], outs: Sequence[Shape]) -> int:
    spatial = max(len(outs[0]) - 2, 1)
    taps_per_dim = _RESIZE_TAPS_PER_DIM.get(str(attrs.get("method", "linear")), 2)
    taps = taps_per_dim**spatial if taps_per_dim else 0
    return 2 * taps * num_elements(outs[0])


_FORMULAS: Mapping[str, Callable[[Mapping[str, Any], Sequence[Shape], Sequence[Shape]], int]] = {
    **{f"relax.nn.conv{d}d": _conv for d in (1, 2, 3)},
    **{f"relax.nn.conv{d}d_transpose": _conv_transpose for d in (1, 2, 3)},
    **{f"relax.nn.{k}_pool{d}d": _pool for k in ("max", "avg") for d in (1, 2, 3)},
    **{f"relax.image.resize{d}d": _resize for d in (1, 2, 3)},
    "relax.matmul": _matmul,
    "relax.einsum": _einsum,
    "relax.nn.attention": _attention,
}


def op_flops(
    op: str, attrs: Mapping[str, Any], in_shapes: Sequence[Shape], out_shapes: Sequence[Shape]
) -> int | None:
    """FLOPs of one operator (conventions in the module docstring), or None if unknown.

    `in_shapes` are the operator's own tensor operands in order (conv: data, weight; matmul:
    a, b); `out_shapes` its outputs (a batch norm or a split has several).
    """
    out_elements = num_elements(out_shapes[0]) if out_shapes else 0
    if op in _FORMULAS:
        return int(_FORMULAS[op](attrs, in_shapes, out_shapes))
    if op in PER_INPUT_ELEMENT:
        return PER_INPUT_ELEMENT[op] * (num_elements(in_shapes[0]) if in_shapes else 0)
    if op in PER_OUTPUT_ELEMENT:
        return PER_OUTPUT_ELEMENT[op] * out_elements
    mapping = known_mapping(op)
    if mapping in _ZERO_FLOP_TYPES:
        return 0
    if mapping is MappingType.ONE_TO_ONE:
        return out_elements
    return None
