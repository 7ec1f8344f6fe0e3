"""DNNFusion mapping types of operators, and which operators are complex.

The mapping type (DNNFusion, arXiv 2108.13342, Table 2) says how output elements depend on
input elements; DNNFusion's fusion legality and profitability table is written in these types:

- one-to-one: each output element reads one element of each input (elementwise: add, relu,
  sigmoid, clip, cast, inference batch norm, gelu, erf, ...).
- one-to-many: one input element feeds several output elements (broadcast_to, tile, resize
  upsampling, one_hot, ...).
- many-to-many: an output element reads many input elements through arithmetic (conv, matmul,
  pooling, reductions, softmax, layer/group/rms norm, attention, ...).
- reorganize: data moves without reordering the dimensions it keeps (reshape, squeeze,
  expand_dims, flatten, concat, split, strided_slice, take/gather, pad, ...). Concat, split and
  slice are counted here (contiguous copies), not as one-to-one.
- shuffle: dimensions are permuted (permute_dims/transpose, flip, layout_transform,
  depth/space rearrangements done as a permutation).

Operators are named as in the OpGraph: a Relax operator by its registered name
("relax.nn.conv2d"); a `call_tir` of a TOPI kernel that the ONNX importer emits directly (Clip's
maximum/minimum, Pad, Tile, Einsum, ...) or that legalization creates, as "tir.<kernel name>"
("tir.pad"). An operator not in the table gets the type that TVM's own `op_pattern` of its
legalized kernel implies (see `mapping_from_op_pattern`), or many-to-many when it has none.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum, StrEnum


class MappingType(StrEnum):
    """DNNFusion's classification of an operator by how outputs depend on inputs."""

    ONE_TO_ONE = "one-to-one"
    ONE_TO_MANY = "one-to-many"
    MANY_TO_MANY = "many-to-many"
    REORGANIZE = "reorganize"
    SHUFFLE = "shuffle"


class OpPattern(IntEnum):
    """TVM's OpPatternKind, as `AnnotateTIROpPattern` writes it on each legalized PrimFunc."""

    ELEMWISE = 0
    BROADCAST = 1
    INJECTIVE = 2
    COMM_REDUCE = 3
    OUT_ELEMWISE_FUSABLE = 4
    TUPLE = 7
    OPAQUE = 8


_UNARY_ELEMENTWISE = (
    "abs acos acosh asin asinh atan atanh bitwise_not ceil cos cosh erf exp floor isfinite isinf "
    "isnan log logical_not negative round rsqrt sigmoid sign sin sinh sqrt square tan tanh trunc "
    "astype clip zeros_like ones_like full_like triu tril quantize dequantize"
)
_BINARY_ELEMENTWISE = (
    "add subtract multiply divide floor_divide power maximum minimum mod floor_mod equal "
    "not_equal less less_equal greater greater_equal logical_and logical_or logical_xor "
    "bitwise_and bitwise_or bitwise_xor left_shift right_shift where"
)
_NN_ELEMENTWISE = "relu leakyrelu prelu gelu gelu_tanh silu selu softplus dropout batch_norm"

_RELAX_BY_TYPE: dict[MappingType, list[str]] = {
    MappingType.ONE_TO_ONE: (
        [f"relax.{n}" for n in (_UNARY_ELEMENTWISE + " " + _BINARY_ELEMENTWISE).split()]
        + [f"relax.nn.{n}" for n in _NN_ELEMENTWISE.split()]
    ),
    MappingType.ONE_TO_MANY: [
        "relax.broadcast_to",
        "relax.tile",
        "relax.repeat",
        "relax.one_hot",
        "relax.full",
        "relax.zeros",
        "relax.ones",
        "relax.arange",
        "relax.eye_like",
        "relax.image.resize1d",
        "relax.image.resize2d",
        "relax.image.resize3d",
    ],
    MappingType.MANY_TO_MANY: [
        *(f"relax.nn.conv{d}d" for d in (1, 2, 3)),
        *(f"relax.nn.conv{d}d_transpose" for d in (1, 2, 3)),
        *(f"relax.nn.{k}_pool{d}d" for k in ("max", "avg") for d in (1, 2, 3)),
        *(f"relax.nn.adaptive_avg_pool{d}d" for d in (1, 2, 3)),
        "relax.matmul",
        "relax.einsum",
        "relax.nn.attention",
        "relax.nn.softmax",
        "relax.nn.log_softmax",
        "relax.nn.layer_norm",
        "relax.nn.group_norm",
        "relax.nn.instance_norm",
        "relax.nn.rms_norm",
        "relax.nn.l2_normalize",
        "relax.sum",
        "relax.mean",
        "relax.max",
        "relax.min",
        "relax.prod",
        "relax.variance",
        "relax.std",
        "relax.argmax",
        "relax.argmin",
        "relax.cumsum",
        "relax.cumprod",
        "relax.topk",
        "relax.sort",
        "relax.argsort",
        "relax.nonzero",
        "relax.unique",
        "relax.scatter_elements",
        "relax.scatter_nd",
        "relax.image.grid_sample",
        "relax.image.affine_grid",
        "relax.vision.roi_align",
        "relax.vision.roi_pool",
        "relax.vision.all_class_non_max_suppression",
    ],
    MappingType.REORGANIZE: [
        "relax.reshape",
        "relax.flatten",
        "relax.squeeze",
        "relax.expand_dims",
        "relax.concat",
        "relax.split",
        "relax.stack",
        "relax.strided_slice",
        "relax.dynamic_strided_slice",
        "relax.take",
        "relax.gather_elements",
        "relax.gather_nd",
        "relax.nn.pad",
        "relax.collapse_sum_like",
        "relax.collapse_sum_to",
    ],
    MappingType.SHUFFLE: [
        "relax.permute_dims",
        "relax.flip",
        "relax.layout_transform",
        "relax.nn.pixel_shuffle",
    ],
}

