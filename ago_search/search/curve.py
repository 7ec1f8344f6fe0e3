"""How a task's best latency falls with its trials, and what a plan will reach by the end of
the budget: the plan score's projection.

A plan's score sums its tasks' latencies as they stand (`score.PlanScorer`): the best record
of a tuned task, the calibrated estimate of an untuned one. Comparing plans on that alone
ignores what the rest of the budget does to each: the leader's tasks hold many trials, a
challenger's new tasks none, and a plan with more distinct tasks gives each fewer trials. On
the 1-h MobileNetV2 run the search spread 3,404 measurements over 126 tasks (36 % of them on
tasks its final plan did not hold) and ended on 50 distinct tasks with 44 trials each, while
MetaSchedule alone gave its 33 tasks 182 each and ended 1.28x faster.

The curve: a task's best latency after n trials falls as a power of n,

    log best(n) = log best(m) - slope * log(n / m)        (n >= m)

fitted on the tasks measured so far (`fit_slope`: per task with at least two rounds, the
slope between its best after its first round and its best now; their median, shrunk toward
`PRIOR_SLOPE` while few tasks have two rounds). PRIOR_SLOPE: the median over the 35 tasks of
the 1-h MobileNetV2 search with 32 trials or more was 0.17, over the tune-tasks databases of
the 10-min suite 0.08 (SqueezeNet) to 0.23 (ResNet-18, MobileNetV2); bert_tiny's 0.04-0.08.

The projection (`allocate`): the trials left (the measurement rate x the time left) are
shared among the plan's tasks that can still improve, in proportion to weight^(1/(1+slope))
(weight: calls x latency), the allocation that minimises sum(weight x n^-slope) for a fixed
total; a task keeps the trials it has (its share is at least that).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["PRIOR_SLOPE", "TuningCurve", "allocate", "fit_slope"]

PRIOR_SLOPE = 0.17
PRIOR_TASKS = 5  # the prior counts as this many tasks in `fit_slope`
MAX_SLOPE = 0.6


@dataclass(frozen=True)
class TuningCurve:
    """slope: how fast log(best) falls with log(trials); tasks: how many tasks it was fitted
    on (0: the prior)."""

    slope: float = PRIOR_SLOPE
    tasks: int = 0

    def at(self, seconds: float, trials: float, later: float) -> float:
        """A task's best after `later` trials, given `seconds` after `trials` (both taken as
        1 at least; `later` below `trials`: what fewer trials would have reached)."""
        return seconds * math.exp(-self.slope * math.log(max(later, 1.0) / max(trials, 1.0)))


def fit_slope(sequences: Iterable[Sequence[float | None]], first_round: int) -> TuningCurve:
    """The curve from tasks' latencies in the order they were measured (None or inf: a
    failed or wrong candidate). A task counts once it has two rounds (`2 * first_round`
    trials) and a working schedule in its first; its slope is the fall of log(best) from its
    first round's best to its best now over log(trials now / first_round), clipped to
    [0, MAX_SLOPE]."""
    slopes = []
    for seq in sequences:
        if len(seq) < 2 * first_round:
            continue
        values = [v if v is not None and v > 0 and math.isfinite(v) else math.inf for v in seq]
        first = min(values[:first_round])
        best = min(values)
        if not math.isfinite(first):
            continue
        fall = math.log(first) - math.log(best)
        slopes.append(min(max(fall / math.log(len(values) / first_round), 0.0), MAX_SLOPE))
    if not slopes:
        return TuningCurve()
    n = len(slopes)
    shrunk = (PRIOR_TASKS * PRIOR_SLOPE + n * statistics.median(slopes)) / (PRIOR_TASKS + n)
    return TuningCurve(shrunk, n)


def allocate(
    weights: Mapping[str, float],
    trials: Mapping[str, int],
    trials_left: float,
    slope: float,
) -> dict[str, float]:
    """Each task's trials at the end of the budget: `trials_left` shared among `weights`'
    tasks (those that can still improve; weight: calls x latency) in proportion to
    weight^(1/(1+slope)) of the total with the trials they hold, never fewer than they hold."""
    keys = [k for k, w in weights.items() if w > 0 and math.isfinite(w)]
    if not keys:
        return {}
    total = sum(trials.get(k, 0) for k in keys) + max(trials_left, 0.0)
    power = 1.0 / (1.0 + max(slope, 0.0))
    shares = {k: weights[k] ** power for k in keys}
    norm = sum(shares.values())
    return {k: max(float(trials.get(k, 0)), total * shares[k] / norm) for k in keys}
