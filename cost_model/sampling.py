"""Candidate graphs of a task sampled from its design space: what a latency estimate scores.

`sample_graphs` runs where the estimate wants it: in the estimating process, or in a worker
subprocess with a memory and time limit (`LatencyEstimator(isolated=True)`, what the search's
Ray estimators use), so that a group whose design space outgrows the memory costs an estimate,
not the estimator (`ago_search.schedule.probe`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from ago_search.schedule.probe import as_target, sample_first_working
from cost_model.features import CandidateGraph, Featurizer

__all__ = ["sample_graphs"]


@lru_cache(maxsize=4)
def _featurizer(target: str) -> Featurizer:
    return Featurizer(as_target(target))


def sample_graphs(
    mod: Any, target: str, samples: int, seed: int = 0, rules: str = "auto"
) -> list[CandidateGraph]:
    """The graphs of `samples` schedules of the task `mod` replayed from its design space (of
    the first rule set that works, as tuning picks it: `schedule.probe.sample_first_working`)."""
    _, context, candidates = sample_first_working(mod, target, samples, seed, rules=rules)
    return _featurizer(target).from_candidates(context, candidates)
