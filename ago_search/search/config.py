"""How the search runs (`SearchConfig`) and what it hands back (`SearchResult`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ago_search.measure import MeasureProtocol
from ago_search.search.space import GroupLimits

__all__ = ["TVM_DEFAULT_MIN_BUDGET_S", "SearchConfig", "SearchResult"]

# From this budget on, the finish times TVM's default build too (`SearchConfig.time_tvm_default`)
TVM_DEFAULT_MIN_BUDGET_S = 1800.0


@dataclass(frozen=True)
class SearchConfig:
    """How to search.

    budget_s: wall-clock seconds in all, earlier runs on the same output folder included.
    look_s: seconds of tuning between two looks at the plans; a look happens between two
    rounds, inside the running tuning, which goes on unless the leader changed or is due to
    be timed end to end. slice_s: the longest one tuning run goes on even so (None: no
    limit; every restart re-creates the tasks' contexts and cuts a round). recheck_s: the
    least time between two end-to-end timings of the same leader (None: a tenth of the
    budget, at least 60 s); check_share: the most of the time spent that re-timings (after
    the first) may take in all. suggest_batch: partitions suggested at a time.
    estimator_workers: Ray actors that estimate tasks (None: one per two CPUs Ray has, at least one). samples: schedules sampled
    per task estimate. switch_margin: how much better a plan's score must be to take the lead
    (early_switch_margin while the leader's first pass is not done; None: no switch before
    it is done). explore_share: the most CPU time estimating may take, as a share of the wall
    time; pace_estimates: from the first leader on, the estimators hand out tasks only within
    that share (before it, the seeds are estimated as fast as the estimators go).
    round_trials: candidates measured per round of a task (the first pass gives every task of
    the leading plan one round before any gets a second).
    end_to_end_share: without any end-to-end timing, finishing builds the best plan whose
    tasks are all tuned, else the best with at least this share of its predicted kernel time
    measured (a leader is timed end to end once all its tasks are tuned).
    first_pass_share: a challenger takes the lead only if tuning its untuned tasks once
    (a round each, at the rounds' observed pace) fits in this share of the budget left.
    seed_wait_s: the first leader waits for the seeds' scores this long at most (and a tenth
    of the budget at most); a plan is tuned through its first pass once it leads, so the first
    choice counts.
    explore_tasks: before the first leader is chosen, this many of the heaviest tasks of
    TVM's fusion in each layout get one round of `decent_trials` (8) candidates, so each layout's
    estimates are calibrated on measurements of its own before plans of different layouts are
    compared (0: no exploration; None: as many as `explore_share_of_budget` holds rounds for,
    2 to 6 a layout); explore_share_of_budget: the most of the budget that takes.
    The shipped GNN learned on NCHW kernels: it scored MobileNetV2's TVM fusion in NHWC 20.9 ms
    and in NCHW 7.8 ms, while NHWC timed faster; a layout's own calibration starts only once
    `score.MIN_KIND_TASKS` of its tasks are tuned, which never happens to a layout no leader
    holds.
    profile_runs: after each end-to-end timing, the plan is run this many times more with
    every kernel timed inside the model (the VM's instrument hook): each task's in-model time
    over its time alone scales its latency in the scores (`PlanScorer.in_model_ratio`); 0:
    scores sum the kernels as timed alone.
    project: plans are ranked (by the searcher, for the lead) on their projection to the end of
    the budget (`search/curve.py`: the measurements left shared among each plan's tasks, each
    task's latency moved along the tuning curve); False: on their scores as they stand.
    layouts: search a layout per group (`ago_search.layout.layout_choices` of the target:
    NCHW, NHWC, NCHW{lanes}c), with TVM's fusion in each layout among the seeds; False: NCHW
    only.
    transfer: open tasks' rounds with similar tasks' best schedules (`schedule.transfer`).
    divide: divide and conquer (`search/regions.py`): regions at single-tensor cut points,
    each holding at least `region_min_complex` convs/matmuls; moves stay inside a region and
    the best of every region are joined.
    winograd: the 3x3 stride-1 convs Winograd applies to (`ago_search.graph.winograd`) are
    computed as Winograd F(winograd x winograd, 3x3) convs in every plan (None: directly). F(4x4,
    3x3) by default: tuned with the same 32 trials, ResNet-18's four 3x3 conv shapes summed
    3.85 ms against 5.90 direct and 4.90 in ORT (`scripts/winograd_probe.py`, README).
    time_tvm_default: the finish also builds and times TVM's default build of the model, a
    reference figure (None: with budgets of `TVM_DEFAULT_MIN_BUDGET_S` and more; ResNet-18's
    untuned build runs 2.2 s a call, and its build and timing took 20-25 s of a 10-min
    search's finish, time its tuning did not get).
    """

    budget_s: float
    seed: int = 0
    cost_model: str = "gnn"
    slice_s: float | None = None
    look_s: float = 10.0
    recheck_s: float | None = None
    check_share: float = 0.06
    suggest_batch: int = 8
    estimator_workers: int | None = None
    samples: int = 32  # 64 cost 1.0 s a MobileNetV2 task, 32 0.5 s, estimates within 0.4 (log)
    switch_margin: float = 0.03
    early_switch_margin: float | None = None
    explore_share: float = 0.15
    pace_estimates: bool = True
    round_trials: int = 16
    end_to_end_share: float = 0.9
    first_pass_share: float = 0.5
    layouts: bool = True
    transfer: bool = True
    project: bool = True
    seed_wait_s: float = 90.0
    explore_tasks: int | None = None
    profile_runs: int = 10
    explore_share_of_budget: float = 0.15
    divide: bool = True
    winograd: int | None = 4
    region_min_complex: int = 3
    time_tvm_default: bool | None = None
    limits: GroupLimits = field(default_factory=GroupLimits)
    protocol: MeasureProtocol | None = None

    def times_tvm_default(self) -> bool:
        if self.time_tvm_default is not None:
            return self.time_tvm_default
        return self.budget_s >= TVM_DEFAULT_MIN_BUDGET_S

    def slice_seconds(self) -> float:
        return self.slice_s if self.slice_s is not None else math.inf

    def recheck_seconds(self) -> float:
        if self.recheck_s is not None:
            return self.recheck_s
        return max(60.0, 0.1 * self.budget_s)

    def finish_reserve_s(self) -> float:
        """What finishing takes: a tuned build, its timing beside ORT's (and TVM's default
        build's, `times_tvm_default`)."""
        return min(180.0, max(15.0, 0.05 * self.budget_s))


@dataclass(frozen=True)
class SearchResult:
    out: Path
    summary: dict[str, Any]
    interrupted: bool = False
