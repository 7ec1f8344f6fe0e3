"""Weights a schedule lays out for itself (MetaSchedule's `RewriteLayout`), as the check sees them.

A kernel's parameters named in its PrimFunc's `layout_free_buffers` attribute (constants of
the model: weights and biases, `plan.apply.mark_prepacked`) may be stored in any layout; the
`RewriteLayout` postprocessor gives each scheduled candidate the layout its loops read best,
as a *preproc* block at the top of the PrimFunc (annotated
`meta_schedule.layout_rewrite_preproc`): `packed[f(v)] = weight[v]`. The candidate that is
built and timed has that block removed and takes the packed weight as its argument
(`RemoveWeightLayoutRewriteBlock`, in `builders.compile_candidate`); in the model the same
block becomes a transform of the constant, folded at compile time (`build.pack_weights`).

The check (`schedule.verify.ReferenceCheck`) runs each candidate on the task's fixed inputs,
which are in the original layout, so it must pack them the way that candidate does. The
builder writes each candidate's rewrites beside its library (`SIDECAR`, JSON: argument
index, index map, packed shape); the check reads them and packs its inputs with numpy
(`pack_array`, the index map evaluated on index grids: TVM's `IndexMap.map_tensor` takes
5.5 s for a 512x3x3x512 weight, this some 0.1 s).
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tvm
import tvm_ffi
from tvm import s_tir, tirx

__all__ = [
    "PREPROC_ATTR",
    "SIDECAR",
    "WeightRewrite",
    "pack_array",
    "read_rewrites",
    "weight_rewrites",
    "write_rewrites",
]

PREPROC_ATTR = "meta_schedule.layout_rewrite_preproc"
SIDECAR = "weight_layouts.json"


@dataclass(frozen=True)
class WeightRewrite:
    """One parameter a candidate takes packed: `packed[index_map(i)] = weight[i]`."""

    arg: int  # position of the parameter in the PrimFunc's parameters
    index_map: Any  # tvm.tirx.IndexMap: original indices -> packed indices
    shape: tuple[int, ...]  # the packed array's shape

    def to_json(self) -> dict[str, Any]:
        return {"arg": self.arg, "index_map": tvm.ir.save_json(self.index_map), "shape": self.shape}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WeightRewrite:
        return cls(
            int(data["arg"]),
            tvm.ir.load_json(data["index_map"]),
            tuple(int(d) for d in data["shape"]),
        )


def weight_rewrites(mod: tvm.IRModule | tirx.PrimFunc) -> tuple[WeightRewrite, ...]:
    """The parameters a scheduled candidate (its module's "main", or the PrimFunc) packs in
    preproc blocks, in parameter order; empty when it packs none."""
    func = mod["main"] if isinstance(mod, tvm.IRModule) else mod
    blocks: list[s_tir.SBlock] = []
    tvm_ffi.structural_walk(func.body, [(s_tir.SBlock, blocks.append)])
    found = []
    for block in blocks:
        if not _is_preproc(block):
            continue
        store = block.body
        load = store.value
        arg = next((i for i, p in enumerate(func.params) if p.same_as(load.source)), None)
        if arg is None:
            raise ValueError(f"preproc block {block.name_hint} reads no parameter")
        index_map = tirx.IndexMap(list(load.indices), list(store.indices), None)
        shape = tuple(int(d) for d in store.buffer.shape)
        found.append(WeightRewrite(arg, index_map, shape))
    return tuple(sorted(found, key=lambda r: r.arg))


def _is_preproc(block: Any) -> bool:
    value = block.annotations.get(PREPROC_ATTR) if block.annotations is not None else None
    return value is not None and int(value) == 1


def write_rewrites(folder: str | Path, rewrites: tuple[WeightRewrite, ...]) -> None:
    """Write a candidate's rewrites beside its library (nothing when there are none)."""
    if rewrites:
        text = json.dumps([r.to_json() for r in rewrites])
        (Path(folder) / SIDECAR).write_text(text)


def read_rewrites(artifact_path: str | Path) -> tuple[WeightRewrite, ...]:
    """The rewrites written beside a candidate's library; empty when it packs nothing."""
    path = Path(artifact_path).parent / SIDECAR
    if not path.is_file():
        return ()
    return tuple(WeightRewrite.from_json(d) for d in json.loads(path.read_text()))


_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    tirx.expr.Add: operator.add,
    tirx.expr.Sub: operator.sub,
    tirx.expr.Mul: operator.mul,
    tirx.expr.FloorDiv: operator.floordiv,
    tirx.expr.FloorMod: operator.mod,
    tirx.expr.Min: np.minimum,
    tirx.expr.Max: np.maximum,
}


def _evaluate(expr: Any, env: Mapping[Any, np.ndarray]) -> np.ndarray | int:
    """An index expression on numpy index grids (vars, integer constants, + - * // % min
    max, casts)."""
    if isinstance(expr, tirx.expr.IntImm):
        return int(expr.value)
    for var, grid in env.items():
        if expr.same_as(var):
            return grid
    op = _BINARY.get(type(expr))
    if op is not None:
        return op(_evaluate(expr.a, env), _evaluate(expr.b, env))
    if isinstance(expr, tirx.expr.Cast):
        return _evaluate(expr.value, env)
    raise NotImplementedError(f"index expression {expr} ({type(expr).__name__})")


def pack_array(array: np.ndarray, rewrite: WeightRewrite) -> np.ndarray:
    """`array` (the parameter in its original layout) packed as the candidate takes it.
    Elements of the packed shape that no original element maps to stay zero."""
    initial = list(rewrite.index_map.initial_indices)
    if len(initial) != array.ndim:
        raise ValueError(
            f"index map of {len(initial)} dimensions for an array of {array.ndim} ({array.shape})"
        )
    grids = np.indices(array.shape, dtype=np.int64, sparse=True)
    env = dict(zip(initial, grids, strict=True))
    packed = np.zeros(rewrite.shape, dtype=array.dtype)
    where = [
        np.broadcast_to(_evaluate(e, env), array.shape) for e in rewrite.index_map.final_indices
    ]
    packed[tuple(where)] = array
    return packed
