"""A plan's score: its predicted end-to-end latency.

    score = sum over groups of (the group's kernel latency) + calls x launch overhead

A group's kernel latency is its task's (groups with the same PrimFunc share one task):

- tuned (at least `decent_trials` search trials measured on the device, or as many as its
  design space has different schedules when that is fewer): the best measured
  latency, checked against the untuned kernel's outputs like every record;
- otherwise: the cost model's estimate of what tuning reaches (`cost_model.estimate`: a low
  quantile of the GNN's predictions over sampled schedules), calibrated against the tuned
  tasks: shifted by the median of log(measured best) - log(estimate) over them, so estimates
  and measurements share one scale; a task measured a little but not tuned yet counts the
  better of its measurement and its calibrated estimate. A tuned task's best is read back
  along the tuning curve to what it was after `decent_trials` (`search/curve.py`): a
  calibrated estimate stands for a new task's best after its first trials, not for what 150
  trials reached on the leader's tasks.

The projection (`PlanScore.projected`, once the driver gives a horizon): the plan's latency at
the end of the budget, the measurements left shared among its tasks, each moved along the
curve (`search/curve.py`); plans are ranked on it (`PlanScore.ranking`), so a plan whose tasks
are tuned already, or that shares one task among several groups, counts what it saves.

Inside the model a kernel takes longer than alone (timed alone it runs again and again on
data in the caches; MobileNetV2's plans timed 1.4-1.6x their summed kernels): every end-to-end
timing also times each kernel inside the model (the VM's instrument hook), and a task's latency
is scaled by its own in-model / alone ratio, or its layout's median, or the median of all
(`in_model_ratio`; 1 before any timing).

What a plan pays between groups is its kernel launches (`launch_overhead_s` each) and the
layout transforms where groups of different layouts meet (`plan_borders`): each transform is a
task like a group's kernel (the PrimFunc the plan places, `border_module`), estimated, tuned and
measured like the rest. The bytes a group reads and writes are in its kernel's latency already.
A group is a task per layout: the same ops in NHWC are another PrimFunc than in NCHW.

Groups are turned into tasks once (`fuse_groups`: a group's PrimFunc without fusing the rest
of the model), so scoring a plan that differs from scored ones in a group or two costs those
groups only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ago_search.pipeline import PreparedModel
from ago_search.plan import Border, border_module, fuse_groups, plan_borders
from ago_search.schedule.tasks import Task, extract_tasks
from ago_search.search.curve import TuningCurve, allocate
from ago_search.search.laid import LaidPartition, as_laid
from cost_model.estimate import TaskEstimate

__all__ = ["FAILED_TASK", "Calibration", "PlanScore", "PlanScorer"]

log = logging.getLogger(__name__)

FAILED_TASK = "no-kernel-in-this-layout"
# tuned tasks a layout needs for a calibration (and in-model ratio) of its own: 2, what the
# exploration gives each layout (a 10-min ResNet-18 search's exploration, 3 tasks a layout,
# ran out of its 90 s with 2 of each tuned: 16 trials on a ResNet-18 task take ~10 s)
MIN_KIND_TASKS = 2
_FAILED = object()

# TVM's VM calls a kernel in about 1-3 us on these CPUs.
DEFAULT_LAUNCH_OVERHEAD_S = 2e-6


@dataclass(frozen=True)
class PlanScore:
    """seconds: predicted end to end; measured_share: the part of the kernel time that comes
    from tuned tasks' measurements (1.0: nothing estimated); unknown: tasks with neither a
    measurement nor an estimate (the score is a lower bound while there are any); untuned:
    tasks whose latency is not final yet (not tuned to `decent_trials`, nor known untunable
    with their untuned kernel measured). A share is no test of a plan's first pass: the
    estimates of MobileNetV2's last 7 tasks were 10 % of its score, and their untuned kernels
    doubled its end-to-end time (5.1 ms predicted, 10.8 ms measured)."""

    seconds: float
    kernel_seconds: float
    launches: int
    measured_share: float
    unknown: tuple[str, ...] = ()
    untuned: tuple[str, ...] = ()
    projected: float | None = None

    @property
    def ranking(self) -> float:
        """What plans are compared on: the projection to the end of the budget where the
        scorer has a horizon (`PlanScorer.set_horizon`), else the score now."""
        return self.projected if self.projected is not None else self.seconds

    @property
    def final(self) -> bool:
        """Every task's latency is a measurement of what the plan will run."""
        return not self.unknown and not self.untuned

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "kernel_seconds": self.kernel_seconds,
            "launches": self.launches,
            "measured_share": self.measured_share,
            "unknown": list(self.unknown),
            "untuned": list(self.untuned),
            "projected": self.projected,
        }


