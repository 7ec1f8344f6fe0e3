"""Tuning tasks with MetaSchedule's evolutionary search, our builders, runners and database.

`tune_tasks(tasks, device, database, config, cost_model=...)` tunes a plan's tasks (or one)
on a device and returns a `TuningReport` (`results`). It is MetaSchedule's own loop,
`ms.tune.tune_tasks`, given:

- one `ms.TuneContext` per task (post-order-apply design space, `EvolutionarySearch` with a
  population of 64 and 2 genetic iterations: `TuningConfig`),
  wrapped in `strategy.SkipMeasured` (no schedule the database holds is measured again);
- our `LocalBuilder` and `SubprocessRunner` / `RPCRunner` (subprocesses with time-outs), the
  runner checking every candidate's outputs against the untuned task (`verify.ReferenceCheck`);
- the tuning database as its `Database` (`SqliteDatabase`, one device), with
  `CommitMeasurements` as the first measure callback so every candidate, failures and wrong
  results included, is a record with its status (the builder's or runner's word) and error
  message, committed before the next one is measured;
- the cost model it is handed, trained first on the database's best records (warm start);
- a task scheduler: ours (`scheduler.FirstPassScheduler`, every task one cheap round first)
  or MetaSchedule's own ("gradient", "round-robin"), for comparison.

Budget. `TuningConfig.trials` is the number of search trials the tasks should have on the
device in all, the database's included: a run that was killed, started again with the same
arguments, measures only what is missing, and a finished one measures nothing. Each task's
untuned kernel is measured once too (the empty trace, source `results.SOURCE_UNTUNED`): the
per-task baseline, and the best record where no schedule beats it.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tvm
from tvm.s_tir import meta_schedule as ms

from ago_search.database import Record, Status, TuningDatabase, canonical_target, trace_hash
from ago_search.database.metaschedule import SqliteDatabase
from ago_search.errors import AgoSearchError
from ago_search.layout import vector_lanes
from ago_search.schedule.config import METASCHEDULE_ROUND, TuningConfig
from ago_search.schedule.probe import TaskProbe
from ago_search.schedule.results import (
    SOURCE_UNTUNED,
    TaskResult,
    TuningReport,
    search_records,
    task_results,
)
from ago_search.schedule.rules import space_generator
from ago_search.schedule.scheduler import FirstPassScheduler, TaskPrior, first_pass_round
from ago_search.schedule.strategy import (
    RoundPace,
    SkipMeasured,
    TrialBudget,
    make_search_strategy,
)
from ago_search.schedule.tasks import Task
from ago_search.schedule.transfer import DonorPool
from ago_search.schedule.verify import ReferenceCheck

if TYPE_CHECKING:
    from ago_search.devices import DeviceProfile

__all__ = ["TuningSession", "tune_task", "tune_tasks", "untuned_trace"]

log = logging.getLogger(__name__)

# MetaSchedule's per-round messages (whole modules in TVMScript) go here, below our own: at
# WARNING unless a caller sets this logger's level (`ago-search -v` would print every module).
_MS_LOG = logging.getLogger("ago_search.metaschedule")
if _MS_LOG.level == logging.NOTSET:
    _MS_LOG.setLevel(logging.WARNING)


# ---------------------------------------------------------------------------------------------
# pieces


def untuned_trace(task: Task) -> Any:
    """The trace of the task's unscheduled PrimFunc (no instructions): its untuned kernel."""
    return tvm.s_tir.Schedule(task.mod).trace


