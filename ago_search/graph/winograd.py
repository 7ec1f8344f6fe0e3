"""Winograd convolution (Lavin & Gray, F(m x m, 3 x 3)): 3x3 stride-1 convs with fewer multiplies.

A 3x3 conv computes each output tile of m x m from an (m+2) x (m+2) input tile; Winograd's
minimal filtering does it as an elementwise product in a transformed space,
Y = A^T [(G g G^T) * (B^T d B)] A, so over the input channels the work is (m+2)^2 multiply-adds
per tile and output channel pair instead of 9 m^2 direct: 2.25x fewer at m = 2, 4x at m = 4
(ORT's MLAS computes these convs directly, near the CPU's peak: fewer multiplies is how a
compiler beats it on ResNet-like models). The filter transform G g G^T is computed here, once,
in numpy at compile time (a constant of the model); the input and output transforms and the
batched GEMM between them are one PrimFunc that MetaSchedule tunes like any other, its two
transforms scheduled by MetaSchedule's own CPU rules for them (`schedule_rule` attributes:
`s_tir.meta_schedule.cpu.conv2d_nhwc_winograd_data_pack` / `..._inverse`, which unroll the
(m+2)^2 transform loops so the constant matrices fold into the code).

`legalize_map(tile)` gives LegalizeOps a conv2d legalization that uses it where it applies
(`winograd_applies`: NCHW data, OIHW constant float32 weights, 3x3, stride 1, dilation 1, one
group, padding at most 2, enough channels to be worth it) and TVM's own otherwise. The
PrimFunc reads the activation in NCHW and writes the output in NCHW at (n, co, h, w), so
`ago_search.layout` stores both in any layout like a direct conv's; its transformed weight is
rank 3, (tile + 2)^2 x CO x CI, which no layout claims (it is layout-free: each schedule packs
it as its loops read it, `plan.apply.mark_prepacked`).

Fewer multiplies, larger rounding error: F(4, 3)'s relative error on a 3x3x64 conv is around
1e-6-1e-5 in float32, inside the 1e-3 tolerance every build is verified with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import tvm
from tvm import relax, te, topi
from tvm.topi.nn.winograd_util import _cook_toom_convolution, _interpolation_points

__all__ = [
    "KEEP_LAYOUT_ATTR",
    "MIN_CHANNELS",
    "TILES",
    "legalize_map",
    "transform_weight",
    "winograd_applies",
    "winograd_conv2d",
]

TILES = (2, 4)
# below this many input or output channels the transforms cost more than the multiplies saved
MIN_CHANNELS = 16
_CONV_OP = "relax.nn.conv2d"
# a block annotation: the intermediate the block writes keeps its layout whatever layout the
# kernel's activations are stored in (`ago_search.layout.transform_primfunc`). The transform
# tiles (m+2, m+2, tiles, channels) are no images, and MetaSchedule's Winograd rules find
# their loops by position.
KEEP_LAYOUT_ATTR = "ago_keep_layout"


def _matrices(tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A (alpha x m), B (alpha x alpha), G (alpha x 3) in float64, alpha = tile + 2: the same
    Cook-Toom points TOPI uses."""
    return _cook_toom_convolution(_interpolation_points(tile + 1), tile, 3)


def _const_matrix(values: np.ndarray, name: str, dtype: str) -> te.Tensor:
    """A constant matrix as a block that reads nothing (MetaSchedule's Winograd rules inline
    it): a Select over the row, then over the row's nonzero columns. Once the transform loops
    are unrolled every entry must fold to a literal; TOPI's `const_matrix` chains one Select
    per entry on `i % rows == r && j % cols == c` (36 deep at F(4,3)), and simplifying those
    was most of a candidate's build (README, Development)."""
    rows, cols = values.shape

    def entry(i: Any, j: Any) -> Any:
        out = tvm.tirx.const(0.0, dtype)
        for r in range(rows):
            row = tvm.tirx.const(0.0, dtype)
            for c in range(cols):
                if values[r, c] != 0:
                    row = tvm.tirx.Select(j == c, tvm.tirx.const(float(values[r, c]), dtype), row)
            out = tvm.tirx.Select(i == r, row, out)
        return out

    return te.compute((rows, cols), entry, name=name, attrs={"const_matrix": True})


def transform_weight(weight: np.ndarray, tile: int) -> np.ndarray:
    """OIHW 3x3 weights -> the transformed filter U[eps * alpha + nu, co, ci] = (G g G^T)[eps, nu]
    (float64 arithmetic, the weight's dtype out)."""
    _, _, g = _matrices(tile)
    alpha = tile + 2
    u = np.einsum("ek,oikl,nl->enoi", g, weight.astype(np.float64), g)
    co, ci = weight.shape[:2]
    return np.ascontiguousarray(u.reshape(alpha * alpha, co, ci).astype(weight.dtype))


def _two_sided(src: te.Tensor, mat: te.Tensor, size: int, name: str, rule: str) -> te.Tensor:
    """out[i, j, p, c] = sum_{a, b} src[a, b, p, c] mat[a, i] mat[b, j] (M^T X M per tile and
    channel, i and j < size): the input transform (B) and the output transform (A), scheduled
    by MetaSchedule's CPU rule `conv2d_nhwc_winograd_<rule>`."""
    alpha = int(src.shape[0])
    r_a = te.reduce_axis((0, alpha), "r_a")
    r_b = te.reduce_axis((0, alpha), "r_b")
    return te.compute(
        (size, size, src.shape[2], src.shape[3]),
        lambda eps, nu, p, c: te.sum(
            src[r_a, r_b, p, c] * mat[r_a, eps] * mat[r_b, nu], axis=[r_a, r_b]
        ),
        name=name,
        attrs={
            "auto_scheduler_simplify_const_tensor_indices": ["eps", "nu", "r_a", "r_b"],
            "schedule_rule": f"conv2d_nhwc_winograd_{rule}",
            KEEP_LAYOUT_ATTR: 1,
        },
    )


