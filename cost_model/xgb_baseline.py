"""The baseline: MetaSchedule's own `XGBModel`, trained on the same records as the GNN and
scored with the same metrics. By default with its training step fixed for candidates of many
buffer stores (`PackSumXGBModel`, cost_model/xgb.py; our tuning's "xgb"): as
MetaSchedule ships it ("xgb-ms") its training diverges on the fused groups of our traces and it
ranks held-out models no better than chance, which would make a hollow baseline.

XGBModel learns from (TuneContext, MeasureCandidate, RunnerResult) triples, one task per
`update`, and featurises each candidate with its `PerStoreFeature` extractor (164 per-store
features, no workload part). Those are exactly the store rows our graphs already hold
(`CandidateGraph.node_features[:n_store, 2:2 + STORE_DIM]`, before standardisation), so the
baseline is fed them through a stand-in extractor instead of replaying every trace again:
the same model, the same training code (`XGBModel.update`, adaptive training held back to one
fit over all tasks), the same inputs, minutes less per fold. It predicts a normalised
throughput (higher is better; the task's best cost over the candidate's), which says nothing
of a held-out task's absolute latency: its MAPE is left out.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import numpy as np

from cost_model.features import STORE_DIM
from cost_model.input_pipeline import Dataset, TaskSamples
from cost_model.metrics import TaskPrediction

__all__ = ["fit_xgb", "store_features", "xgb_predictions"]

log = logging.getLogger(__name__)


def store_features(task: TaskSamples) -> list[np.ndarray]:
    """Per candidate, MetaSchedule's per-store feature matrix (n_store, 164)."""
    return [
        np.ascontiguousarray(g.node_features[: g.n_store, 2 : 2 + STORE_DIM], np.float32)
        for g in task.graphs
    ]


class _Features:
    """What XGBModel calls `x.numpy()` on."""

    def __init__(self, matrix: np.ndarray) -> None:
        self._matrix = matrix

    def numpy(self) -> np.ndarray:
        return self._matrix


class _GivenFeatures:
    """A feature extractor that hands back precomputed matrices; the 'candidates' passed
    with it are indices into them."""

    def __init__(self, matrices: list[np.ndarray]) -> None:
        self.matrices = matrices

    def extract_from(self, context: Any, candidates: list[int]) -> list[_Features]:
        return [_Features(self.matrices[i]) for i in candidates]


def _context(task: TaskSamples) -> Any:
    # XGBModel only reads `context.mod` (to group records by workload)
    return SimpleNamespace(mod=task.workload)


def fit_xgb(train: Dataset, seed: int = 0, variant: str = "xgb") -> Any:
    """An XGB model trained once on every task of `train`. variant "xgb": our
    `PackSumXGBModel` (MetaSchedule's model, its Newton step fixed for many-store
    candidates: cost_model/xgb.py); "xgb-ms": `XGBModel` as MetaSchedule ships it.
    Trains under the host's shared CPU lease, as the GNN does: never beside a measurement."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from ago_search.measure.lease import host_cpu_lease
    from cost_model.xgb import xgb_model_class

    cls = xgb_model_class(variant)
    config = ms.cost_model.xgb_model.XGBConfig(seed=43 + seed)
    model = cls(config=config, num_warmup_samples=0, adaptive_training=True, verbose_eval=0)
    for i, task in enumerate(train.tasks):
        # adaptive training retrains only when the data grew by a fifth since the last
        # training: hold it back until the last task, so XGBoost trains once on all of it
        model.last_train_size = 0 if i == len(train.tasks) - 1 else 1 << 60
        results = [
            ms.runner.RunnerResult([tvm.tirx.FloatImm("float64", float(s))], None)
            for s in task.latencies
        ]
        model.extractor = _GivenFeatures(store_features(task))
        # the Python implementation behind the FFI object, which takes our stand-ins
        with host_cpu_lease().shared():
            model._inst.update(_context(task), list(range(len(task))), results)
    return model


def xgb_predictions(model: Any, test: Dataset) -> list[TaskPrediction]:
    """Per-task predictions of a trained `XGBModel` as `TaskPrediction`s (score = -xgb)."""
    preds = []
    for task in test.tasks:
        model.extractor = _GivenFeatures(store_features(task))
        score = model._inst.predict(_context(task), list(range(len(task))))
        preds.append(
            TaskPrediction(task.task_key, task.latencies, -np.asarray(score), None, task.weight)
        )
    return preds
