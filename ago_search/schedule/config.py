"""How to tune: `TuningConfig`, the choices it names and the defaults behind them."""

from __future__ import annotations

from dataclasses import dataclass

from ago_search.errors import AgoSearchError
from ago_search.measure.protocol import MeasureProtocol

__all__ = ["METASCHEDULE_ROUND", "SCHEDULERS", "SEARCHES", "TuningConfig"]

SCHEDULERS = ("first-pass", "gradient", "round-robin")
SEARCHES = ("evolutionary", "replay")
# MetaSchedule's default round size (`num_trials_per_iter` of tune_tasks / tune_relax), used
# with its own schedulers so that they are compared as a user gets them.
METASCHEDULE_ROUND = 64


@dataclass(frozen=True)
class TuningConfig:
    """How to tune.

    trials: search trials the tasks should have on the device in all, the database's
        included (a resumed run measures only what is missing: `schedule.tune`).
    scheduler: "first-pass" (ours), "gradient" or "round-robin" (MetaSchedule's).
    trials_per_round: candidates measured per round; None: for "first-pass", one round per
        untried task in `first_pass_fraction` of the remaining budget, at most
        `max_round_trials`; for MetaSchedule's schedulers its default, 64.
    population_size: of the evolutionary search (MetaSchedule's default 512; TVM_NOTES.md: 128
        on 2 cores; 64 since 2026-12-07, see genetic_iters).
    genetic_iters: its rounds of mutation scored by the cost model before a round's
        candidates are picked (MetaSchedule's default 4; 2 here). A round's search costs the
        same whatever the round's size (`scripts/round_cost.py`: 14-16 s at 128x4, 4 s at 64x2
        on a ResNet-18 conv, 2 cores), and at about equal time 64x2 left the tasks better:
        `scripts/profile_tuning.py` MobileNetV2's 6 heaviest tasks 2.72 ms in 112 s against
        3.95 ms in 142 s at 128x4, ResNet-18's 4 heaviest 27.0 ms in 157 s against 32.7 in 179.
    search: "evolutionary" (MetaSchedule's EvolutionarySearch, ranked by the cost model) or
        "replay" (ReplayTrace: plain random samples of the design space, no cost model; what
        trace collection wants for unbiased samples, at a fraction of the search's CPU).
    verify: check every candidate's outputs against the untuned task (wrong -> wrong_result).
    measure_untuned: measure each task's untuned kernel once (the empty trace).
    seed: the search's random seed (None: random).
    warm_start_records: per task, best records of the database the cost model is trained on
        before the search (a resumed run's model starts from what was measured).
    transfer: open a task's rounds with a few schedules of similar tasks measured on the device
        (`schedule.transfer`; evolutionary search only).
    vector_seeds: with `transfer`, a task's first round also opens with its own design spaces
        vectorised along each tiled block's innermost spatial loop (`transfer.vector_decisions`;
        the session's setting, read when it starts).
    task_memory_limit, task_probe_timeout_s: the bytes of address space (None: 40 % of the
        machine's memory, at least 4 GiB) and seconds within which each task's design space
        must be generated and sampled before it is tuned (`schedule.probe`).
    """

    trials: int
    scheduler: str = "first-pass"
    trials_per_round: int | None = None
    first_pass_fraction: float = 0.5
    max_round_trials: int = 16
    population_size: int = 64
    genetic_iters: int = 2
    search: str = "evolutionary"
    verify: bool = True
    measure_untuned: bool = True
    seed: int | None = None
    protocol: MeasureProtocol | None = None  # None: measure.TUNING_PROTOCOL
    build_timeout_s: float | None = None  # None: the builder's default
    run_timeout_s: float | None = None  # None: the runner's default
    max_empty_rounds: int = 3
    warm_start_records: int = 64
    transfer: bool = True
    vector_seeds: bool = True
    task_memory_limit: int | None = None
    task_probe_timeout_s: float = 120.0

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
