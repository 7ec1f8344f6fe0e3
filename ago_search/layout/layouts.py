"""Layouts a group can take, their index maps, and the vector width they are sized from.

A layout names how a group stores its 4-D activation tensors (the model's own NCHW, read off
the ONNX model) and the weights of its convolutions:

| layout     | activation (n, c, h, w) ->   | conv weight (o, i, h, w) ->                   |
|------------|------------------------------|-----------------------------------------------|
| `NCHW`     | as is (the model's default)  | as is                                         |
| `NHWC`     | (n, h, w, c)                 | (h, w, i, o): HWIO, output channels innermost |
| `NCHW{x}c` | (n, c/x, h, w, c%x)          | (o/x, i/y, h, w, i%y, o%x): OIHW{y}i{x}o      |

For the blocked layout x is the number of float32 lanes of the target's widest vector unit (4
for 128-bit NEON and SSE, 8 for AVX2, 16 for AVX-512), read from the target's features
(`vector_lanes`), never assumed: the machines this runs on vary. y is x where the weight's input
channels divide by it, else 1 (a depthwise conv's weight has one input channel). A tensor whose
channels do not divide by x keeps the default layout in a blocked group (an RGB image read by a
blocked conv): every tensor has its own map, and a kernel that reads one tensor in NCHW and
writes another blocked is as correct as any other (`ago_search.layout.primfunc`).

The maps are bijective, so every tensor in any layout holds the same values as in NCHW, and the
transform back is the inverse map (`IndexMap.inverse`); `to_layout`/`from_layout` do the same
on numpy arrays (weights are transformed once, when the model is compiled).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_LAYOUT",
    "SPATIAL_OPS",
    "image_nodes",
    "touches_activation",
    "Layout",
    "LayoutError",
    "layout_choices",
    "parse_layout",
    "vector_lanes",
]

DEFAULT_LAYOUT = "NCHW"

_BLOCKED = re.compile(r"^NCHW(\d+)c$")


class LayoutError(ValueError):
    """A layout name this version does not know."""


def _block(size: int, block: int) -> int:
    """`block` where `size` divides by it, else 1."""
    return block if size % block == 0 else 1


@dataclass(frozen=True)
class Layout:
    """One layout: `name` ("NCHW", "NHWC" or "NCHW{x}c") and, when blocked, `block` = x."""

    name: str
    block: int | None = None

    @property
    def is_default(self) -> bool:
        return self.name == DEFAULT_LAYOUT

    # -- activations ---------------------------------------------------------------------------

    def act_applies(self, shape: Sequence[int]) -> bool:
        """Whether an activation of `shape` takes this layout (rank 4; blocked: the channels
        divide by the block)."""
        if self.is_default or len(shape) != 4:
            return False
        return self.block is None or int(shape[1]) % self.block == 0

    def act_map(self) -> Callable[..., list[Any]]:
        """(n, c, h, w) -> the stored indices."""
        if self.block is None:
            return lambda n, c, h, w: [n, h, w, c]
        b = self.block
        return lambda n, c, h, w: [n, c // b, h, w, c % b]

    def act_inverse(self, then: Callable[..., list[Any]] | None = None) -> Callable[..., Any]:
        """The stored indices -> (n, c, h, w); with `then` (another layout's activation map),
        the stored indices -> that layout's: one transform from this layout to that."""
        after = then or (lambda n, c, h, w: [n, c, h, w])
        if self.block is None:
            return lambda n, h, w, c: after(n, c, h, w)
        b = self.block
        return lambda n, co, h, w, ci: after(n, co * b + ci, h, w)

    def act_block_map(self, rest: int) -> Callable[..., list[Any]]:
        """A block's iteration (n, c, h, w, *rest) -> the iteration that walks the stored
        order: NHWC (n, h, w, c, *rest); blocked (n, c/x, h, w, *rest, c%x)."""
        if self.block is None:
            return lambda n, c, h, w, *r: [n, h, w, c, *r]
        b = self.block
        return lambda n, c, h, w, *r: [n, c // b, h, w, *r, c % b]

    # -- convolution weights -------------------------------------------------------------------

    def weight_applies(self, shape: Sequence[int]) -> bool:
        if self.is_default or len(shape) != 4:
            return False
        return self.block is None or int(shape[0]) % self.block == 0

    def weight_map(self, shape: Sequence[int]) -> Callable[..., list[Any]]:
        """(o, i, h, w) -> the stored indices, for a weight of `shape` (OIHW)."""
        if self.block is None:
            return lambda o, i, h, w: [h, w, i, o]
        bo, bi = self.block, _block(int(shape[1]), self.block)
        return lambda o, i, h, w: [o // bo, i // bi, h, w, i % bi, o % bo]

    # -- numpy ---------------------------------------------------------------------------------

    def act_to(self, array: np.ndarray) -> np.ndarray:
        """An NCHW array in this layout."""
        if self.block is None:
            return np.ascontiguousarray(array.transpose(0, 2, 3, 1))
        n, c, h, w = array.shape
        b = self.block
        return np.ascontiguousarray(array.reshape(n, c // b, b, h, w).transpose(0, 1, 3, 4, 2))

    def act_from(self, array: np.ndarray) -> np.ndarray:
        """An array in this layout back in NCHW."""
        if self.block is None:
            return np.ascontiguousarray(array.transpose(0, 3, 1, 2))
        n, co, h, w, b = array.shape
        return np.ascontiguousarray(array.transpose(0, 1, 4, 2, 3).reshape(n, co * b, h, w))

    def weight_to(self, array: np.ndarray) -> np.ndarray:
        """An OIHW weight in this layout."""
        if self.block is None:
            return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
        o, i, h, w = array.shape
        bo, bi = self.block, _block(i, self.block)
        blocked = array.reshape(o // bo, bo, i // bi, bi, h, w)
        return np.ascontiguousarray(blocked.transpose(0, 2, 4, 5, 3, 1))

    def __str__(self) -> str:
        return self.name


def parse_layout(name: str | None) -> Layout:
    """The layout of a plan's layout slot (None: the default, NCHW)."""
    if name is None or name == DEFAULT_LAYOUT:
        return Layout(DEFAULT_LAYOUT)
    if name == "NHWC":
        return Layout("NHWC")
    match = _BLOCKED.match(name)
    if match and int(match.group(1)) > 1:
        block = int(match.group(1))
        return Layout(f"NCHW{block}c", block)
    raise LayoutError(
        f"unknown layout {name!r}; a group's layout is NCHW, NHWC or NCHW<x>c (x > 1, e.g. NCHW16c)"
    )


def vector_lanes(target: Any, dtype_bits: int = 32) -> int:
    """Lanes of `dtype_bits` in the target's widest vector register: from the target's CPU
    features (AVX-512: 512 bits, AVX/AVX2: 256, SSE and NEON: 128); 4 for any other target."""
    from tvm.target import codegen

    bits = 128
    if str(target.kind.name) == "llvm":
        with target:
            if codegen.target_has_features("avx512f", target):
                bits = 512
            elif codegen.target_has_features("avx", target):
                bits = 256
    return max(bits // dtype_bits, 1)


def layout_choices(target: Any) -> tuple[str, ...]:
    """The layouts the search tries on `target`: NCHW, NHWC and NCHW{lanes}c."""
    return (DEFAULT_LAYOUT, "NHWC", f"NCHW{vector_lanes(target)}c")


def index_map(fn: Callable[..., list[Any]], ndim: int) -> Any:
    """`fn` as a TVM IndexMap over `ndim` indices."""
    from tvm.tirx import IndexMap

    return IndexMap.from_func(fn, ndim=ndim)


def stored_shape(layout: Layout, role: str, shape: Sequence[int]) -> tuple[int, ...]:
    """The shape a tensor of `shape` and `role` ("act" or "weight") is stored in."""
    fn = layout.act_map() if role == "act" else layout.weight_map(shape)
    return tuple(int(d) for d in index_map(fn, len(shape)).map_shape(list(shape)))


def to_stored(layout: Layout, role: str, array: np.ndarray) -> np.ndarray:
    """An array (NCHW activation or OIHW weight) stored in `layout`."""
    return layout.act_to(array) if role == "act" else layout.weight_to(array)


# operators over an image's height and width: their rank-4 tensors are images (N, C, H, W);
# any other operator's rank-4 tensor is one only when it meets an image (`image_nodes`)
SPATIAL_OPS = ("conv2d", "pool2d", "resize2d", "depth_to_space", "space_to_depth")

_IMAGE_NODES: weakref.WeakKeyDictionary[Any, frozenset[str]] = weakref.WeakKeyDictionary()


def _is_spatial(op: str) -> bool:
    return any(name in op for name in SPATIAL_OPS)


def image_nodes(graph: Any) -> frozenset[str]:
    """The OpGraph nodes that write or read an image: a rank-4 tensor that a conv, pool or
    resize writes or reads, or that reaches one through rank-4 tensors of other nodes
    (elementwise, concat, pad, ...), a model input included. Attention's rank-4 tensors
    (batch, heads, tokens, features) are no images: in NHWC a ViT's attention kept its heads
    innermost, and the search that placed 14 of its 39 groups so ran 0.78x the NCHW one's
    speed. Computed once per graph."""
    cached = _IMAGE_NODES.get(graph.graph)
    if cached is not None:
        return cached

    def rank4_inputs(node: str) -> list[str]:
        data = graph.node(node)
        return [
            ref
            for ref, shape in zip(data["inputs"], data["in_shapes"], strict=False)
            if ref != "const" and len(shape) == 4
        ]

    def writes_rank4(node: str) -> bool:
        data = graph.node(node)
        return len(data["out_shapes"]) == 1 and len(data["out_shape"]) == 4

    readers: dict[str, list[str]] = {}  # rank-4 tensor (a node or a model input) -> readers
    for node in graph.order:
        for ref in rank4_inputs(node):
            readers.setdefault(ref, []).append(node)
    found: set[str] = set()
    frontier = [
        n
        for n in graph.order
        if _is_spatial(str(graph.node(n).get("op", ""))) and (writes_rank4(n) or rank4_inputs(n))
    ]
    seen_tensors: set[str] = set()
    while frontier:
        node = frontier.pop()
        if node in found:
            continue
        found.add(node)
        tensors = rank4_inputs(node) + ([node] if writes_rank4(node) else [])
        for tensor in tensors:
            if tensor in seen_tensors:
                continue
            seen_tensors.add(tensor)
            if tensor in readers:
                frontier.extend(readers[tensor])
            if not tensor.startswith("input:"):
                frontier.append(tensor)  # its producer
    result = frozenset(found)
    _IMAGE_NODES[graph.graph] = result
    return result


def touches_activation(graph: Any, node: str) -> bool:
    """Whether an OpGraph node writes or reads (from another node or a model input) an image
    (`image_nodes`): a group holding one changes with its layout (a flatten after the global
    pool too: in NCHW it would read the pool's result through a transform)."""
    data = graph.node(node)
    if data.get("primfunc") is None or len(data["out_shapes"]) != 1:
        return False  # left as it is in any layout (no call_tir; a tuple-producing call)
    return node in image_nodes(graph)
