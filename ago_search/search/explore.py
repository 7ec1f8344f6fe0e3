"""Exploring layouts: which tasks to tune once, at the start, so that plans of different
layouts are compared on measured scales.

The cost model's estimates are calibrated against tuned tasks (`score.PlanScorer`), per layout
once `score.MIN_KIND_TASKS` tasks of that layout are tuned. A layout no leading plan holds never
gets there, so its plans were compared on raw estimates, and the shipped GNN learned on NCHW
kernels: it scored MobileNetV2's TVM fusion in NHWC 20.9 ms and in NCHW 7.8 ms, while NHWC timed
faster. So at the start of a search, while the seeds are still being estimated (one core busy,
the other idle), the heaviest tasks of TVM's fusion in each layout get one short round each
(`exploration_tasks`: heaviest by the roofline's bound, from the kernels bound by compute and
those bound by memory in turns); every layout then has a calibration of its own before the
first leader is chosen.
"""

from __future__ import annotations

from collections.abc import Container, Mapping

from ago_search.graph import tensor_bytes
from ago_search.schedule.tasks import Task
from ago_search.search.laid import LaidPartition
from ago_search.search.score import PlanScorer

__all__ = ["exploration_tasks", "roofline_work", "seed_kind"]


def seed_kind(name: str) -> str:
    """The layout a seed is in, by its name: "tvm/NHWC" -> "NHWC", "dnnfusion" -> "NCHW"."""
    return name.partition("/")[2] or "NCHW"


# FLOPs a core does in the time it moves one byte from memory (the order of magnitude of the
# x86 and Arm cores here: 100-200 GFLOP/s a socket against 10-20 GB/s): a kernel with fewer
# FLOPs a byte is bound by memory, its time the bytes it moves
MACHINE_BALANCE = 10.0
# a class of kernels (bound by memory, bound by compute) with at least this share of a plan's
# work has a task of its own among each layout's explored tasks
CLASS_SHARE = 0.2


def task_bytes(task: Task) -> float:
    """Bytes a call of the task reads and writes at least: its arguments, once each."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    return float(
        sum(
            tensor_bytes([int(d) for d in info.shape], str(info.dtype))
            for info in ArgInfo.from_prim_func(task.prim_func)
        )
    )


def roofline_work(task: Task) -> tuple[float, bool]:
    """One call's work in bytes moved (`MACHINE_BALANCE` FLOPs count as one byte) and whether
    memory bounds it: the roofline's lower bound on its time, known before any estimate."""
    moved = task_bytes(task)
    return max(task.flops / MACHINE_BALANCE, moved), task.flops < MACHINE_BALANCE * moved


def exploration_tasks(
    scorer: PlanScorer,
    seeds: Mapping[str, LaidPartition],
    per_kind: int,
    skip: Container[str] = (),
) -> list[Task]:
    """The tasks to explore, as tasks with their calls as weight: for each layout (`seeds`:
    layout -> a plan in it, TVM's fusion in that layout) with fewer than `per_kind` tuned tasks,
    its heaviest tasks in that plan (`roofline_work` x calls: known before any estimate), as
    many as it lacks, taken in turns from the kernels bound by compute and those bound by
    memory while each class holds `CLASS_SHARE` of the plan's work (MobileNetV2's depthwise
    convs move as many bytes as its 1x1 convs do FLOPs, and the cost model misjudges the two
    differently across layouts: a calibration from two 1x1 convs spoke for its depthwise
    convs too). Left out: tasks tuned already, tasks in `skip` (known untunable), and other
    layouts' tasks in a plan (its rank-2 groups, its transforms). In rounds across the layouts
    (the heaviest of each, then the second of each, ...), so a run cut short covers every
    layout."""
    import dataclasses

    columns: list[list[Task]] = []
    for kind, partition in seeds.items():
        need = per_kind - scorer.tuned_of_kind(kind)
        if need <= 0:
            continue
        classes: dict[bool, list[tuple[float, str, int]]] = {False: [], True: []}
        for key, calls in scorer.tasks_of(partition).items():
            if not scorer.has_task(key) or key in skip:
                continue  # a group no kernel can be made for in this layout; untunable
            if scorer.kind_of(key) != kind or scorer.is_final(key):
                continue
            task = scorer.task(key)
            if task.flops > 0:
                work, memory_bound = roofline_work(task)
                classes[memory_bound].append((work * calls, key, calls))
        total = sum(w for members in classes.values() for w, _, _ in members)
        turns = [
            sorted(members, reverse=True)
            for members in classes.values()
            if members and sum(w for w, _, _ in members) >= CLASS_SHARE * total
        ] or [sorted(w for members in classes.values() for w in members)[::-1]]
        turns.sort(key=lambda members: members[0][0], reverse=True)  # the heaviest class first
        picked: list[tuple[str, int]] = []
        while len(picked) < need and any(turns):
            for members in turns:
                if members and len(picked) < need:
                    _, key, calls = members.pop(0)
                    picked.append((key, calls))
        columns.append([dataclasses.replace(scorer.task(k), weight=n) for k, n in picked])
    picks: dict[str, Task] = {}
    for row in range(max((len(c) for c in columns), default=0)):
        for column in columns:
            if row < len(column) and column[row].key not in picks:
                picks[column[row].key] = column[row]
    return list(picks.values())
