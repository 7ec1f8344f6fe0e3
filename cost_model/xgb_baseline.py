"""The baseline: MetaSchedule's own `XGBModel`, trained on the same records as the GNN and
scored with the same metrics.

XGBModel learns from (TuneContext, MeasureCandidate, RunnerResult) triples, one task per
`update`; we replay each record's trace on its workload to make the candidate. It predicts a
normalised throughput (higher is better; the task's best cost over the candidate's), which
says nothing of a held-out task's absolute latency: its MAPE is left out.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from cost_model.input_pipeline import Dataset, TaskSamples
from cost_model.metrics import TaskPrediction

__all__ = ["fit_xgb", "xgb_predictions"]

log = logging.getLogger(__name__)


def _candidates(task: TaskSamples) -> list[Any]:
    from tvm.s_tir import meta_schedule as ms

    from cost_model.features import replay_trace

    out = []
    for trace in task.traces:
        sch = replay_trace(task.workload, trace)
        out.append(ms.MeasureCandidate(sch, ms.arg_info.ArgInfo.from_prim_func(sch.mod["main"])))
    return out


def fit_xgb(train: Dataset, featurizer: Any, seed: int = 0) -> Any:
    """An `XGBModel` trained once on every task of `train` (the `featurizer` supplies the
    TuneContexts)."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    np.random.seed(seed)  # XGBModel draws its validation split from numpy's global state
    model = ms.cost_model.XGBModel(num_warmup_samples=0, adaptive_training=True, verbose_eval=0)
    for i, task in enumerate(train.tasks):
        # adaptive training retrains only when the data grew by a fifth since the last
        # training: hold it back until the last task, so XGBoost trains once on all of it
        model.last_train_size = 0 if i == len(train.tasks) - 1 else 1 << 60
        results = [
            ms.runner.RunnerResult([tvm.tirx.FloatImm("float64", float(s))], None)
            for s in task.latencies
        ]
        model.update(featurizer.context(task.workload), _candidates(task), results)
    return model


def xgb_predictions(model: Any, test: Dataset, featurizer: Any) -> list[TaskPrediction]:
    """Per-task predictions of a trained `XGBModel` as `TaskPrediction`s (score = -xgb)."""
    preds = []
    for task in test.tasks:
        score = model.predict(featurizer.context(task.workload), _candidates(task))
        preds.append(
            TaskPrediction(task.task_key, task.latencies, -np.asarray(score), None, task.weight)
        )
    return preds