def _make_builder_runner(
    device: DeviceProfile, config: TuningConfig, check: ReferenceCheck | None, artifacts: Path
) -> tuple[Any, Any]:
    from ago_search.measure import TUNING_PROTOCOL, RPCRunner, SubprocessRunner
    from ago_search.measure.builders import LocalBuilder

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
    """Measure the untuned kernel of every task that lacks it; how many were measured.

    builder, runner: ours (`ago_search.measure`): the builder says why a build failed
    (`status_of`), the runner's `measure_input` gives a `Measurement` with its status."""
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
            status = builder.status_of(built) or Status.BUILD_ERROR
            outcome = {"status": status, "error": built.error_msg}
        else:
            if check is not None:
                check.select(task.key)
            args = ArgInfo.from_entry_func(task.mod, remove_preproc=True)
            kind = task.target_object().kind.name
            ran = runner.measure_input(RunnerInput(built.artifact_path, kind, args))
            shutil.rmtree(Path(built.artifact_path).parent, ignore_errors=True)
            if ran.ok:
                outcome = {"latencies": tuple(ran.run_secs or ())}
            else:
                outcome = {"status": ran.status, "error": ran.error}
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


def _prior(store: TuningDatabase, task: Task, device_key: str) -> TaskPrior:
    best = store.best(task.key, device_key)
    return TaskPrior(
        trials=len(search_records(store, task.key, device_key)),
        best_seconds=best[0].median if best else None,
    )


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