def winograd_conv2d(
    data: te.Tensor, kernel_pack: te.Tensor, tile: int, padding: tuple[int, int, int, int]
) -> te.Tensor:
    """The conv of NCHW `data` with the transformed 3x3 filter `kernel_pack` ((tile+2)^2, CO,
    CI), stride 1, `padding` (top, left, bottom, right): NCHW output."""
    n, ci, h, w = (int(d) for d in data.shape)
    co = int(kernel_pack.shape[1])
    m, alpha = tile, tile + 2
    a_np, b_np, _ = _matrices(m)
    dtype = str(data.dtype)
    a_mat = _const_matrix(a_np.astype(dtype), "A", dtype)
    b_mat = _const_matrix(b_np.astype(dtype), "B", dtype)
    pad_t, pad_l, pad_b, pad_r = padding
    out_h, out_w = h + pad_t + pad_b - 2, w + pad_l + pad_r - 2
    n_h, n_w = (out_h + m - 1) // m, (out_w + m - 1) // m
    tiles = n * n_h * n_w
    # the last tiles may read past the padded input: pad to whole tiles
    extra_h = (n_h - 1) * m + alpha - (h + pad_t + pad_b)
    extra_w = (n_w - 1) * m + alpha - (w + pad_l + pad_r)
    data_pad = topi.nn.pad(
        data,
        (0, 0, pad_t, pad_l),
        (0, 0, pad_b + max(0, extra_h), pad_r + max(0, extra_w)),
        name="data_pad",
        # MetaSchedule's data-pack rule places it; other rules must leave it (inlined first,
        # the rule fails: "The block no longer exists in the IRModule")
        attrs={"schedule_rule": "None"},
    )
    input_tile = te.compute(
        (alpha, alpha, tiles, ci),
        lambda eps, nu, p, c: data_pad[
            p // (n_h * n_w), c, (p // n_w) % n_h * m + eps, p % n_w * m + nu
        ],
        name="input_tile",
        attrs={"schedule_rule": "None", KEEP_LAYOUT_ATTR: 1},
    )
    data_pack = _two_sided(input_tile, b_mat, alpha, "data_pack", "data_pack")
    rc = te.reduce_axis((0, ci), name="rc")
    bgemm = te.compute(
        (alpha, alpha, tiles, co),
        lambda eps, nu, p, o: te.sum(
            data_pack[eps, nu, p, rc] * kernel_pack[eps * alpha + nu, o, rc], axis=[rc]
        ),
        name="bgemm",
        attrs={"meta_schedule.write_cache_level": [2], KEEP_LAYOUT_ATTR: 1},
    )
    inverse = _two_sided(bgemm, a_mat, m, "inverse", "inverse")
    return te.compute(
        (n, co, out_h, out_w),
        lambda b, o, y, x: inverse[y % m, x % m, b * n_h * n_w + y // m * n_w + x // m, o],
        name="conv2d_winograd",
    )


def _ints(value: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in value)


def winograd_applies(call: relax.Call) -> bool:
    """Whether `call` (a relax.nn.conv2d) is a conv Winograd computes here: NCHW data, OIHW
    constant float32 3x3 weights, stride 1, dilation 1, one group, padding at most 2 a side,
    at least `MIN_CHANNELS` input and output channels."""
    if not isinstance(call.op, tvm.ir.Op) or call.op.name != _CONV_OP or len(call.args) != 2:
        return False
    attrs = call.attrs
    weight = call.args[1]
    if not isinstance(weight, tvm.ir.Constant):
        return False
    shape = _ints(weight.value.shape)
    return (
        str(attrs.data_layout) == "NCHW"
        and str(attrs.kernel_layout) == "OIHW"
        and str(attrs.out_layout) in ("NCHW", "")
        and int(attrs.groups) == 1
        and _ints(attrs.strides) == (1, 1)
        and _ints(attrs.dilation) == (1, 1)
        and all(0 <= p <= 2 for p in _ints(attrs.padding))
        and len(shape) == 4
        and shape[2:] == (3, 3)
        and min(shape[:2]) >= MIN_CHANNELS
        and str(weight.value.dtype) == "float32"
        and str(call.args[0].ty.dtype) == "float32"
        and (attrs.out_dtype is None or str(attrs.out_dtype) in ("", "float32", "void"))
    )


def legalize_map(tile: int) -> dict[str, Callable[..., relax.Expr]]:
    """LegalizeOps' `customize_legalize_map` entry that legalizes the convs Winograd applies to
    (`winograd_applies`) as `winograd_conv2d` with F(tile x tile, 3x3), and every other conv as
    TVM does."""
    if tile not in TILES:
        raise ValueError(f"Winograd tile {tile}: choose one of {', '.join(map(str, TILES))}")
    default = tvm.ir.Op.get(_CONV_OP).get_attr("FLegalize")

    def conv2d(bb: relax.BlockBuilder, call: relax.Call) -> relax.Expr:
        if not winograd_applies(call):
            return default(bb, call)
        weight = call.args[1].value.numpy()
        kernel_pack = relax.const(transform_weight(weight, tile))
        pad = _ints(call.attrs.padding)
        padding = (pad[0], pad[1], pad[2], pad[3]) if len(pad) == 4 else (pad[0], pad[1]) * 2
        return bb.call_te(
            winograd_conv2d,
            call.args[0],
            kernel_pack,
            tile,
            padding,
            primfunc_name_hint="conv2d_winograd",
        )

    return {_CONV_OP: conv2d}
