"""What a task's tuning can reach, predicted before anything of it is measured.

The plan search scores partitions whose groups were never tuned: for such a group it needs
the latency its kernel would have once tuned, not the untuned kernel's (15-25x slower, and
the same for every partition). `LatencyEstimator.estimate` samples candidates from the task's
design space (MetaSchedule's post-order-apply space, replayed with random decisions:
`ReplayTrace`), predicts each one's log latency with the GNN and returns a low quantile of
them: a schedule of that quality is within reach of a short search. The search calibrates the
figure against the tasks it has measured (`ago_search.search.score`), so it is a ranking
signal with a scale, not a promise.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from cost_model.features import Featurizer
from cost_model.predictor import Predictor, load_pretrained

__all__ = ["LatencyEstimator", "TaskEstimate"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskEstimate:
    """log_seconds: the `quantile` of the predicted log latencies (natural log of seconds) of
    `samples` candidates; best_log_seconds: their minimum. `error` says why a task has no
    estimate (its design space cannot be generated); then both are None."""

    log_seconds: float | None
    best_log_seconds: float | None
    samples: int
    seconds: float
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "log_seconds": self.log_seconds,
            "best_log_seconds": self.best_log_seconds,
            "samples": self.samples,
            "seconds": self.seconds,
            "error": self.error,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> TaskEstimate:
        return TaskEstimate(
            data.get("log_seconds"),
            data.get("best_log_seconds"),
            int(data.get("samples", 0)),
            float(data.get("seconds", 0.0)),
            data.get("error"),
        )


class LatencyEstimator:
    """predictor: the GNN (default: the shipped pretrained one); target: the tasks' target;
    samples: candidates sampled per task; quantile: of their predicted latencies."""

    def __init__(
        self,
        target: Any,
        predictor: Predictor | None = None,
        samples: int = 64,
        quantile: float = 0.1,
        seed: int = 0,
    ) -> None:
        import json

        import tvm

        if isinstance(target, str) and target.lstrip().startswith("{"):
            target = json.loads(target)
        self.target = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
        self.predictor = predictor if predictor is not None else load_pretrained()
        self.samples = samples
        self.quantile = quantile
        self.seed = seed
        self._featurizer = Featurizer(self.target)

    def estimate(self, mod: Any) -> TaskEstimate:
        """The estimate of one task (`Task.mod`: its PrimFunc as {"main": func})."""
        from tvm.s_tir import meta_schedule as ms

        started = time.perf_counter()
        try:
            context = ms.TuneContext(
                mod=mod,
                target=self.target,
                space_generator="post-order-apply",
                search_strategy=ms.search_strategy.ReplayTrace(),
                task_name="estimate",
                rand_state=self.seed,
                num_threads=1,
            )
            spaces = context.generate_design_space()
            context.pre_tuning(
                max_trials=self.samples,
                num_trials_per_iter=self.samples,
                design_spaces=spaces,
                database=None,
                cost_model=None,
            )
            candidates = context.generate_measure_candidates() or []
            context.post_tuning()
        except Exception as exc:  # a ScheduleError of one task's space: no estimate, no crash
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            return TaskEstimate(None, None, 0, time.perf_counter() - started, first)
        if not candidates:
            return TaskEstimate(
                None, None, 0, time.perf_counter() - started, "no candidate sampled"
            )
        graphs = self._featurizer.from_candidates(context, candidates)
        predicted = np.asarray(self.predictor.predict(graphs), np.float64)
        return TaskEstimate(
            float(np.quantile(predicted, self.quantile)),
            float(predicted.min()),
            len(candidates),
            time.perf_counter() - started,
        )