@dataclass(frozen=True)
class Calibration:
    """log(measured best) ~ estimate + offset, fitted on `tasks` tuned tasks."""

    offset: float = 0.0
    tasks: int = 0

    def apply(self, log_seconds: float) -> float:
        return math.exp(log_seconds + self.offset)


@dataclass
class _Measured:
    best_seconds: float | None
    trials: int


class PlanScorer:
    """Scores partitions of one prepared model (see the module docstring)."""

    def __init__(
        self,
        prepared: PreparedModel,
        decent_trials: int = 8,
        launch_overhead_s: float = DEFAULT_LAUNCH_OVERHEAD_S,
    ) -> None:
        self.prepared = prepared
        self.decent_trials = decent_trials
        self.launch_overhead_s = launch_overhead_s
        # (members, layout) -> task key (None: the group is no kernel)
        self._group_task: dict[tuple[frozenset[str], str | None], str | None] = {}
        self._borders: dict[str, tuple[Border, ...]] = {}  # plan fingerprint -> transforms
        self._border_task: dict[Border, str] = {}
        # a group whose kernel cannot be made in its layout: a task nothing estimates, so
        # every plan holding it stays unscored
        self._estimates_failed = TaskEstimate(None, None, 0, 0.0, error="no kernel in this layout")
        self._tasks: dict[str, Task] = {}
        self._estimates: dict[str, TaskEstimate] = {}
        self._measured: dict[str, _Measured] = {}
        self._untunable: set[str] = set()
        self._calibration = Calibration()
        # task key -> its kind for calibration: the group's layout, or "transform"
        self._kind: dict[str, str] = {}
        self._kind_calibration: dict[str, Calibration] = {}
        # task key -> its kernel's time inside the model / alone (`set_in_model`)
        self._in_model: dict[str, float] = {}
        self._kind_in_model: dict[str, float] = {}
        self._all_in_model = 1.0
        # the projection to the end of the budget (`search/curve.py`)
        self._curve = TuningCurve()
        self._trials_left: float | None = None

    # -- groups -> tasks -----------------------------------------------------------------------

    def add_partitions(self, partitions: Iterable[LaidPartition]) -> list[Task]:
        """Make the tasks of every group (in its layout) and every layout transform of
        `partitions` not seen before; the new tasks."""
        new_groups: list[tuple[str, ...]] = []
        new_layouts: list[str | None] = []
        pending: set[tuple[frozenset[str], str | None]] = set()
        new_borders: dict[Border, None] = {}
        for laid in map(as_laid, partitions):
            for group in laid.group_ids:
                key = (laid.groups[group], laid.layout(group))
                if key not in self._group_task and key not in pending:
                    pending.add(key)
                    new_groups.append(laid.nodes_of(group))
                    new_layouts.append(key[1])
            for border in self._plan_borders(laid):
                if border not in self._border_task:
                    new_borders[border] = None
        prepared = self.prepared
        new_tasks: list[Task] = []
        if new_groups:
            for nodes, layout, task in self._fuse(new_groups, new_layouts):
                if task is _FAILED:
                    self._group_task[(frozenset(nodes), layout)] = FAILED_TASK
                    continue
                self._group_task[(frozenset(nodes), layout)] = (
                    task.key if task is not None else None
                )
                if task is not None:
                    self._kind.setdefault(task.key, layout or "NCHW")
                if task is not None and task.key not in self._tasks:
                    self._tasks[task.key] = task
                    new_tasks.append(task)
        if new_borders:
            borders = list(new_borders)
            mod, names = border_module(borders, prepared.target)
            by_name = self._tasks_by_name(mod)
            for border, name in zip(borders, names, strict=True):
                task = by_name[name]
                self._border_task[border] = task.key
                self._kind.setdefault(task.key, "transform")
                if task.key not in self._tasks:
                    self._tasks[task.key] = task
                    new_tasks.append(task)
        if new_tasks and self._in_model:
            self._refit_in_model()  # ratios restored before their tasks' kinds were known
        return new_tasks

    def _tasks_by_name(self, mod: Any) -> dict[str, Task]:
        """The tasks of a module of groups or transforms, by the name of each call site."""
        tasks = extract_tasks(mod, self.prepared.target)
        return {name: task for task in tasks for name in task.groups}

    def _fuse(
        self, groups: list[tuple[str, ...]], layouts: list[str | None]
    ) -> list[tuple[tuple[str, ...], str | None, Any]]:
        """(nodes, layout, task) of each group (task None: no kernel; `_FAILED`: its kernel
        cannot be made in that layout). All in one module; when that fails, one by one, so a
        group whose operators a layout's schedule primitives refuse costs its plans only."""
        prepared = self.prepared

        def fuse(part: list[tuple[str, ...]], laid: list[str | None]) -> list[Any]:
            mod, names = fuse_groups(
                prepared.legalized, prepared.graph, part, prepared.target, laid
            )
            by_name = self._tasks_by_name(mod)
            return [by_name.get(name) if name is not None else None for name in names]

        try:
            tasks = fuse(groups, layouts)
        except Exception:  # noqa: BLE001 - find the group at fault below
            if len(groups) == 1:
                tasks = [_FAILED]
            else:
                tasks = []
                for nodes, layout in zip(groups, layouts, strict=True):
                    try:
                        tasks.extend(fuse([nodes], [layout]))
                    except Exception as err:  # noqa: BLE001 - that group in that layout only
                        log.warning(
                            "a group of %d ops (%s) cannot be made in %s: %s",
                            len(nodes),
                            nodes[0],
                            layout,
                            str(err).splitlines()[0][:200],
                        )
                        tasks.append(_FAILED)
        return [
            (nodes, layout, task)
            for nodes, layout, task in zip(groups, layouts, tasks, strict=True)
        ]

    def _plan_borders(self, laid: LaidPartition) -> tuple[Border, ...]:
        if not laid.has_layouts:
            return ()
        key = laid.fingerprint()
        if key not in self._borders:
            groups = [laid.nodes_of(g) for g in laid.group_ids]
            layouts = [laid.layout(g) for g in laid.group_ids]
            borders = plan_borders(self.prepared.graph, groups, layouts)
            self._borders[key] = tuple(borders)
        return self._borders[key]

    def task(self, key: str) -> Task:
        return self._tasks[key]

    def has_task(self, key: str) -> bool:
        return key in self._tasks

    def tasks_of(self, partition: LaidPartition) -> dict[str, int]:
        """task key -> calls, for the kernels of `partition`, its layout transforms included
        (after `add_partitions`)."""
        partition = as_laid(partition)
        calls: dict[str, int] = {}
        for group in partition.group_ids:
            key = self._group_task[(partition.groups[group], partition.layout(group))]
            if key is not None:
                calls[key] = calls.get(key, 0) + 1
        for border in self._plan_borders(partition):
            key = self._border_task[border]
            calls[key] = calls.get(key, 0) + 1
        return calls

    def transforms_of(self, partition: LaidPartition) -> int:
        """How many layout transforms `partition` places."""
        return len(self._plan_borders(as_laid(partition)))

    # -- what is known of tasks ----------------------------------------------------------------

    def needs_estimate(self, keys: Iterable[str]) -> list[str]:
        """The tasks among `keys` without an estimate (tuned ones too: they calibrate)."""
        return [k for k in dict.fromkeys(keys) if k not in self._estimates and k != FAILED_TASK]

    def set_estimate(self, key: str, estimate: TaskEstimate) -> None:
        self._estimates[key] = estimate
        if key in self._measured:  # a tuned task's estimate came late (exploration): it calibrates
            self._refit()

    def estimates(self) -> Mapping[str, TaskEstimate]:
        return {**self._estimates, FAILED_TASK: self._estimates_failed}

    def set_measured(self, key: str, best_seconds: float | None, trials: int) -> None:
        """The task's best ok latency on the device (None: none yet) and its search trials."""
        self._measured[key] = _Measured(best_seconds, trials)
        self._refit()

    def set_untunable(self, key: str) -> None:
        """The task cannot be tuned (its search gives no working schedule): its measured
        untuned kernel is its latency for good."""
        self._untunable.add(key)
        self._refit()

    def is_final(self, key: str) -> bool:
        return self._tuned(key)

    def kind_of(self, key: str) -> str:
        """The task's kind for calibration: its group's layout ("NCHW" for the model's own),
        or "transform"."""
        return self._kind.get(key, "NCHW")

    def tuned_of_kind(self, kind: str) -> int:
        """How many tasks of `kind` are tuned (their estimates may still be to come): once
        `MIN_KIND_TASKS` of them have estimates, that kind's estimates have a calibration of
        their own."""
        return sum(1 for key in self._measured if self._kind.get(key) == kind and self._tuned(key))

    @property
    def calibration(self) -> Calibration:
        return self._calibration

    def kind_calibration(self, kind: str) -> Calibration | None:
        """The calibration of one kind's estimates (None: it has too few tuned tasks and
        shares the calibration of all)."""
        return self._kind_calibration.get(kind)

    def task_seconds(self, key: str) -> tuple[float | None, bool]:
        """(latency of one call, whether it is a tuned task's measurement)."""
        measured = self._measured.get(key)
        if self._tuned(key):
            return measured.best_seconds, True  # type: ignore[union-attr]
        guess = self._guess(key)
        seen = measured.best_seconds if measured is not None else None
        options = [s for s in (guess, seen) if s is not None]
        return (min(options) if options else None), False

    # -- the projection to the end of the budget ------------------------------------------------

    def set_curve(self, curve: TuningCurve) -> None:
        """How tasks' best latencies fall with their trials (`curve.fit_slope`)."""
        if curve != self._curve:
            self._curve = curve
            self._refit()

    @property
    def curve(self) -> TuningCurve:
        return self._curve

    def set_horizon(self, trials_left: float | None) -> None:
        """The measurements the rest of the budget holds (None: no projection; scores rank
        plans as they stand)."""
        self._trials_left = trials_left

    def _improvable(self, key: str) -> bool:
        """Whether more trials can make the task faster."""
        if key in self._untunable:
            return False
        measured = self._measured.get(key)
        trials = measured.trials if measured is not None else 0
        return trials < self._space(key)

    def _project(self, calls: Mapping[str, int], now: Mapping[str, float]) -> float:
        """The plan's kernel time at the end of the budget (`search/curve.py`): the trials left
        shared among its tasks that can still improve, each task's latency moved along the
        curve from what it has now to its trials then."""
        assert self._trials_left is not None
        weights = {
            k: calls[k] * now[k] * self.in_model_ratio(k) for k in calls if self._improvable(k)
        }
        trials = {k: self._measured[k].trials for k in weights if k in self._measured}
        final = allocate(weights, trials, self._trials_left, self._curve.slope)
        total = 0.0
        for key, n in calls.items():
            if key not in final:
                total += n * now[key] * self.in_model_ratio(key)
                continue
            later = min(final[key], self._space(key))
            options = []
            measured = self._measured.get(key)
            if measured is not None and measured.best_seconds is not None:
                options.append(self._curve.at(measured.best_seconds, measured.trials, later))
            if not self._tuned(key):
                guess = self._guess(key)
                if guess is not None:
                    options.append(self._curve.at(guess, self.decent_trials, later))
            seconds = min(options) if options else now[key]
            total += n * seconds * self.in_model_ratio(key)
        return total

    def _guess(self, key: str) -> float | None:
        """The task's calibrated estimate: its best after `decent_trials` (None: none)."""
        estimate = self._estimates.get(key)
        if estimate is None or estimate.log_seconds is None:
            return None
        calibration = self._kind_calibration.get(self._kind.get(key, ""), self._calibration)
        return calibration.apply(estimate.log_seconds)

    # -- scores --------------------------------------------------------------------------------

    def group_seconds(self, partition: LaidPartition, group: int) -> float | None:
        """What one group of `partition` adds to its score: its kernel's latency and launch
        (0 for a group with no kernel; None while its task is unknown)."""
        partition = as_laid(partition)
        key = self._group_task[(partition.groups[group], partition.layout(group))]
        if key is None:
            return 0.0
        seconds, _ = self.task_seconds(key)
        if seconds is None:
            return None
        return seconds * self.in_model_ratio(key) + self.launch_overhead_s

    def score(self, partition: LaidPartition) -> PlanScore:
        kernel, measured, launches, unknown, untuned = 0.0, 0.0, 0, [], []
        calls_of = self.tasks_of(partition)
        now: dict[str, float] = {}
        for key, calls in calls_of.items():
            seconds, tuned = self.task_seconds(key)
            launches += calls
            if not tuned:
                untuned.append(key)
            if seconds is None:
                unknown.append(key)
                continue
            now[key] = seconds
            seconds *= self.in_model_ratio(key)
            kernel += calls * seconds
            if tuned:
                measured += calls * seconds
        overhead = launches * self.launch_overhead_s
        total = kernel + overhead
        share = measured / kernel if kernel > 0 else 0.0
        projected = None
        if self._trials_left is not None and not unknown:
            projected = self._project(calls_of, now) + overhead
        return PlanScore(total, kernel, launches, share, tuple(unknown), tuple(untuned), projected)

    # -- kernels inside the model --------------------------------------------------------------

    def set_in_model(self, key: str, ratio: float) -> None:
        """A task's kernel timed inside the model (a plan's end-to-end timing, the VM's
        instrument hook) took `ratio` times its measurement alone (its best record then)."""
        self._in_model[key] = ratio
        self._refit_in_model()

    def in_model(self) -> Mapping[str, float]:
        return dict(self._in_model)

    def in_model_ratio(self, key: str) -> float:
        """What a task's kernel takes inside the model per second it takes alone: its own
        ratio once a plan holding it was timed, else the median of its kind's (layout's)
        ratios once `MIN_KIND_TASKS` are known, else the median of all, else 1. Alone, a kernel
        runs again and again on the same data, in the caches; in the model its input was
        just written (maybe by the other core) and its weights were evicted by the kernels
        before: MobileNetV2's plans timed 1.4-1.6x their summed kernels."""
        ratio = self._in_model.get(key)
        if ratio is not None:
            return ratio
        return self._kind_in_model.get(self._kind.get(key, "NCHW"), self._all_in_model)

    def _refit_in_model(self) -> None:
        ratios = list(self._in_model.values())
        self._all_in_model = float(np.median(ratios)) if ratios else 1.0
        by_kind: dict[str, list[float]] = {}
        for key, ratio in self._in_model.items():
            by_kind.setdefault(self._kind.get(key, "NCHW"), []).append(ratio)
        self._kind_in_model = {
            kind: float(np.median(values))
            for kind, values in by_kind.items()
            if len(values) >= MIN_KIND_TASKS
        }

    # -- internals -----------------------------------------------------------------------------

    def _tuned(self, key: str) -> bool:
        """Whether the task's measurement is its latency for good: tuned enough, or a task
        that cannot be tuned (no estimate: its design space fails), whose untuned kernel is
        what the plan runs."""
        measured = self._measured.get(key)
        if measured is None or measured.best_seconds is None:
            return False
        estimate = self._estimates.get(key)
        decent = self.decent_trials
        if estimate is not None and estimate.distinct:
            decent = min(decent, estimate.distinct)  # a space of fewer schedules than that
        if measured.trials >= decent or key in self._untunable:
            return True
        return estimate is not None and estimate.log_seconds is None

    def _refit(self) -> None:
        self._calibration = self._fit_calibration()
        kinds = set(self._kind.values())
        self._kind_calibration = {}
        for kind in kinds:
            fitted = self._fit_calibration(kind)
            if fitted.tasks >= MIN_KIND_TASKS:
                self._kind_calibration[kind] = fitted

    def _fit_calibration(self, kind: str | None = None) -> Calibration:
        """The median log error of the tuned tasks' estimates; of those of one kind (a
        layout, or the transforms) when `kind` is given: the GNN learned on NCHW kernels, and
        its error on a layout's kernels is that layout's own (each kind is calibrated on its
        own once `MIN_KIND_TASKS` of its tasks are tuned, on all tuned tasks before)."""
        diffs = []
        for key, measured in self._measured.items():
            if kind is not None and self._kind.get(key) != kind:
                continue
            estimate = self._estimates.get(key)
            if (
                self._tuned(key)
                and estimate is not None
                and estimate.log_seconds is not None
                and measured.best_seconds
            ):
                diffs.append(self._log_at_decent(key, measured) - estimate.log_seconds)
        if not diffs:
            return Calibration()
        return Calibration(float(np.median(diffs)), len(diffs))

    def _space(self, key: str) -> float:
        """How many different schedules the task's design space has (inf: many)."""
        estimate = self._estimates.get(key)
        return float(estimate.distinct) if estimate is not None and estimate.distinct else math.inf

    def _log_at_decent(self, key: str, measured: _Measured) -> float:
        """log of a tuned task's best after `decent_trials`, as the curve has it: what a
        calibrated estimate stands for (a task tuned 150 trials is not what a new task reaches
        in its first round; the 1-h MobileNetV2 search's tasks fell 1.36x from 8 trials to 32)."""
        assert measured.best_seconds is not None
        space = self._space(key)
        depth = min(max(measured.trials, 1), space)
        reference = min(self.decent_trials, space)
        return math.log(self._curve.at(measured.best_seconds, depth, reference))
