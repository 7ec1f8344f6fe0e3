"""Tuning tasks: the distinct group PrimFuncs of a fused module, keyed by workload + target.

A task is what MetaSchedule tunes: one PrimFunc as an IRModule {"main": func}, normalised the
way MetaSchedule normalises it (`tvm.s_tir.meta_schedule.normalize_mod`: attribute
global_symbol "main", tirx.noalias). Its `workload` is the structural hash of that module,
which is exactly the hash MetaSchedule's database stores for the workload, so records found
for a task are found again by MetaSchedule and the other way round. Names do not count: buffer
and variable names are ignored by structural hashing, and a global_symbol the PrimFunc may
carry is replaced by "main" first.

Calls of structurally equal PrimFuncs (ResNet's identical residual blocks, BERT's identical
encoder layers) are one task whose `weight` is the number of calls, as in MetaSchedule's own
`ms.relax_integration.extract_tasks` (same tasks, same weights; `tests/test_tasks.py`), with
two differences: tasks come in the order of their first call (MetaSchedule's order is that of
a hash table), and every Relax function is read with `main` first.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import tvm
import tvm_ffi
from tvm import relax, s_tir, tirx

from ago_search.database.keys import target_string, task_key
from ago_search.graph.opgraph import OpGraph
from ago_search.plan import Plan, group_function_names

__all__ = [
    "Task",
    "count_complex_blocks",
    "extract_tasks",
    "workload_module",
]

logger = logging.getLogger(__name__)

_CALL_TIR_OPS = ("relax.call_tir", "relax.call_tir_inplace")
_REDUCE = 2  # IterVar.iter_type of a reduction axis (kCommReduce)


@dataclass(frozen=True)
class Task:
    """One tuning task: a distinct PrimFunc of the fused model, for one target.

    `key` = f"{workload:016x}@{target digest}" identifies it across plans, runs and models.
    `groups` are the function names of the groups (call sites) it serves, in call order, and
    `nodes` their OpGraph nodes (empty tuples when extracted without a plan). `weight` is the
    number of calls; `flops` is MetaSchedule's estimate (`estimate_tir_flops`) of one call;
    `complex_ops` counts its contraction blocks (`count_complex_blocks`).
    """

    key: str
    workload: int
    target: str
    name: str
    groups: tuple[str, ...]
    nodes: tuple[tuple[str, ...], ...]
    weight: int
    flops: float
    complex_ops: int
    mod: tvm.IRModule = field(compare=False, repr=False)

    @property
    def prim_func(self) -> tirx.PrimFunc:
        return self.mod["main"]

    def script(self) -> str:
        """The PrimFunc as TVMScript."""
        return self.mod.script()

    def target_object(self) -> tvm.target.Target:
        return tvm.target.Target(json.loads(self.target))

    def to_extracted_task(self) -> Any:
        """The task as MetaSchedule's `ExtractedTask` (what its tuning entry points take)."""
        from tvm.s_tir.meta_schedule import ExtractedTask

        return ExtractedTask(self.name, self.mod, self.target_object(), [self.mod], self.weight)


def workload_module(func: tirx.PrimFunc) -> tvm.IRModule:
    """`func` as MetaSchedule tunes it: {"main": func} with global_symbol "main", noalias."""
    # registered when meta_schedule is imported; the same function its task extractor calls
    import tvm.s_tir.meta_schedule  # noqa: F401

    normalize = tvm_ffi.get_global_func("tvm.s_tir.meta_schedule.normalize_mod")
    if func.attrs is not None and "global_symbol" in func.attrs:
        func = func.without_attr("global_symbol")
    return normalize(func)


def count_complex_blocks(func: tirx.PrimFunc) -> int:
    """Blocks of `func` that contract two tensors: a reduction axis indexes two of the buffers
    it reads (conv: padded input and weight; matmul: both operands). Pooling, mean, softmax
    and norms reduce over one buffer and do not count, nor does a product with a constant
    table (a buffer written by a block that reads nothing: a Winograd transform's matrices)."""
    blocks: list[s_tir.SBlock] = []
    tvm_ffi.structural_walk(func.body, [(s_tir.SBlock, blocks.append)])
    tables = [w.source for b in blocks if not b.reads for w in b.writes]
    count = 0
    for block in blocks:
        reduce_vars = [iv.var for iv in block.iter_vars if int(iv.iter_type) == _REDUCE]
        if not reduce_vars:
            continue
        indexed = set()
        for read in block.reads:
            if any(read.source.same_as(t) for t in tables):
                continue
            if _uses_any(read.region, reduce_vars):
                indexed.add(read.source)
        if len(indexed) >= 2:
            count += 1
    return count


