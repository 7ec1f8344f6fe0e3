"""How well a cost model ranks and predicts: per task, then averaged over tasks.

All functions take a task's predicted scores as *predicted latency* (lower is better: log
latency, or anything monotone in it) and its true latencies. For a model whose scores are
"higher is better" (MetaSchedule's), pass their negation.

- `pairwise_accuracy`: the fraction of candidate pairs (with different true latency) that the
  prediction orders like the truth.
- `kendall_tau`: Kendall's tau-b (ties in either ranking accounted for).
- `peak_score(k)`: true best latency / true latency of the best of the model's k top picks;
  1 means the model's top k hold the true best.
- `mape`: mean |predicted - true| / true latency, for predictions in seconds.

`evaluate_tasks` averages the per-task values, weighted by task weight (a task's calls per
inference), which is what the held-out-model reports use.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "TaskPrediction",
    "evaluate_tasks",
    "kendall_tau",
    "mape",
    "pairwise_accuracy",
    "peak_score",
]


def _pair_signs(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, np.float64)
    true = np.asarray(true, np.float64)
    i, j = np.triu_indices(len(true), k=1)
    return np.sign(pred[i] - pred[j]), np.sign(true[i] - true[j])


def pairwise_accuracy(pred: Sequence[float], true: Sequence[float]) -> float:
    """Fraction of pairs with different true values that `pred` orders the same way (a tie
    in `pred` counts half). NaN when no pair differs."""
    sp, st = _pair_signs(np.asarray(pred), np.asarray(true))
    valid = st != 0
    if not valid.any():
        return float("nan")
    agree = (sp[valid] == st[valid]).astype(np.float64) + 0.5 * (sp[valid] == 0)
    return float(agree.mean())


def kendall_tau(pred: Sequence[float], true: Sequence[float]) -> float:
    """Kendall's tau-b of two rankings; NaN when either is constant."""
    sp, st = _pair_signs(np.asarray(pred), np.asarray(true))
    n0 = len(sp)
    ties_p = float((sp == 0).sum())
    ties_t = float((st == 0).sum())
    denom = np.sqrt((n0 - ties_p) * (n0 - ties_t))
    if denom == 0:
        return float("nan")
    return float((sp * st).sum() / denom)


def peak_score(pred: Sequence[float], true: Sequence[float], k: int = 1) -> float:
    """Best true latency over the true latency of the best among the k candidates with the
    lowest prediction: in (0, 1], 1 when the top k hold the true best."""
    pred = np.asarray(pred, np.float64)
    true = np.asarray(true, np.float64)
    top = np.argsort(pred, kind="stable")[:k]
    return float(true.min() / true[top].min())


def mape(pred_latency: Sequence[float], true_latency: Sequence[float]) -> float:
    pred = np.asarray(pred_latency, np.float64)
    true = np.asarray(true_latency, np.float64)
    return float(np.mean(np.abs(pred - true) / true))


@dataclass(frozen=True)
class TaskPrediction:
    """One task's predictions: `score` lower is better (e.g. predicted log latency);
    `latency` predicted seconds, when the model predicts them (for MAPE)."""

    task_key: str
    true_latency: np.ndarray
    score: np.ndarray
    latency: np.ndarray | None = None
    weight: float = 1.0


def evaluate_tasks(predictions: Sequence[TaskPrediction]) -> dict[str, float | None]:
    """Task-weighted means of the metrics over tasks (tasks with one candidate skipped)."""
    rows: list[tuple[float, Mapping[str, float | None]]] = []
    for p in predictions:
        if len(p.true_latency) < 2:
            continue
        rows.append(
            (
                p.weight,
                {
                    "pairwise_accuracy": pairwise_accuracy(p.score, p.true_latency),
                    "kendall_tau": kendall_tau(p.score, p.true_latency),
                    "top1_peak": peak_score(p.score, p.true_latency, 1),
                    "top5_peak": peak_score(p.score, p.true_latency, 5),
                    "mape": None if p.latency is None else mape(p.latency, p.true_latency),
                },
            )
        )
    result: dict[str, float | None] = {"tasks": float(len(rows))}
    for name in ("pairwise_accuracy", "kendall_tau", "top1_peak", "top5_peak", "mape"):
        pairs = [(w, m[name]) for w, m in rows if m[name] is not None and np.isfinite(m[name])]
        if not pairs:
            result[name] = None
            continue
        weights = np.asarray([w for w, _ in pairs])
        values = np.asarray([v for _, v in pairs])
        result[name] = float((weights * values).sum() / weights.sum())
    result["candidates"] = float(sum(len(p.true_latency) for p in predictions))
    return result
