"""Compile Relax modules for a target, and run the result on numpy inputs.

`build_default` is TVM's own default build: legalize, fold constants, fuse (FuseOps +
FuseTIR), no schedules. It is the baseline every plan is compared with. `VMRunner` runs an
executable with its inputs already on the device, so that one call is one inference and
nothing else.

`compile_plan` builds a model as a plan groups it (`apply_plan`, then the lowering of TVM's
default CPU pipeline); `compile_plan_tuned` applies the database's best record of each kernel
first and says which kernels got none. Both take `fused=`, the module `apply_plan` gave, so a
caller that has it does not fuse again.

TVM's thread settings (`tvm_thread_env`, `set_tvm_threads`) are in
`ago_search.measure.threads`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tvm
import tvm_ffi
from tvm import relax

from ago_search.graph.opgraph import OpGraph
from ago_search.plan import Plan, apply_plan

__all__ = [
    "TunedBuild",
    "VMRunner",
    "apply_schedules",
    "build_default",
    "compile_plan",
    "compile_plan_tuned",
    "export_executable",
    "load_executable",
    "lowering_passes",
    "run_executable",
]

log = logging.getLogger(__name__)

# Name under which VMRunner saves `main` bound to its inputs.
_SAVED_MAIN = "ago_search_main_bound"


def build_default(mod: tvm.IRModule, target: tvm.target.Target) -> relax.VMExecutable:
    """TVM's default fused build of a Relax module (untuned kernels).

    Without `relax_pipeline`, tvm.compile on a CPU legalizes but does not fuse.
    """
    return tvm.compile(mod, target, relax_pipeline=relax.get_default_pipeline(target))


def lowering_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """What TVM's default CPU pipeline runs after FuseTIR: its dataflow lowering and
    finalisation passes (`relax/backend/cpu_generic/pipeline.py`), taken from TVM itself."""
    from tvm.relax.backend.cpu_generic import pipeline

    return pipeline.dataflow_lower_passes(target) + pipeline.finalize_passes(target)


def _lower(target: tvm.target.Target) -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name="ago_lower")
    def lower(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            return tvm.transform.Sequential(lowering_passes(target))(mod)

    return lower


def compile_plan(
    legalized_mod: tvm.IRModule,
    graph: OpGraph,
    plan: Plan,
    target: tvm.target.Target,
    database: Any | None = None,
    *,
    fused: tvm.IRModule | None = None,
) -> relax.VMExecutable:
    """Build the model as the plan groups it: apply_plan, then TVM's default lowering.

    Without `database` the kernels are untuned; with one (a MetaSchedule `Database`, e.g.
    `database.SqliteDatabase(store, device_key)`) each group's best record is applied first
    (`compile_plan_tuned`, which also says which kernels got one). `fused`, when given, is
    `apply_plan(legalized_mod, graph, plan, target)` made before: it is built as it is.
    """
    if database is not None:
        tuned = compile_plan_tuned(legalized_mod, graph, plan, target, database, fused=fused)
        return tuned.executable
    if any(g.schedule is not None for g in plan.groups):
        log.warning("compile_plan builds untuned kernels; the plan's schedules are ignored")
    if fused is None:
        fused = apply_plan(legalized_mod, graph, plan, target)
    return tvm.compile(fused, target, relax_pipeline=_lower(target))


_SCHEDULED_ATTR = "tirx.is_scheduled"  # what MetaScheduleApplyDatabase marks its PrimFuncs with


@dataclass(frozen=True)
class TunedBuild:
    """A compiled plan with tuning records applied, and which kernels got one.

    scheduled: PrimFuncs a record was applied to; untuned: those compiled without one.
    """

    executable: relax.VMExecutable
    scheduled: tuple[str, ...]
    untuned: tuple[str, ...]

    @property
    def kernels(self) -> int:
        return len(self.scheduled) + len(self.untuned)


def apply_schedules(
    fused_mod: tvm.IRModule, target: tvm.target.Target, database: Any
) -> tuple[tvm.IRModule, tuple[str, ...], tuple[str, ...]]:
    """The fused module (after FuseTIR) with the database's best record of each PrimFunc
    applied (`MetaScheduleApplyDatabase` under `with target, database`), and the names of
    the PrimFuncs that got one and of those that did not.

    `database` is a MetaSchedule `Database`; ours (`database.SqliteDatabase`) serves
    only records with status ok, so failures and wrong results are never applied.
    """
    with target, database:
        scheduled_mod = relax.transform.MetaScheduleApplyDatabase()(fused_mod)
    scheduled, untuned = [], []
    for gv, func in scheduled_mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        has_record = func.attrs is not None and bool(func.attrs.get(_SCHEDULED_ATTR, False))
        (scheduled if has_record else untuned).append(gv.name_hint)
    return scheduled_mod, tuple(sorted(scheduled)), tuple(sorted(untuned))


def compile_plan_tuned(
    legalized_mod: tvm.IRModule,
    graph: OpGraph,
    plan: Plan,
    target: tvm.target.Target,
    database: Any,
    *,
    fused: tvm.IRModule | None = None,
) -> TunedBuild:
    """apply_plan, the database's schedules (`apply_schedules`), then TVM's lowering.

    `fused`, when given, is `apply_plan(legalized_mod, graph, plan, target)` made before: the
    schedules are applied to it and nothing is fused again. Check `TunedBuild.untuned`: a
    kernel without a record is built untuned (TVM_NOTES.md: records silently not found are
    the usual way a tuned build comes out slow).
    """
    if fused is None:
        fused = apply_plan(legalized_mod, graph, plan, target)
    scheduled_mod, scheduled, untuned = apply_schedules(fused, target, database)
    if untuned:
        count = len(scheduled) + len(untuned)
        log.info("%d of %d kernels have no tuning record", len(untuned), count)
    executable = tvm.compile(scheduled_mod, target, relax_pipeline=_lower(target))
    return TunedBuild(executable, scheduled, untuned)


def export_executable(executable: relax.VMExecutable, path: str | Path) -> Path:
    """Write an executable as a shared library that the TVM runtime alone can load."""
    path = Path(path)
    executable.export_library(str(path))
    return path


def load_executable(path: str | Path) -> tvm.runtime.Module:
    """Load a library written by `export_executable`; VMRunner accepts the result."""
    return tvm.runtime.load_module(str(path))


def _to_numpy(value: object) -> list[np.ndarray]:
    """Outputs of a VM call as a flat list of numpy arrays (tuples flattened in order)."""
    if isinstance(value, tvm.runtime.Tensor):
        return [value.numpy()]
    if isinstance(value, tvm_ffi.Array | list | tuple):
        return [array for item in value for array in _to_numpy(item)]
    raise TypeError(f"unexpected VM output of type {type(value).__name__}")


class VMRunner:
    """Runs `main` of an executable on fixed inputs, converted to TVM tensors once.

    Calling the runner is one full inference (outputs allocated, not copied back): the thing
    to time. `outputs()` runs once more and returns numpy arrays.
    """

    def __init__(
        self,
        executable: relax.VMExecutable | tvm.runtime.Module,
        inputs: Sequence[np.ndarray],
        device: tvm.runtime.Device | None = None,
    ):
        self.device = device if device is not None else tvm.cpu()
        self._vm = relax.VirtualMachine(executable, self.device)
        self._args = [tvm.runtime.tensor(np.ascontiguousarray(a), self.device) for a in inputs]
        self._vm.save_function("main", _SAVED_MAIN, *self._args)
        self._main = self._vm[_SAVED_MAIN]

    def __call__(self) -> object:
        return self._main()

    def outputs(self) -> list[np.ndarray]:
        return _to_numpy(self._main())


def run_executable(
    executable: relax.VMExecutable | tvm.runtime.Module, inputs: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Run `main` once on numpy inputs (in parameter order); outputs as numpy arrays."""
    return VMRunner(executable, inputs).outputs()