class TuningSession:
    """One device's builder, runner and output checks, kept across several tuning calls.

    Starting them costs seconds (worker processes import TVM; each task's reference outputs
    are computed by its untuned kernel), so a caller that tunes in slices (the search tunes
    the leading plan for a minute, looks at the plans, tunes again) keeps one session and
    pays that once; so are the design-space checks and the warm start of each task.
    `tune_tasks` is one session used once. Builder and runner settings (`verify`, `protocol`,
    time-outs) are the session's `config`'s.
    """

    def __init__(
        self,
        device: DeviceProfile,
        database: TuningDatabase | str | Path,
        config: TuningConfig,
        work_dir: str | Path | None = None,
    ) -> None:
        self.device = device
        self.config = config
        self.store = database if isinstance(database, TuningDatabase) else TuningDatabase(database)
        self.check = ReferenceCheck() if config.verify else None
        self._checked: set[str] = set()
        self._scratch = Path(tempfile.mkdtemp(prefix="ago-tune-", dir=work_dir))
        self.builder, self.runner = _make_builder_runner(
            device, config, self.check, self._scratch / "artifacts"
        )
        self._schedulable: dict[str, bool] = {}
        self._rules: dict[str, str] = {}  # task key -> the rule set its design space uses
        self._probe: TaskProbe | None = None
        self.left_out: dict[str, str] = {}  # task key -> why it cannot be tuned
        self._warmed: set[tuple[int, str]] = set()  # (id of the cost model, task key)
        # kept across runs: what each task was given
        self.transfer = DonorPool(
            self.store,
            device.key,
            lanes=vector_lanes(device.tvm_target()) if config.vector_seeds else 0,
            jobs=2 * device.threads,
        )
        self.pace = RoundPace()  # what a round costs here, learnt across the tuning runs

    def __enter__(self) -> TuningSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.builder.close()
        self.runner.close()
        if self._probe is not None:
            self._probe.close()
        shutil.rmtree(self._scratch, ignore_errors=True)

    def measure_untuned(self, tasks: Sequence[Task]) -> int:
        """Measure the untuned kernel of each task that lacks it; how many were measured. The
        kernel a task that cannot be tuned keeps (the search scores plans with it); safe
        between two rounds of a run (the runner has nothing in flight then)."""
        for task in tasks:
            self.store.commit_task(task.key, task.target, task.mod, name=task.name)
            if self.check is not None and task.key not in self._checked:
                self.check.add(task.key, task.mod)
                self._checked.add(task.key)
        return _measure_untuned(
            list(tasks), self.store, self.device.key, self.builder, self.runner, self.check
        )

    def tune(
        self,
        tasks: Sequence[Task],
        config: TuningConfig,
        *,
        cost_model: Any,
        measure_callbacks: Sequence[Any] = (),
        deadline: float | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> TuningReport:
        """`tune_tasks` with this session's builder, runner and checks. `stop` is asked before
        each round; once it says True no round starts (the one running finishes)."""
        from ago_search.devices import host_num_cores
        from ago_search.measure.intrinsics import register_cpu_tensor_intrinsics

        started = time.perf_counter()
        tasks = list(tasks)
        if not tasks:
            raise AgoSearchError("no tasks to tune: the plan has no kernels")
        if len({t.key for t in tasks}) != len(tasks):
            raise AgoSearchError("the same task is given twice: give each task once (see weight)")
        device, store, check = self.device, self.store, self.check
        _check_targets(tasks, device)
        register_cpu_tensor_intrinsics(tasks[0].target_object())
        for task in tasks:
            store.commit_task(task.key, task.target, task.mod, name=task.name)
            if check is not None and task.key not in self._checked:
                check.add(task.key, task.mod)
                self._checked.add(task.key)
        round_trials = config.trials_per_round or 0
        cost_model_name = getattr(cost_model, "label", None) or type(cost_model).__name__
        if config.measure_untuned:
            count = _measure_untuned(tasks, store, device.key, self.builder, self.runner, check)
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
        if remaining > 0 and (deadline is None or time.monotonic() < deadline):
            log.info(
                "tuning %d tasks on %s: %d trials to go (%d in the database), rounds of %d",
                len(tasks),
                device.key,
                remaining,
                sum(p.trials for p in priors),
                round_trials,
            )
            self._run_metaschedule(
                tasks,
                config,
                priors,
                remaining,
                round_trials,
                cost_model,
                measure_callbacks,
                host_num_cores(),
                deadline,
                stop,
            )
        before = [p.trials for p in priors]
        results = task_results(store, tasks, device.key, before, check)
        trials_before = sum(before)
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
        self,
        tasks: Sequence[Task],
        config: TuningConfig,
        priors: Sequence[TaskPrior],
        remaining: int,
        round_trials: int,
        cost_model: Any,
        measure_callbacks: Sequence[Any],
        num_threads: int,
        deadline: float | None,
        stop: Callable[[], bool] | None,
    ) -> None:
        store, device_key, check = self.store, self.device.key, self.check
        on_round = check.select if check is not None else None
        budget = TrialBudget(remaining, deadline, stop, pace=self.pace)
        kept, priors = self._keep_schedulable(tasks, priors, config, num_threads)
        left_out = [task for task in tasks if task.key in self.left_out]
        if left_out and not config.measure_untuned:
            # what such a task runs in the model is its untuned kernel: known once measured
            self.measure_untuned(left_out)
        tasks = kept
        if not tasks:
            return
        searches = [
            SkipMeasured(
                make_search_strategy(config),
                store,
                device_key,
                task.key,
                on_round=on_round,
                max_empty_rounds=config.max_empty_rounds,
                budget=budget,
                transfer=(
                    self.transfer if config.transfer and config.search == "evolutionary" else None
                ),
            )
            for task in tasks
        ]
        contexts = [
            ms.TuneContext(
                mod=task.mod,
                target=task.target_object(),
                space_generator=space_generator(self._rules.get(task.key, "default")),
                search_strategy=search,
                task_name=task.name,
                rand_state=_seed(config, index),
                num_threads=num_threads,
                logger=_MS_LOG,
            )
            for index, (task, search) in enumerate(zip(tasks, searches, strict=True))
        ]
        if config.warm_start_records > 0:
            cold = [
                (context, task)
                for context, task in zip(contexts, tasks, strict=True)
                if (id(cost_model), task.key) not in self._warmed
            ]
            if cold:
                _warm_start(
                    cost_model,
                    [c for c, _ in cold],
                    [t for _, t in cold],
                    store,
                    device_key,
                    config.warm_start_records,
                )
                self._warmed.update((id(cost_model), t.key) for _, t in cold)
        if config.scheduler == "first-pass":
            scheduler: Any = FirstPassScheduler(priors, round_trials=round_trials)
        elif config.scheduler == "gradient":
            scheduler = ms.task_scheduler.GradientBased(seed=config.seed if config.seed else -1)
        else:
            scheduler = ms.task_scheduler.RoundRobin()
        db = SqliteDatabase(store, device_key, tasks[0].target)
        callbacks = [
            # first: the record with its status, the builder's or runner's word, before the rest
            db.measure_callback(self.builder, self.runner),
            ms.measure_callback.RemoveBuildArtifact(),
            ms.measure_callback.UpdateCostModel(),
            *measure_callbacks,
        ]
        ms.tune.tune_tasks(
            tasks=contexts,
            task_weights=[float(task.weight) for task in tasks],
            work_dir=str(self._scratch),
            max_trials_global=remaining,
            max_trials_per_task=remaining,
            num_trials_per_iter=round_trials,
            builder=self.builder,
            runner=self.runner,
            database=db,
            cost_model=cost_model,
            measure_callbacks=callbacks,
            task_scheduler=scheduler,
        )
        skipped = sum(search.skipped for search in searches)
        if skipped:
            log.info("skipped %d candidates measured before", skipped)

    def _keep_schedulable(
        self,
        tasks: Sequence[Task],
        priors: Sequence[TaskPrior],
        config: TuningConfig,
        num_threads: int,
    ) -> tuple[list[Task], list[TaskPrior]]:
        """The tasks whose design space can be generated and sampled within the limits
        (`schedule.probe`), each task probed once per session. Some schedule rules raise a
        ScheduleError on some fused groups (seen: reverse-compute-at on an add + layer_norm
        group of bert_tiny), which inside ms.tune_tasks would end the whole run, and some
        groups' spaces outgrow the memory: such a task is left out with a warning (and in
        `self.left_out` with the reason), a failure of one task, not of the run."""
        unknown = [task for task in tasks if task.key not in self._schedulable]
        if unknown:
            if self._probe is None:
                self._probe = TaskProbe(
                    config.task_memory_limit, config.task_probe_timeout_s, seed=config.seed or 0
                )
            for task in unknown:
                result = self._probe.probe(task.mod, task.target, num_threads)
                self._schedulable[task.key] = result.ok
                if result.rules is not None:
                    self._rules[task.key] = result.rules
                    if result.rules != "default":
                        log.info(
                            "task %s: MetaSchedule's default rules fail on it; tuned with the "
                            "rule set %s",
                            task.name,
                            result.rules,
                        )
                if not result.ok:
                    self.left_out[task.key] = result.reason
                    log.warning("task %s left untuned: %s", task.name, result.reason)
        pairs = [(t, p) for t, p in zip(tasks, priors, strict=True) if self._schedulable[t.key]]
        return [t for t, _ in pairs], [p for _, p in pairs]