# Kernels the ONNX importer emits as call_tir (bb.emit_te of a TOPI function), or names
# legalization gives; keyed by the PrimFunc name without TVM's de-duplicating digits.
_TIR_BY_TYPE: dict[MappingType, list[str]] = {
    MappingType.ONE_TO_ONE: [
        "tir.maximum",
        "tir.minimum",
        "tir.clip",
        "tir.add",
        "tir.subtract",
        "tir.multiply",
        "tir.divide",
        "tir.relu",
        "tir.sigmoid",
        "tir.tanh",
        "tir.exp",
        "tir.sqrt",
        "tir.erf",
        "tir.cast",
        "tir.where",
        "tir.hard_sigmoid",
        "tir.hard_swish",
    ],
    MappingType.ONE_TO_MANY: [
        "tir.tile",
        "tir.dyn_tile",
        "tir.broadcast_to",
        "tir.resize1d",
        "tir.resize2d",
        "tir.resize3d",
    ],
    MappingType.MANY_TO_MANY: [
        "tir.einsum",
        "tir.conv2d",
        "tir.matmul",
        "tir.softmax",
        "tir.sum",
        "tir.mean",
    ],
    MappingType.REORGANIZE: [
        "tir.pad",
        "tir.mirror_pad",
        "tir.replicate_pad",
        "tir.circular_pad",
        "tir.reshape",
        "tir.concatenate",
        "tir.split",
        "tir.strided_slice",
        "tir.take",
        "tir.squeeze",
        "tir.expand_dims",
    ],
    MappingType.SHUFFLE: ["tir.transpose", "tir.flip", "tir.depth_to_space", "tir.space_to_depth"],
}

OP_MAPPING: Mapping[str, MappingType] = {
    op: kind
    for table in (_RELAX_BY_TYPE, _TIR_BY_TYPE)
    for kind, ops in table.items()
    for op in ops
}

# Complex operators hold a reduction over a weight or a second operand: the ones AGO's
# intensive fusion is about. matmul counts even between two activations (attention scores).
COMPLEX_OPS: frozenset[str] = frozenset(
    [f"relax.nn.conv{d}d" for d in (1, 2, 3)]
    + [f"relax.nn.conv{d}d_transpose" for d in (1, 2, 3)]
    + ["relax.matmul", "relax.einsum", "relax.nn.attention", "relax.linear", "relax.nn.dense"]
    + ["tir.einsum", "tir.conv2d", "tir.matmul", "tir.dense", "tir.batch_matmul"]
)

_PATTERN_MAPPING: Mapping[int, MappingType] = {
    OpPattern.ELEMWISE: MappingType.ONE_TO_ONE,
    OpPattern.BROADCAST: MappingType.ONE_TO_MANY,
    OpPattern.INJECTIVE: MappingType.REORGANIZE,
    OpPattern.COMM_REDUCE: MappingType.MANY_TO_MANY,
    OpPattern.OUT_ELEMWISE_FUSABLE: MappingType.MANY_TO_MANY,
    OpPattern.TUPLE: MappingType.REORGANIZE,
    OpPattern.OPAQUE: MappingType.MANY_TO_MANY,
}


def known_mapping(op: str) -> MappingType | None:
    """The table's mapping type of `op`, or None when the table does not know it."""
    return OP_MAPPING.get(op)


def mapping_from_op_pattern(op_pattern: int | None) -> MappingType:
    """The mapping type TVM's op pattern implies; many-to-many (the safe guess) without one.

    Broadcast (TVM's kBroadcast) also covers a bias add, which DNNFusion calls one-to-one; the
    table decides for every known operator, so this guess only names unknown ones.
    """
    if op_pattern is None:
        return MappingType.MANY_TO_MANY
    return _PATTERN_MAPPING.get(op_pattern, MappingType.MANY_TO_MANY)


def is_complex(op: str) -> bool:
    """Whether `op` reduces over a weight or a second operand (conv, matmul, dense, einsum)."""
    return op in COMPLEX_OPS
