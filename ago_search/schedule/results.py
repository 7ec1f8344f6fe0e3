"""What a tuning run leaves: each task's state in the database (`TaskResult`) and the run's
`TuningReport`.

A task's records are its search trials plus one measurement of its untuned kernel (the empty
trace, source `SOURCE_UNTUNED`): the per-task baseline, and the best record where no schedule
beats it. Trials count search trials only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ago_search.database import Record, Status, TuningDatabase

if TYPE_CHECKING:
    from ago_search.schedule.tasks import Task
    from ago_search.schedule.verify import ReferenceCheck

__all__ = ["SOURCE_UNTUNED", "TaskResult", "TuningReport", "search_records", "task_results"]

# The `source` of the record of a task's untuned kernel.
SOURCE_UNTUNED = "untuned"


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


def search_records(store: TuningDatabase, task_key: str, device_key: str) -> list[Record]:
    """The task's search trials on the device: its records but the untuned kernel's."""
    return [
        r for r in store.records(task_key, device_key) if r.extra.get("source") != SOURCE_UNTUNED
    ]


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
        search = search_records(store, task.key, device_key)
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
