"""Compile Relax modules for a target, and run the result on numpy inputs.

`build_default` is TVM's own default build: legalize, fold constants, fuse (FuseOps +
FuseTIR), no schedules. It is the baseline every plan is compared with. `VMRunner` runs an
executable with its inputs already on the device, so that one call is one inference and
nothing else.

`compile_plan` builds a model as a plan groups it (`apply_plan`, then the lowering of TVM's
default CPU pipeline); `compile_plan_tuned` applies the database's best record of each kernel
first and says which kernels got none, and packs the weights the schedules re-laid out at
compile time (`pack_weights`). Both take `fused=`, the module `apply_plan` gave, so a
caller that has it does not fuse again.

TVM's thread settings (`tvm_thread_env`, `set_tvm_threads`) are in
`ago_search.measure.threads`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
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
    "pack_weights",
    "run_executable",
]

log = logging.getLogger(__name__)

# What SplitLayoutRewritePreproc appends to the name of a kernel that takes packed weights.
PREPACKED_SUFFIX = "_prepacked"

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
    only records with status ok, so failures and wrong results are never applied. A
    schedule's weight packing is still inside its kernel here (`pack_weights` moves it out).
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


def pack_weights(scheduled_mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """Weights packed once, at compile time, in the layouts the schedules chose.

    A schedule of a kernel with layout-free weights (`plan.apply.mark_prepacked`) may begin
    with preproc blocks that re-lay out a weight (MetaSchedule's `RewriteLayout`):
    `SplitLayoutRewritePreproc` moves them into kernels of their own called on the weight
    before the kernel, which then takes the packed weight, and `FoldConstant` runs those on
    the model's constants at compile time (TVM's `static_shape_tuning_pipeline` with
    `cpu_weight_prepack` does the same, less the folding, as its weights are parameters).
    """
    with target:
        split = relax.transform.SplitLayoutRewritePreproc()(scheduled_mod)
        if split.same_as(scheduled_mod):
            return scheduled_mod
        return tvm.transform.Sequential(
            [relax.transform.FoldConstant(), relax.transform.DeadCodeElimination()]
        )(split)


def compile_plan_tuned(
    legalized_mod: tvm.IRModule,
    graph: OpGraph,
    plan: Plan,
    target: tvm.target.Target,
    database: Any,
    *,
    fused: tvm.IRModule | None = None,
) -> TunedBuild:
    """apply_plan, the database's schedules (`apply_schedules`), the weights packed as they
    chose (`pack_weights`), then TVM's lowering.

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
    packed = pack_weights(scheduled_mod, target)
    executable = tvm.compile(packed, target, relax_pipeline=_lower(target))
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

    def kernel_times(self, runs: int = 20, warmup: int = 2) -> dict[str, float]:
        """Each function the VM calls (kernels; not its builtins, not Relax closures, whose
        time holds their kernels'), its wall time per inference inside the model: the median
        over `runs` inferences of the summed time of its calls, through the VM's instrument
        hook. The hook's own cost (a microsecond or two a call, more with more arguments) is
        taken off, as fitted on the VM's builtins (allocations: nearly free themselves)
        against their argument counts. What a kernel costs where the model runs it: its
        inputs just written by the kernel before, its weights wherever the rest of the model
        left them. Kernels are named after the PrimFuncs `apply_plan` made, those with
        packed weights too."""
        import statistics
        import time

        started: dict[str, float] = {}
        calls: list[tuple[str, float, int]] = []  # (symbol, seconds, arguments)

        def instrument(func: object, symbol: str, before: bool, ret: object, *args: object) -> int:
            now = time.perf_counter()
            if before:
                started[symbol] = now
            elif symbol in started and isinstance(func, tvm_ffi.Function):
                calls.append((symbol, now - started.pop(symbol), len(args)))
            return 0

        for _ in range(warmup):
            self._main()
        per_run: list[list[tuple[str, float, int]]] = []
        self._vm.set_instrument(instrument)
        try:
            for _ in range(runs):
                calls.clear()
                self._main()
                per_run.append(list(calls))
        finally:
            try:
                self._vm.set_instrument(None)
            except Exception:  # noqa: BLE001 - an older VM keeps the hook: time nothing after
                log.debug("the VM's instrument hook could not be removed")
        hook = _hook_cost([c for run in per_run for c in run if c[0].startswith("vm.builtin")])
        symbols = {c[0] for run in per_run for c in run if not c[0].startswith("vm.builtin")}
        totals: dict[str, list[float]] = {k: [] for k in symbols}
        for run in per_run:
            seconds = dict.fromkeys(symbols, 0.0)
            for symbol, took, nargs in run:
                if symbol in seconds:
                    seconds[symbol] += max(0.0, took - hook(nargs))
            for symbol, value in seconds.items():
                totals[symbol].append(value)
        # a kernel whose weights are packed runs as "<name>_prepacked" (`pack_weights`)
        return {k.removesuffix(PREPACKED_SUFFIX): statistics.median(v) for k, v in totals.items()}


def _hook_cost(builtins: list[tuple[str, float, int]]) -> Callable[[int], float]:
    """The instrument hook's cost per call as a + b x arguments, fitted (least squares on
    the medians per argument count) on builtin calls; the median alone when they all take as
    many arguments; 0 without any."""
    import statistics

    by_count: dict[int, list[float]] = {}
    for _, took, nargs in builtins:
        by_count.setdefault(nargs, []).append(took)
    if not by_count:
        return lambda nargs: 0.0
    points = sorted((n, statistics.median(v)) for n, v in by_count.items())
    if len(points) == 1:
        only = points[0][1]
        return lambda nargs: only
    xs = np.array([p[0] for p in points], np.float64)
    ys = np.array([p[1] for p in points], np.float64)
    slope, intercept = np.polyfit(xs, ys, 1)
    slope = max(0.0, float(slope))
    floor = float(ys.min())
    return lambda nargs: max(floor, intercept + slope * nargs)


def run_executable(
    executable: relax.VMExecutable | tvm.runtime.Module, inputs: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Run `main` once on numpy inputs (in parameter order); outputs as numpy arrays."""
    return VMRunner(executable, inputs).outputs()