def tune_tasks(
    tasks: Sequence[Task],
    device: DeviceProfile,
    database: TuningDatabase | str | Path,
    config: TuningConfig,
    *,
    cost_model: Any,
    measure_callbacks: Sequence[Any] = (),
    work_dir: str | Path | None = None,
    deadline: float | None = None,
) -> TuningReport:
    """Tune `tasks` on `device` into `database` until they have `config.trials` trials, or
    until `deadline` (a `time.monotonic()` value) when one is given: no round starts after it.

    cost_model: the MetaSchedule CostModel that ranks candidates (`cost_model.make_cost_model`
    makes one from a `--cost-model` name; tuning never picks one itself). It is trained on the
    database's best records first (`config.warm_start_records`) and on every measurement.

    measure_callbacks: MetaSchedule measure callbacks run after ours (each candidate is in
    the database by then). work_dir: where candidates' libraries go (default: a temporary
    folder). Failures of candidates are records; errors a user can cause raise AgoSearchError.
    A caller that tunes again and again keeps a `TuningSession` instead.
    """
    if not tasks:
        raise AgoSearchError("no tasks to tune: the plan has no kernels")
    with TuningSession(device, database, config, work_dir) as session:
        return session.tune(
            tasks,
            config,
            cost_model=cost_model,
            measure_callbacks=measure_callbacks,
            deadline=deadline,
        )


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
    db = SqliteDatabase(store, device_key, tasks[0].target)
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
