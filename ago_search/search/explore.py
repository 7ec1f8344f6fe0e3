"""Exploring layouts: which tasks to tune once, at the start, so that plans of different
layouts are compared on measured scales.

The cost model's estimates are calibrated against tuned tasks (`score.PlanScorer`), per layout
once `score.MIN_KIND_TASKS` tasks of that layout are tuned. A layout no leading plan holds never
gets there, so its plans were compared on raw estimates, and the shipped GNN learned on NCHW
kernels: it scored MobileNetV2's TVM fusion in NHWC 20.9 ms and in NCHW 7.8 ms, while NHWC timed
faster. So at the start of a search, while the seeds are still being estimated (one core busy,
the other idle), the heaviest tasks of TVM's fusion in each layout get one short round each
(`exploration_tasks`); every layout then has a calibration of its own before the first leader
is chosen.
"""

from __future__ import annotations

from collections.abc import Container, Mapping

from ago_search.schedule.tasks import Task
from ago_search.search.laid import LaidPartition
from ago_search.search.score import PlanScorer

__all__ = ["exploration_tasks", "seed_kind"]


def seed_kind(name: str) -> str:
    """The layout a seed is in, by its name: "tvm/NHWC" -> "NHWC", "dnnfusion" -> "NCHW"."""
    return name.partition("/")[2] or "NCHW"


def exploration_tasks(
    scorer: PlanScorer,
    seeds: Mapping[str, LaidPartition],
    per_kind: int,
    skip: Container[str] = (),
) -> list[Task]:
    """The tasks to explore, as tasks with their calls as weight: for each layout (`seeds`:
    layout -> a plan in it, TVM's fusion in that layout) with fewer than `per_kind` tuned tasks,
    its heaviest tasks in that plan (FLOPs x calls: known before any estimate), as many as it
    lacks. Left out: tasks tuned already, tasks in `skip` (known untunable), and other layouts'
    tasks in a plan (its rank-2 groups, its transforms). In rounds across the layouts (the
    heaviest of each, then the second of each, ...), so a run cut short covers every layout."""
    import dataclasses

    columns: list[list[Task]] = []
    for kind, partition in seeds.items():
        need = per_kind - scorer.tuned_of_kind(kind)
        if need <= 0:
            continue
        weighed = []
        for key, calls in scorer.tasks_of(partition).items():
            if not scorer.has_task(key) or key in skip:
                continue  # a group no kernel can be made for in this layout; untunable
            if scorer.kind_of(key) != kind or scorer.is_final(key):
                continue
            task = scorer.task(key)
            if task.flops > 0:
                weighed.append((task.flops * calls, key, calls))
        weighed.sort(reverse=True)
        columns.append(
            [dataclasses.replace(scorer.task(k), weight=n) for _, k, n in weighed[:need]]
        )
    picks: dict[str, Task] = {}
    for row in range(max((len(c) for c in columns), default=0)):
        for column in columns:
            if row < len(column) and column[row].key not in picks:
                picks[column[row].key] = column[row]
    return list(picks.values())