def _uses_any(region: Any, variables: Sequence[tirx.Var]) -> bool:
    found: list[tirx.Var] = []

    def visit(var: tirx.Var) -> None:
        if any(var.same_as(v) for v in variables):
            found.append(var)

    for r in region:
        tvm_ffi.structural_walk(r.min, [(tirx.Var, visit)])
    return bool(found)


def _call_sites(mod: tvm.IRModule, func_name: str) -> Iterator[tvm.ir.GlobalVar]:
    """The PrimFunc GlobalVar of every call_tir in the module's Relax functions, `func_name`
    first, the others by name, bindings in order."""
    relax_funcs = sorted(
        (gv for gv, f in mod.functions.items() if isinstance(f, relax.Function)),
        key=lambda gv: (gv.name_hint != func_name, gv.name_hint),
    )
    for gv in relax_funcs:
        calls: list[tvm.ir.GlobalVar] = []

        def visit(expr: Any, calls: list[tvm.ir.GlobalVar] = calls) -> None:
            if (
                isinstance(expr, relax.Call)
                and isinstance(expr.op, tvm.ir.Op)
                and expr.op.name in _CALL_TIR_OPS
                and isinstance(expr.args[0], tvm.ir.GlobalVar)
            ):
                calls.append(expr.args[0])

        relax.analysis.post_order_visit(mod[gv], visit)
        yield from calls


def extract_tasks(
    fused_mod: tvm.IRModule,
    target: tvm.target.Target,
    plan: Plan | None = None,
    graph: OpGraph | None = None,
) -> list[Task]:
    """The tuning tasks of a fused module (after FuseTIR), in the order of their first call.

    With `plan` and `graph` (those `apply_plan` made `fused_mod` from) each task also names the
    OpGraph nodes of the groups it serves.
    """
    nodes_of: Mapping[str, tuple[str, ...]] = {}
    func_name = "main"
    if plan is not None:
        func_name = plan.func_name
        if graph is not None:
            names = group_function_names(graph, plan)
            nodes_of = {name: g.nodes for name, g in zip(names, plan.groups, strict=True)}
    tstr = target_string(target)

    # workload hash -> [(normalised module, [call site names])]; equality confirms the hash
    found: dict[int, list[tuple[tvm.IRModule, list[str]]]] = {}
    order: list[tuple[int, int]] = []
    for gv in _call_sites(fused_mod, func_name):
        func = fused_mod[gv]
        if not isinstance(func, tirx.PrimFunc):
            continue
        mod = workload_module(func)
        workload = int(tvm_ffi.structural_hash(mod))
        bucket = found.setdefault(workload, [])
        for rep_mod, sites in bucket:
            if tvm_ffi.structural_equal(rep_mod, mod):
                sites.append(gv.name_hint)
                break
        else:
            bucket.append((mod, [gv.name_hint]))
            order.append((workload, len(bucket) - 1))

    tasks = []
    for workload, position in order:
        mod, sites = found[workload][position]
        key = task_key(workload, tstr)
        if position > 0:
            logger.warning("different PrimFuncs share workload hash %d", workload)
            key += f"-{position}"
        tasks.append(
            Task(
                key=key,
                workload=workload,
                target=tstr,
                name=sites[0],
                groups=tuple(sites),
                nodes=tuple(nodes_of.get(s, ()) for s in sites),
                weight=len(sites),
                flops=_flops(mod),
                complex_ops=count_complex_blocks(mod["main"]),
                mod=mod,
            )
        )
    logger.debug("%d tasks from %d calls", len(tasks), sum(t.weight for t in tasks))
    return tasks


def _flops(mod: tvm.IRModule) -> float:
    from tvm.s_tir.analysis import estimate_tir_flops

    try:
        return float(estimate_tir_flops(mod))
    except Exception as err:  # noqa: BLE001 - an estimate, never a reason to fail
        logger.warning("cannot estimate the FLOPs of %s: %s", mod.get_global_vars()[0], err)
        return 0.0
