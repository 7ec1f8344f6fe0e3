"""Which task to tune next: every task decent first, then where the model gains most.

Measured on a real 41-task model (DESIGN.md, "Search principles"): MetaSchedule given 400
trials spent 16 on each of 25 tasks and none on the other 16, and the model came out at
18.1 ms; with 800 trials reaching every task it was 2.8 ms. Untuned kernels are 15-25x
slower than tuned ones, so a few untuned tasks dominate a model. MetaSchedule's own
`GradientBased` scheduler starts with one round-robin round too; what starves tasks is the
size of a round (`num_trials_per_iter`, 64 by default) against the budget.

`FirstPassScheduler` is a MetaSchedule `PyTaskScheduler` (so `ms.tune.tune_tasks` drives it;
MetaSchedule's loop asks it for the next task, then the task's search strategy generates a
round of `num_trials_per_iter` candidates, which are built, measured and committed):

1. First pass. Every task without a measured trial gets one round, the most expensive
   first (weight x FLOPs), so a budget cut short still covers what matters most. The round
   is small (`first_pass_round`: a fraction of the budget shared out over the tasks), and the
   evolutionary search behind it scores a whole population (128 sampled and evolved
   candidates) with the cost model and measures only its top few: a schedule chosen cheaply.
2. Repair. A task whose rounds gave no working schedule (all failed or wrong) gets up to
   `max_failed_rounds` further rounds before any gain-driven round.
3. Gain. Each further round goes to the task whose next round is expected to shorten the
   model's latency most:

       gain_i = weight_i x best_i x max(recent_i, prior_gain / rounds_i)

   weight_i: how often the task runs in the model; best_i: its best measured latency (s);
   recent_i: its best latency's relative improvement per round over the last `window` rounds,
   (best[-1-k] - best[-1]) / best[-1-k] / k, k = min(window, rounds_i - 1); prior_gain /
   rounds_i: an optimistic bonus that shrinks as the task is tuned (a task whose last rounds
   found nothing is not written off at once; one tuned for many rounds must show progress).
   So gain_i is the expected reduction of the model's latency (seconds) from one more round.
   MetaSchedule's GradientBased has the same ingredients (weight x (alpha x recent slope +
   (1 - alpha) x best / rounds)) in absolute terms; the bonus here is relative and taken as a
   maximum, not a blend.

Tasks may come with `TaskPrior`s (trials and best latency already in the database, from an
earlier, killed or finished, run): a task with prior trials has had its first pass, and its
prior best counts as its first point of history.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.task_scheduler import PyTaskScheduler

__all__ = [
    "FirstPassScheduler",
    "TaskPrior",
    "expected_gain",
    "first_pass_round",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskPrior:
    """What the database already holds for a task on the device: search trials measured
    (any outcome) and the best ok latency in seconds (None: no working schedule yet)."""

    trials: int = 0
    best_seconds: float | None = None


def first_pass_round(
    budget: int, tasks_to_cover: int, fraction: float = 0.5, max_round: int = 16
) -> int:
    """Trials per round so that one round for each of `tasks_to_cover` tasks fits in
    `fraction` of `budget`: floor(fraction x budget / tasks), between 1 and `max_round`."""
    if budget < 1:
        return 1
    tasks_to_cover = max(1, tasks_to_cover)
    return max(1, min(max_round, math.floor(fraction * budget / tasks_to_cover)))


def expected_gain(
    weight: float,
    history: Sequence[float],
    rounds: int,
    window: int = 3,
    prior_gain: float = 0.5,
) -> float:
    """The expected reduction of the model's latency (s) from one more round of a task.

    history: the task's best latency after each of its rounds (seconds, inf while none
    worked); rounds: its rounds so far. See the module docstring for the formula.
    """
    if not history or not math.isfinite(history[-1]):
        return -math.inf
    best = history[-1]
    finite = [h for h in history if math.isfinite(h)]
    k = min(window, len(finite) - 1)
    recent = (finite[-1 - k] - best) / finite[-1 - k] / k if k > 0 else 0.0
    bonus = prior_gain / max(1, rounds)
    return weight * best * max(recent, bonus)


@dataclass
class _TaskState:
    name: str
    weight: float
    flops: float
    trials: int = 0
    rounds: int = 0
    failed_rounds: int = 0
    history: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return self.history[-1] if self.history else math.inf


def _median_seconds(result: Any) -> float | None:
    if result.error_msg is not None or not result.run_secs:
        return None
    values = sorted(float(getattr(s, "value", s)) for s in result.run_secs)
    middle = len(values) // 2
    median = values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2
    return median if 0 < median < 1e9 else None


@derived_object
class FirstPassScheduler(PyTaskScheduler):
    """Every task one round first, then rounds by expected gain (see the module docstring).

    priors: per task (in the order tasks are given to MetaSchedule), what the database holds
    already; round_trials: the round size the search runs with (`num_trials_per_iter`),
    used to count prior trials as rounds. `picks` lists the task ids handed out, in order.
    """

    def __init__(
        self,
        priors: Sequence[TaskPrior] | None = None,
        *,
        round_trials: int = 8,
        window: int = 3,
        prior_gain: float = 0.5,
        max_failed_rounds: int = 2,
    ) -> None:
        super().__init__()
        if round_trials < 1:
            raise ValueError(f"round_trials must be >= 1, got {round_trials}")
        self.priors = tuple(priors) if priors is not None else None
        self.round_trials = round_trials
        self.window = window
        self.prior_gain = prior_gain
        self.max_failed_rounds = max_failed_rounds
        self.picks: list[int] = []
        self.rounds_done = 0
        self._states: list[_TaskState] = []

    # ------------------------------------------------------------------ MetaSchedule's side

    def next_task_id(self) -> int:
        records = self._outer().tasks_
        if not self._states:
            self._start(records)
        for task_id, record in enumerate(records):
            # MetaSchedule expects the chosen task's previous round joined; runners here
            # measure synchronously, so joining every finished round costs nothing
            if record.runner_futures is not None:
                self._finish_round(task_id, self.join_running_task(task_id))
        alive = [i for i, record in enumerate(records) if not record.is_terminated]
        if not alive:
            return -1
        task_id = self.choose(alive)
        self.picks.append(task_id)
        return task_id

    # ------------------------------------------------------------------ the policy

    def _start(self, records: Sequence[Any]) -> None:
        priors = self.priors or tuple(TaskPrior() for _ in records)
        if len(priors) != len(records):
            raise ValueError(f"{len(priors)} priors for {len(records)} tasks")
        for record, prior in zip(records, priors, strict=True):
            state = _TaskState(
                name=str(record.ctx.task_name),
                weight=float(record.task_weight),
                flops=float(record.flop),
            )
            state.trials = prior.trials
            state.rounds = math.ceil(prior.trials / self.round_trials)
            if prior.best_seconds is not None:
                state.history.append(prior.best_seconds)
            elif prior.trials > 0:
                state.history.append(math.inf)
                state.failed_rounds = state.rounds
            self._states.append(state)

    def _finish_round(self, task_id: int, results: Sequence[Any]) -> None:
        state = self._states[task_id]
        state.trials += len(results)
        state.rounds += 1
        times = [t for t in (_median_seconds(r) for r in results) if t is not None]
        best = min([state.best, *times])
        if not math.isfinite(best):
            state.failed_rounds += 1
        state.history.append(best)
        self.rounds_done += 1
        log.info(
            "round %d: task %d %s (round %d of it): %d measured, %d worked, best %.4g ms",
            self.rounds_done,
            task_id,
            state.name,
            state.rounds,
            len(results),
            len(times),
            best * 1e3,
        )

    def choose(self, alive: Sequence[int]) -> int:
        """The next task among the live ones (first pass, repair, then gain)."""
        states = self._states

        def importance(i: int) -> tuple[float, int]:
            return (-states[i].weight * max(states[i].flops, 1.0), i)

        fresh = [i for i in alive if states[i].trials == 0]
        if fresh:
            return min(fresh, key=importance)
        broken = [
            i
            for i in alive
            if not math.isfinite(states[i].best)
            and states[i].failed_rounds < self.max_failed_rounds
        ]
        if broken:
            return min(broken, key=importance)
        gains = {
            i: expected_gain(
                states[i].weight,
                states[i].history,
                states[i].rounds,
                window=self.window,
                prior_gain=self.prior_gain,
            )
            for i in alive
        }
        finite = [i for i in alive if math.isfinite(gains[i])]
        if not finite:  # nothing works anywhere: share the rounds out evenly
            return min(alive, key=lambda i: (states[i].rounds, i))
        return max(finite, key=lambda i: (gains[i], -i))
