"""Tuning tasks with MetaSchedule's evolutionary search, our builders, runners and database.

`tune_tasks(tasks, device, database, config)` tunes a plan's tasks (or one) on a device and
returns a `TuningReport`. It is MetaSchedule's own loop, `ms.tune.tune_tasks`, given:

- one `ms.TuneContext` per task (post-order-apply design space, `EvolutionarySearch` with a
  population of 128: 0.7 s a trial on 2 cores instead of 2.6 s with the default 512),
  wrapped in `SkipMeasured` (below);
- our `LocalBuilder` and `SubprocessRunner` / `RPCRunner` (subprocesses with time-outs), the
  runner checking every candidate's outputs against the untuned task (`verify.ReferenceCheck`);
- the tuning database as its `Database` (`SqliteDatabase`, one device), with
  `CommitMeasurements` as the first measure callback so every candidate, failures and wrong
  results included, is a record with its reason, committed before the next one is measured;
- a task scheduler: ours (`scheduler.FirstPassScheduler`, every task one cheap round first)
  or MetaSchedule's own ("gradient", "round-robin"), for comparison.

Budget. `TuningConfig.trials` is the number of search trials the tasks should have on the
device in all, the database's included: a run that was killed, started again with the same
arguments, measures only what is missing, and a finished one measures nothing.

Resume without re-measuring. MetaSchedule's `EvolutionarySearch` does read the database: its
initial population includes the best records of the workload (init_measured_ratio), but the
set of schedules it will not measure again starts empty in every run (`measured_workloads_`
in evolutionary_search.cc, with a TODO to fill it from the database), so after a restart it
happily re-measures the best records it just took from the database. `SkipMeasured` wraps
the search: every candidate whose trace hash the database holds for (task, device), any
outcome, is dropped before it is built; the search is asked again (up to
`max_empty_rounds` times) when a whole round was known, and the task ends when it only
proposes known schedules. Each task's untuned kernel is measured once too (the empty trace,
source "untuned"): the per-task baseline, and the best record where no schedule beats it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.search_strategy import PySearchStrategy

from ago_search.database import Record, Status, TuningDatabase, canonical_target, trace_hash
from ago_search.errors import AgoSearchError
from ago_search.measure.protocol import MeasureProtocol
from ago_search.schedule.scheduler import FirstPassScheduler, TaskPrior, first_pass_round
from ago_search.schedule.tasks import Task
from ago_search.schedule.verify import ReferenceCheck

if TYPE_CHECKING:
    from ago_search.devices import DeviceProfile

__all__ = [
    "SCHEDULERS",
    "SOURCE_UNTUNED",
    "SkipMeasured",
    "TaskResult",
    "TrialBudget",
    "TuningConfig",
    "TuningReport",
    "make_cost_model",
    "task_results",
    "tune_task",
    "tune_tasks",
    "untuned_trace",
]

log = logging.getLogger(__name__)

# MetaSchedule's per-round messages (whole modules in TVMScript) go here, below our own.
_MS_LOG = logging.getLogger("ago_search.metaschedule")

SCHEDULERS = ("first-pass", "gradient", "round-robin")
SEARCHES = ("evolutionary", "replay")
SOURCE_UNTUNED = "untuned"
# MetaSchedule's default round size (`num_trials_per_iter` of tune_tasks / tune_relax), used
# with its own schedulers so that they are compared as a user gets them.
METASCHEDULE_ROUND = 64


@dataclass(frozen=True)
class TuningConfig:
    """How to tune.

    trials: search trials the tasks should have on the device in all, the database's
        included (see the module docstring).
    scheduler: "first-pass" (ours), "gradient" or "round-robin" (MetaSchedule's).
    trials_per_round: candidates measured per round; None: for "first-pass", one round per
        untried task in `first_pass_fraction` of the remaining budget, at most
        `max_round_trials`; for MetaSchedule's schedulers its default, 64.
    cost_model: "xgb" (MetaSchedule's XGBoost model, its training step fixed: schedule/xgb.py),
        "xgb-ms" (as MetaSchedule ships it), "gnn", "random", or a MetaSchedule CostModel.
    population_size: of the evolutionary search (TVM_NOTES.md: 128 on 2 cores).
    search: "evolutionary" (MetaSchedule's EvolutionarySearch, ranked by the cost model) or
        "replay" (ReplayTrace: plain random samples of the design space, no cost model; what
        trace collection wants for unbiased samples, at a fraction of the search's CPU).
    verify: check every candidate's outputs against the untuned task (wrong -> wrong_result).
    measure_untuned: measure each task's untuned kernel once (the empty trace).
    seed: the search's random seed (None: random).
    warm_start_records: per task, best records of the database the cost model is trained on
        before the search (a resumed run's model starts from what was measured).
    """

    trials: int
    scheduler: str = "first-pass"
    trials_per_round: int | None = None
    first_pass_fraction: float = 0.5
    max_round_trials: int = 16
    cost_model: Any = "xgb"
    population_size: int = 128
    search: str = "evolutionary"
    verify: bool = True
    measure_untuned: bool = True
    seed: int | None = None
    protocol: MeasureProtocol | None = None  # None: measure.TUNING_PROTOCOL
    build_timeout_s: float | None = None  # None: the builder's default
    run_timeout_s: float | None = None  # None: the runner's default
    max_empty_rounds: int = 3
    warm_start_records: int = 64

    def __post_init__(self) -> None:
        if self.trials < 0:
            raise AgoSearchError(f"the number of trials must be >= 0, got {self.trials}")
        if self.scheduler not in SCHEDULERS:
            raise AgoSearchError(
                f"unknown task scheduler {self.scheduler!r}: choose one of {', '.join(SCHEDULERS)}"
            )
        if self.trials_per_round is not None and self.trials_per_round < 1:
            raise AgoSearchError(f"trials per round must be >= 1, got {self.trials_per_round}")
        if self.search not in SEARCHES:
            raise AgoSearchError(
                f"unknown search {self.search!r}: choose one of {', '.join(SEARCHES)}"
            )
        if not 0 < self.first_pass_fraction <= 1:
            raise AgoSearchError("first_pass_fraction must be in (0, 1]")


@dataclass(frozen=True)
class TaskResult:
    """One task after tuning, from the database (all runs) and this run's checks.

    trials: search trials on the device (any outcome; the untuned measurement excluded);
    new_trials: of them, measured by this run. best_seconds: the fastest ok record (which may
    be the untuned kernel), untuned_seconds: the untuned kernel's. statuses: search trials
    per status. wrong_max_abs_err: the largest error among this run's wrong results.
    """

    key: str
    name: str
    weight: int
    flops: float
    trials: int
    new_trials: int
    best_seconds: float | None
    untuned_seconds: float | None
    best_source: str | None
    statuses: dict[str, int] = field(default_factory=dict)
    wrong_max_abs_err: float | None = None

    def to_json(self) -> dict:
        return {
            "key": self.key,
            "name": self.name,
            "weight": self.weight,
            "flops": self.flops,
            "trials": self.trials,
            "new_trials": self.new_trials,
            "best_seconds": self.best_seconds,
            "untuned_seconds": self.untuned_seconds,
            "best_source": self.best_source,
            "statuses": dict(self.statuses),
            "wrong_max_abs_err": self.wrong_max_abs_err,
        }


@dataclass(frozen=True)
class TuningReport:
    """A tuning run: what it was asked, what it measured, and every task afterwards."""

    device_key: str
    database: str
    scheduler: str
    cost_model: str
    trials_per_round: int
    budget: int
    trials_before: int
    trials_run: int
    wall_s: float
    tasks: tuple[TaskResult, ...]

    @property
    def tuned_tasks(self) -> int:
        """Tasks with at least one search trial."""
        return sum(1 for t in self.tasks if t.trials > 0)

    @property
    def kernel_seconds(self) -> float | None:
        """Sum of weight x best latency over the tasks: the kernels' share of the model's
        latency (None if a task has no working schedule at all)."""
        if any(t.best_seconds is None for t in self.tasks):
            return None
        return sum(t.weight * (t.best_seconds or 0.0) for t in self.tasks)

    @property
    def untuned_kernel_seconds(self) -> float | None:
        if any(t.untuned_seconds is None for t in self.tasks):
            return None
        return sum(t.weight * (t.untuned_seconds or 0.0) for t in self.tasks)

    def to_json(self) -> dict:
        return {
            "device_key": self.device_key,
            "database": self.database,
            "scheduler": self.scheduler,
            "cost_model": self.cost_model,
            "trials_per_round": self.trials_per_round,
            "budget": self.budget,
            "trials_before": self.trials_before,
            "trials_run": self.trials_run,
            "wall_s": self.wall_s,
            "tuned_tasks": self.tuned_tasks,
            "kernel_seconds": self.kernel_seconds,
            "untuned_kernel_seconds": self.untuned_kernel_seconds,
            "tasks": [t.to_json() for t in self.tasks],
        }


# ---------------------------------------------------------------------------------------------
# the search, minus what the database has measured


@dataclass
class TrialBudget:
    """Trials left to the whole run, shared by the tasks' searches: MetaSchedule's loop stops
    starting rounds at its budget but lets the last round run over it (a round of 64 started
    at 129 of 130 measures 64); the searches cut that round to what is left."""

    remaining: int


@derived_object
class SkipMeasured(PySearchStrategy):
    """A search strategy that never proposes a schedule the database measured for the task.

    inner: the search (EvolutionarySearch). on_round: called with the task key before each
    round goes out (the output check learns which task it is checking). budget: trials left
    to the run, shared by all tasks' searches (None: no limit here). Candidates of this run
    are remembered too, so a search that proposes one twice does not measure it twice.
    """

    def __init__(
        self,
        inner: ms.search_strategy.SearchStrategy,
        store: TuningDatabase,
        device_key: str,
        task_key: str,
        on_round: Callable[[str], None] | None = None,
        max_empty_rounds: int = 3,
        budget: TrialBudget | None = None,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.store = store
        self.device_key = device_key
        self.task_key = task_key
        self.on_round = on_round
        self.max_empty_rounds = max_empty_rounds
        self.budget = budget
        self.known: set[str] = set()
        self.skipped = 0
        self._empty_rounds = 0

    def _initialize_with_tune_context(self, context: ms.TuneContext) -> None:
        self.inner._initialize_with_tune_context(context)

    def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database, cost_model):
        self.known = set(self.store.measured(self.task_key, self.device_key))
        self._empty_rounds = 0
        self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)

    def post_tuning(self) -> None:
        self.inner.post_tuning()

    def generate_measure_candidates(self) -> list[Any] | None:
        while True:
            if self.budget is not None and self.budget.remaining <= 0:
                return None
            candidates = self.inner.generate_measure_candidates()
            if candidates is None:
                return None
            fresh = []
            for candidate in candidates:
                digest = trace_hash(candidate.sch.trace)
                if digest in self.known:
                    self.skipped += 1
                    continue
                self.known.add(digest)
                fresh.append(candidate)
            if fresh:
                if self.budget is not None:
                    fresh = fresh[: self.budget.remaining]
                    self.budget.remaining -= len(fresh)
                self._empty_rounds = 0
                if self.on_round is not None:
                    self.on_round(self.task_key)
                return fresh
            self._empty_rounds += 1
            log.debug("task %s: a round of known schedules only", self.task_key)
            if self._empty_rounds >= self.max_empty_rounds:
                log.info("task %s: the search proposes only measured schedules", self.task_key)
                return None

    def notify_runner_results(self, measure_candidates, results) -> None:
        self.inner.notify_runner_results(measure_candidates, results)

    def clone(self) -> SkipMeasured:
        return SkipMeasured(
            self.inner.clone(),
            self.store,
            self.device_key,
            self.task_key,
            self.on_round,
            self.max_empty_rounds,
            self.budget,
        )


# ---------------------------------------------------------------------------------------------
# pieces


def make_cost_model(cost_model: Any, seed: int | None = None) -> tuple[Any, str]:
    """A MetaSchedule cost model and its name: "xgb" (MetaSchedule's XGBModel with its
    training step fixed for many-store candidates, ago_search/schedule/xgb.py), "xgb-ms" (it as
    MetaSchedule ships it), "random", "gnn" (the shipped pretrained
    GNN of cost_model/), or a CostModel as it is."""
    if isinstance(cost_model, ms.cost_model.CostModel):
        return cost_model, type(cost_model).__name__
    from ago_search.devices import host_num_cores

    if cost_model == "gnn":
        # The learned model is a plug-in above this layer: imported only when asked for.
        from cost_model.ms_adapter import make_cost_model as make_learned

        return make_learned("gnn"), "gnn"
    if cost_model in ("xgb", "xgb-ms"):
        from ago_search.schedule.xgb import xgb_model_class

        return xgb_model_class(cost_model)(num_tuning_cores=host_num_cores()), cost_model
    if cost_model == "random":
        return ms.cost_model.RandomModel(seed=seed), "random"
    raise AgoSearchError(
        f"unknown cost model {cost_model!r}: choose gnn, xgb, xgb-ms or random (or pass a MetaSchedule "
        "CostModel)"
    )


def untuned_trace(task: Task) -> Any:
    """The trace of the task's unscheduled PrimFunc (no instructions): its untuned kernel."""
    return tvm.s_tir.Schedule(task.mod).trace


def _make_builder_runner(
    device: DeviceProfile, config: TuningConfig, check: ReferenceCheck | None, artifacts: Path
) -> tuple[Any, Any]:
    from ago_search.measure.builders import LocalBuilder
    from ago_search.measure.runners import TUNING_PROTOCOL, RPCRunner, SubprocessRunner

    build_kwargs: dict[str, Any] = {"artifact_dir": artifacts}
    if config.build_timeout_s is not None:
        build_kwargs["timeout_sec"] = config.build_timeout_s
    run_kwargs: dict[str, Any] = {"protocol": config.protocol or TUNING_PROTOCOL}
    if config.run_timeout_s is not None:
        run_kwargs["timeout_sec"] = config.run_timeout_s
    builder = LocalBuilder.for_device(device, **build_kwargs)
    if device.is_local:
        runner = SubprocessRunner(device, output_hook=check, **run_kwargs)
    else:
        runner = RPCRunner(device, output_hook=check, **run_kwargs)
    return builder, runner


def _measure_untuned(
    tasks: Sequence[Task],
    store: TuningDatabase,
    device_key: str,
    builder: Any,
    runner: Any,
    check: ReferenceCheck | None,
) -> int:
    """Measure the untuned kernel of every task that lacks it; how many were measured."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    trace_of = {task.key: untuned_trace(task) for task in tasks}
    missing = [
        task
        for task in tasks
        if not store.has_measured(task.key, device_key, trace_hash(trace_of[task.key]))
    ]
    if not missing:
        return 0
    started = time.perf_counter()  # built side by side, measured one at a time
    built_all = builder.build([BuilderInput(t.mod, t.target_object()) for t in missing])
    build_s = (time.perf_counter() - started) / len(missing)
    for task, built in zip(missing, built_all, strict=True):
        outcome: dict[str, Any]
        if built.error_msg:
            outcome = {"status": Status.BUILD_ERROR, "error": built.error_msg}
        else:
            if check is not None:
                check.select(task.key)
            args = ArgInfo.from_entry_func(task.mod, remove_preproc=True)
            kind = task.target_object().kind.name
            (future,) = runner.run([RunnerInput(built.artifact_path, kind, args)])
            ran = future.result()
            shutil.rmtree(Path(built.artifact_path).parent, ignore_errors=True)
            if ran.error_msg:
                outcome = {"status": _failure_status(ran.error_msg), "error": ran.error_msg}
            else:
                outcome = {"latencies": tuple(float(s) for s in ran.run_secs)}
        store.commit_record(
            Record(
                task_key=task.key,
                device_key=device_key,
                target=task.target,
                trace_json=trace_of[task.key],
                build_seconds=build_s,
                extra={"source": SOURCE_UNTUNED},
                **outcome,
            )
        )
    return len(missing)


def _failure_status(error: str) -> Status:
    if error.startswith("wrong result:"):  # the runners' prefix for an output hook's complaint
        return Status.WRONG_RESULT
    return Status.TIMEOUT if "timeout" in error.lower() else Status.RUN_ERROR


def _search_records(store: TuningDatabase, task_key: str, device_key: str) -> list[Record]:
    return [
        r for r in store.records(task_key, device_key) if r.extra.get("source") != SOURCE_UNTUNED
    ]


def _prior(store: TuningDatabase, task: Task, device_key: str) -> TaskPrior:
    best = store.best(task.key, device_key)
    return TaskPrior(
        trials=len(_search_records(store, task.key, device_key)),
        best_seconds=best[0].median if best else None,
    )


def task_results(
    store: TuningDatabase,
    tasks: Sequence[Task],
    device_key: str,
    before: Sequence[int] | None = None,
    check: ReferenceCheck | None = None,
) -> tuple[TaskResult, ...]:
    """Every task's state in the database (see `TaskResult`); `before`: trials per task
    before this run, `check`: this run's output checks."""
    worst: dict[str, float] = {}
    if check is not None:
        for outcome in check.outcomes:
            if not outcome.ok and outcome.worst is not None:
                error = outcome.worst.max_abs_err
                worst[outcome.task_key] = max(worst.get(outcome.task_key, 0.0), error)
    results = []
    for index, task in enumerate(tasks):
        search = _search_records(store, task.key, device_key)
        statuses: dict[str, int] = {}
        for record in search:
            statuses[str(record.status)] = statuses.get(str(record.status), 0) + 1
        best = store.best(task.key, device_key)
        untuned = [
            r
            for r in store.records(task.key, device_key, status=Status.OK)
            if r.extra.get("source") == SOURCE_UNTUNED
        ]
        results.append(
            TaskResult(
                key=task.key,
                name=task.name,
                weight=task.weight,
                flops=task.flops,
                trials=len(search),
                new_trials=len(search) - (before[index] if before is not None else 0),
                best_seconds=best[0].median if best else None,
                untuned_seconds=untuned[0].median if untuned else None,
                best_source=best[0].extra.get("source") if best else None,
                statuses=statuses,
                wrong_max_abs_err=worst.get(task.key),
            )
        )
    return tuple(results)


def _check_targets(tasks: Sequence[Task], device: DeviceProfile) -> None:
    wanted = canonical_target(device.tvm_target())
    for task in tasks:
        if task.target != wanted:
            raise AgoSearchError(
                f"task {task.name} was extracted for target {task.target}, but device "
                f"{device.name!r} compiles for {wanted}: extract the tasks with the device's "
                "target (device.tvm_target())"
            )


def _seed(config: TuningConfig, index: int) -> int:
    if config.seed is None:
        return -1
    return 1 + (config.seed * 7919 + index) % (2**31 - 2)


# ---------------------------------------------------------------------------------------------
# the entry points


def tune_tasks(
    tasks: Sequence[Task],
    device: DeviceProfile,
    database: TuningDatabase | str | Path,
    config: TuningConfig,
    *,
    measure_callbacks: Sequence[Any] = (),
    work_dir: str | Path | None = None,
) -> TuningReport:
    """Tune `tasks` on `device` into `database` until they have `config.trials` trials.

    measure_callbacks: MetaSchedule measure callbacks run after ours (each candidate is in
    the database by then). work_dir: where candidates' libraries go (default: a temporary
    folder). Failures of candidates are records; errors a user can cause raise AgoSearchError.
    """
    from ago_search.devices import host_num_cores
    from ago_search.measure.intrinsics import register_cpu_tensor_intrinsics

    started = time.perf_counter()
    tasks = list(tasks)
    if not tasks:
        raise AgoSearchError("no tasks to tune: the plan has no kernels")
    if len({t.key for t in tasks}) != len(tasks):
        raise AgoSearchError("the same task is given twice: give each task once (see weight)")
    _check_targets(tasks, device)
    store = database if isinstance(database, TuningDatabase) else TuningDatabase(database)
    target = tasks[0].target_object()
    register_cpu_tensor_intrinsics(target)
    for task in tasks:
        store.commit_task(task.key, task.target, task.mod, name=task.name)

    check: ReferenceCheck | None = None
    if config.verify:
        check = ReferenceCheck()
        for task in tasks:
            check.add(task.key, task.mod)

    scratch = Path(tempfile.mkdtemp(prefix="ago-tune-", dir=work_dir))
    builder, runner = _make_builder_runner(device, config, check, scratch / "artifacts")
    round_trials = config.trials_per_round or 0
    cost_model_name = str(config.cost_model) if isinstance(config.cost_model, str) else ""
    priors: list[TaskPrior] = []
    try:
        if config.measure_untuned:
            count = _measure_untuned(tasks, store, device.key, builder, runner, check)
            log.info("measured the untuned kernels of %d tasks", count)
        priors = [_prior(store, task, device.key) for task in tasks]
        remaining = config.trials - sum(p.trials for p in priors)
        if not round_trials:
            if config.scheduler == "first-pass":
                untried = sum(1 for p in priors if p.trials == 0) or len(tasks)
                round_trials = first_pass_round(
                    remaining, untried, config.first_pass_fraction, config.max_round_trials
                )
            else:
                round_trials = METASCHEDULE_ROUND
        if remaining > 0:
            cost_model, cost_model_name = make_cost_model(config.cost_model, config.seed)
            log.info(
                "tuning %d tasks on %s: %d trials to go (%d in the database), rounds of %d",
                len(tasks),
                device.key,
                remaining,
                sum(p.trials for p in priors),
                round_trials,
            )
            _run_metaschedule(
                tasks,
                store,
                device.key,
                config,
                priors,
                remaining,
                round_trials,
                builder,
                runner,
                cost_model,
                check,
                measure_callbacks,
                scratch,
                host_num_cores(),
            )
    finally:
        builder.close()
        runner.close()
        shutil.rmtree(scratch, ignore_errors=True)

    before = [p.trials for p in priors] if priors else None
    results = task_results(store, tasks, device.key, before, check)
    trials_before = sum(before) if before else 0
    return TuningReport(
        device_key=device.key,
        database=str(store.path),
        scheduler=config.scheduler,
        cost_model=cost_model_name,
        trials_per_round=round_trials,
        budget=config.trials,
        trials_before=trials_before,
        trials_run=sum(r.trials for r in results) - trials_before,
        wall_s=time.perf_counter() - started,
        tasks=results,
    )


def _run_metaschedule(
    tasks: Sequence[Task],
    store: TuningDatabase,
    device_key: str,
    config: TuningConfig,
    priors: Sequence[TaskPrior],
    remaining: int,
    round_trials: int,
    builder: Any,
    runner: Any,
    cost_model: Any,
    check: ReferenceCheck | None,
    measure_callbacks: Sequence[Any],
    scratch: Path,
    num_threads: int,
) -> None:
    on_round = check.select if check is not None else None
    budget = TrialBudget(remaining)
    tasks, priors = _schedulable(tasks, priors, config, num_threads)
    if not tasks:
        return
    searches = [
        SkipMeasured(
            _search_strategy(config),
            store,
            device_key,
            task.key,
            on_round=on_round,
            max_empty_rounds=config.max_empty_rounds,
            budget=budget,
        )
        for task in tasks
    ]
    contexts = [
        ms.TuneContext(
            mod=task.mod,
            target=task.target_object(),
            space_generator="post-order-apply",
            search_strategy=search,
            task_name=task.name,
            rand_state=_seed(config, index),
            num_threads=num_threads,
            logger=_MS_LOG,
        )
        for index, (task, search) in enumerate(zip(tasks, searches, strict=True))
    ]
    if config.warm_start_records > 0:
        _warm_start(cost_model, contexts, tasks, store, device_key, config.warm_start_records)
    if config.scheduler == "first-pass":
        scheduler: Any = FirstPassScheduler(priors, round_trials=round_trials)
    elif config.scheduler == "gradient":
        scheduler = ms.task_scheduler.GradientBased(seed=config.seed if config.seed else -1)
    else:
        scheduler = ms.task_scheduler.RoundRobin()
    db = store.metaschedule(device_key, tasks[0].target)
    callbacks = [
        db.measure_callback(),  # first: the record with its reason before anything else
        ms.measure_callback.RemoveBuildArtifact(),
        ms.measure_callback.UpdateCostModel(),
        *measure_callbacks,
    ]
    ms.tune.tune_tasks(
        tasks=contexts,
        task_weights=[float(task.weight) for task in tasks],
        work_dir=str(scratch),
        max_trials_global=remaining,
        max_trials_per_task=remaining,
        num_trials_per_iter=round_trials,
        builder=builder,
        runner=runner,
        database=db,
        cost_model=cost_model,
        measure_callbacks=callbacks,
        task_scheduler=scheduler,
    )
    skipped = sum(search.skipped for search in searches)
    if skipped:
        log.info("skipped %d candidates measured before", skipped)


def _search_strategy(config: TuningConfig) -> Any:
    if config.search == "replay":
        return ms.search_strategy.ReplayTrace()
    return ms.search_strategy.EvolutionarySearch(population_size=config.population_size)


def _schedulable(
    tasks: Sequence[Task], priors: Sequence[TaskPrior], config: TuningConfig, num_threads: int
) -> tuple[list[Task], list[TaskPrior]]:
    """The tasks whose design space MetaSchedule can generate, with their priors.

    Some schedule rules raise a ScheduleError on some fused groups (seen: reverse-compute-at on
    an add + layer_norm group of bert_tiny); inside ms.tune_tasks that ends the whole run. The
    space is generated here first, with the same seed the real context gets, and a task that
    fails is left out with a warning: a failure of one task, not of the run.
    """
    kept_tasks, kept_priors = [], []
    for index, (task, prior) in enumerate(zip(tasks, priors, strict=True)):
        context = ms.TuneContext(
            mod=task.mod,
            target=task.target_object(),
            space_generator="post-order-apply",
            task_name=task.name,
            rand_state=_seed(config, index),
            num_threads=num_threads,
            logger=_MS_LOG,
        )
        try:
            context.generate_design_space()
        except Exception as exc:  # a TVM ScheduleError/TVMError from a schedule rule
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            log.warning(
                "task %s left untuned: MetaSchedule cannot generate its design space (%s)",
                task.name,
                first,
            )
            continue
        kept_tasks.append(task)
        kept_priors.append(prior)
    return kept_tasks, kept_priors


def _warm_start(
    cost_model: Any,
    contexts: Sequence[ms.TuneContext],
    tasks: Sequence[Task],
    store: TuningDatabase,
    device_key: str,
    per_task: int,
) -> None:
    """Train the cost model on the database's best records before the search starts.

    MetaSchedule trains its model only on what a run measures, so a resumed run would search
    its first rounds with an untrained model; this gives it up to `per_task` best ok records
    of each task (their traces replayed on the task's module) first.
    """
    if isinstance(cost_model, ms.cost_model.RandomModel):
        return
    db = store.metaschedule(device_key, tasks[0].target)
    used = 0
    for context, task in zip(contexts, tasks, strict=True):
        try:
            records = db.get_top_k(db.commit_workload(task.mod), per_task)
            candidates, results = [], []
            for record in records:
                sch = tvm.s_tir.Schedule(task.mod)
                record.trace.apply_to_schedule(sch, remove_postproc=False)
                args = ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)
                candidates.append(ms.MeasureCandidate(sch, args))
                results.append(ms.runner.RunnerResult(list(record.run_secs), None))
            if candidates:
                cost_model.update(context, candidates, results)
                used += len(candidates)
        except Exception as err:  # noqa: BLE001 - a head start, never a reason to stop
            log.warning("task %s: cost model not warmed up from the database: %s", task.name, err)
    if used:
        log.info("cost model trained on %d records from the database", used)


def tune_task(
    task: Task,
    device: DeviceProfile,
    database: TuningDatabase | str | Path,
    config: TuningConfig,
    **kwargs: Any,
) -> TaskResult:
    """Tune one task (`tune_tasks` with one task); its result."""
    return tune_tasks([task], device, database, config, **kwargs).tasks[0]
