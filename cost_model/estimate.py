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

from cost_model.predictor import Predictor, load_pretrained

__all__ = ["LatencyEstimator", "TaskEstimate"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskEstimate:
    """log_seconds: the `quantile` of the predicted log latencies (natural log of seconds) of
    `samples` candidates; best_log_seconds: their minimum. `error` says why a task has no
    estimate (its design space cannot be generated); then both are None. distinct: how many
    different predictions the samples got, a lower bound of the design space's size (a
    concat's or reshape's space holds one schedule; None: not known)."""

    log_seconds: float | None
    best_log_seconds: float | None
    samples: int
    seconds: float
    error: str | None = None
    distinct: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "log_seconds": self.log_seconds,
            "best_log_seconds": self.best_log_seconds,
            "samples": self.samples,
            "seconds": self.seconds,
            "error": self.error,
            "distinct": self.distinct,
        }

    @staticmethod
    def from_json(data: dict[str, Any]) -> TaskEstimate:
        return TaskEstimate(
            data.get("log_seconds"),
            data.get("best_log_seconds"),
            int(data.get("samples", 0)),
            float(data.get("seconds", 0.0)),
            data.get("error"),
            data.get("distinct"),
        )


class LatencyEstimator:
    """predictor: the GNN (default: the shipped pretrained one); target: the tasks' target;
    samples: candidates sampled per task; quantile: of their predicted latencies.
    isolated: sample in a worker subprocess within `memory_limit` bytes of address space
    (None: `schedule.probe.default_memory_limit()`) and `timeout_s` per task, so a task
    whose design space outgrows them gets an estimate with an error instead of taking the
    estimating process down."""

    def __init__(
        self,
        target: Any,
        predictor: Predictor | None = None,
        samples: int = 64,
        quantile: float = 0.1,
        seed: int = 0,
        isolated: bool = False,
        memory_limit: int | None = None,
        timeout_s: float = 120.0,
    ) -> None:
        from ago_search.schedule.probe import as_target, default_memory_limit

        self.target = as_target(target)
        self.predictor = predictor if predictor is not None else load_pretrained()
        self.samples = samples
        self.quantile = quantile
        self.seed = seed
        self.timeout_s = timeout_s
        self._worker = None
        if isolated:
            from ago_search.measure.worker import IsolatedWorker

            self.memory_limit = memory_limit if memory_limit is not None else default_memory_limit()
            self._worker = IsolatedWorker(
                preload=("tvm", "cost_model.sampling"),
                name="estimate-sampler",
                memory_limit=self.memory_limit,
            )

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()

    def estimate(self, mod: Any) -> TaskEstimate:
        """The estimate of one task (`Task.mod`: its PrimFunc as {"main": func})."""
        started = time.perf_counter()
        try:
            graphs = self._sample(mod)
        except Exception as exc:  # one task's failure: no estimate, no crash
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            return TaskEstimate(None, None, 0, time.perf_counter() - started, first)
        if not graphs:
            return TaskEstimate(
                None, None, 0, time.perf_counter() - started, "no candidate sampled"
            )
        predicted = np.asarray(self.predictor.predict(graphs), np.float64)
        return TaskEstimate(
            float(np.quantile(predicted, self.quantile)),
            float(predicted.min()),
            len(graphs),
            time.perf_counter() - started,
            distinct=len(np.unique(np.round(predicted, 9))),
        )

    def _sample(self, mod: Any) -> list[Any]:
        if self._worker is None:
            from cost_model.sampling import sample_graphs

            return sample_graphs(mod, str(self.target), self.samples, self.seed)
        from ago_search.measure.worker import WorkerCallError
        from ago_search.schedule.probe import failure_reason

        try:
            return self._worker.call(
                "cost_model.sampling:sample_graphs",
                mod,
                str(self.target),
                self.samples,
                self.seed,
                timeout=self.timeout_s,
            )
        except WorkerCallError as err:
            raise RuntimeError(failure_reason(err, self.memory_limit, self.timeout_s)) from None
