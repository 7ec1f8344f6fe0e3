"""One operator's PrimFunc in a layout: its buffers stored in the layout, its loops walking it.

A legalized operator (one `call_tir` PrimFunc: a conv's padding and contraction blocks, an
add, a pool) computes in the model's NCHW indices. `transform_primfunc` gives the same
computation over buffers stored in another layout, with TVM's own schedule primitives:

- `Schedule.transform_layout` on each parameter buffer that has a map (the caller says which:
  activations and conv weights, `ago_search.layout.roles`), so the function's signature takes
  and returns the tensors in the layout; every access is rewritten through the map;
- the same on an intermediate buffer of rank 4 written from a transformed activation (a conv's
  padded input), so no copy in NCHW is left inside the kernel; not on one whose block is
  annotated `KEEP_LAYOUT_ATTR` (a Winograd conv's transform tiles, `ago_search.graph.winograd`);
- `Schedule.transform_block_layout` on each block that writes a transformed activation at
  (n, c, h, w) = four of its iteration variables: its iteration becomes (n, h, w, c, ...) in
  NHWC and (n, c/x, h, w, ..., c%x) when blocked, so the loops MetaSchedule starts from walk
  the stored order and the innermost spatial loop is the contiguous one (ALT's point: a layout
  is worth what the loops make of it, and the loops are tuned after it).

Every map is a bijection on the tensor's index space, so the result computes the same values;
`tests/test_layouts.py` checks every operator kind against ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tvm_ffi
from tvm import s_tir, tirx

from ago_search.graph.winograd import KEEP_LAYOUT_ATTR
from ago_search.layout.layouts import Layout, index_map

__all__ = ["ACT", "WEIGHT", "transform_primfunc"]

IndexFn = Callable[..., list[Any]]

_SPATIAL = 0  # IterVar.iter_type of a data-parallel axis


def _shape(var: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in var.ty.shape)


def _blocks(func: tirx.PrimFunc) -> list[s_tir.SBlock]:
    blocks: list[s_tir.SBlock] = []
    tvm_ffi.structural_walk(func.body, [(s_tir.SBlock, blocks.append)])
    return [b for b in blocks if b.name_hint != "root"]


def _index_of(sources: Sequence[Any], var: Any) -> int | None:
    for k, s in enumerate(sources):
        if s.same_as(var):
            return k
    return None


def _nchw_positions(block: s_tir.SBlock) -> tuple[int, int, int, int] | None:
    """Where n, c, h, w of the block's one written tensor are among its iteration variables,
    when it writes that tensor at four distinct spatial iteration variables; else None."""
    if len(block.writes) != 1 or len(block.writes[0].region) != 4:
        return None
    positions = []
    for r in block.writes[0].region:
        hit = next((k for k, iv in enumerate(block.iter_vars) if r.min.same_as(iv.var)), None)
        if hit is None or int(block.iter_vars[hit].iter_type) != _SPATIAL:
            return None
        positions.append(hit)
    if len(set(positions)) != 4:
        return None
    return positions[0], positions[1], positions[2], positions[3]


def _block_map(layout: Layout, positions: tuple[int, int, int, int], count: int) -> IndexFn:
    """The block's iteration (its `count` variables) -> the iteration over the stored order,
    the variables that are not n, c, h, w kept in their order."""
    pn, pc, ph, pw = positions
    others = [k for k in range(count) if k not in positions]
    reorder = layout.act_block_map(len(others))

    def remap(*vs: Any) -> list[Any]:
        return reorder(vs[pn], vs[pc], vs[ph], vs[pw], *(vs[k] for k in others))

    return remap


ACT, WEIGHT = "act", "weight"


def transform_primfunc(
    func: tirx.PrimFunc, roles: Sequence[str | None], layout: Layout
) -> tirx.PrimFunc:
    """`func` with parameter k stored in `layout` as its role `roles[k]` says ("act": an
    activation, "weight": a conv weight, None: as is), the rank-4 intermediates written from a
    transformed activation stored like activations, and the blocks that write activations
    iterating in the stored order."""
    params = list(func.params)
    if len(roles) != len(params):
        raise ValueError(f"{len(roles)} roles for a function of {len(params)} parameters")
    blocks = _blocks(func)

    # buffer var -> role: the parameters' as given, then intermediates in program order
    mapped: list[tuple[Any, str]] = [(p, r) for p, r in zip(params, roles, strict=True) if r]
    for block in blocks:
        if KEEP_LAYOUT_ATTR in block.annotations:
            continue  # no image (a Winograd transform's tiles)
        reads_act = any(_role(mapped, r.source) == ACT for r in block.reads)
        for w in block.writes:
            src = w.source
            fresh = _index_of(params, src) is None and _role(mapped, src) is None
            if fresh and reads_act and layout.act_applies(_shape(src)):
                mapped.append((src, ACT))

    block_maps: list[tuple[str, IndexFn, int]] = []
    for block in blocks:
        if not block.writes or _role(mapped, block.writes[0].source) != ACT:
            continue
        positions = _nchw_positions(block)
        if positions is not None:
            count = len(block.iter_vars)
            block_maps.append((block.name_hint, _block_map(layout, positions, count), count))

    sch = s_tir.Schedule(func)
    for var, role in mapped:
        where = _access(blocks, var)
        if where is None:  # a parameter no block touches
            continue
        name, kind, k = where
        fn = layout.act_map() if role == ACT else layout.weight_map(_shape(var))
        sch.transform_layout(sch.get_sblock(name), (kind, k), index_map(fn, 4))
    for name, fn, count in block_maps:
        sch.transform_block_layout(sch.get_sblock(name), index_map(fn, count))
    return sch.mod["main"]


def _role(mapped: Sequence[tuple[Any, str]], var: Any) -> str | None:
    return next((r for v, r in mapped if v.same_as(var)), None)


def _access(blocks: Sequence[s_tir.SBlock], var: Any) -> tuple[str, str, int] | None:
    """A block that reads or writes `var`: (block name, "read"/"write", region index)."""
    for block in blocks:
        k = _index_of([w.source for w in block.writes], var)
        if k is not None:
            return block.name_hint, "write", k
        k = _index_of([r.source for r in block.reads], var)
        if k is not None:
            return block.name_hint, "read", k
    return None
