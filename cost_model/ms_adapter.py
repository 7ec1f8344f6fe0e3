"""The GNN as a MetaSchedule cost model (`PyCostModel`), so loop search inside a group is
guided by the same model as plan search across groups.

`predict` returns MetaSchedule's convention, higher is better, in (0, 1] like XGBModel's
normalised throughput. `update` keeps the measured candidates (ok results only) and fine-tunes
the model for a few steps on batches drawn from what it has seen.

The pretrained GNN knows schedules in general; what a tuning run measures says how this
task's schedules behave on this device. So beside the GNN an online XGBoost model (MetaSchedule's
`XGBModel`) learns from every measurement of the run, and `predict` blends the two per task:
standardised scores (GNN: minus predicted log latency; XGB: log of its normalised throughput),
the XGB's weighted n / (n + blend_trials) after n ok measurements of the task. With nothing
measured yet the ranking is the GNN's alone; after many measurements it is mostly the task's own
model's. `blend_trials=None` turns the blend off (the GNN with its fine-tuning only).
`cost_model.factory.make_cost_model("gnn")` makes one from the `--cost-model` name.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from cost_model.features import STORE_DIM, CandidateGraph, Featurizer
from cost_model.input_pipeline import Batch, padded_sizes
from cost_model.predictor import Predictor, load_pretrained

__all__ = ["GNNCostModel"]

log = logging.getLogger(__name__)

_FAILED = 1e9  # seconds at or above which a result is a failure (MetaSchedule uses 1e10)


@derived_object
class GNNCostModel(ms.cost_model.PyCostModel):
    """predictor: a trained `Predictor` (default: the shipped pretrained one).
    online_steps: fine-tuning steps per `update` (0: never fine-tune online).
    blend_trials: ok measurements of a task at which the online XGB's ranking weighs as much
    as the GNN's (None: no online XGB); the XGB has no say before it is trained on
    `xgb_warmup_samples` measurements in all (MetaSchedule's XGBModel predicts uniform noise
    before that)."""

    def __init__(
        self,
        predictor: Predictor | None = None,
        online_steps: int | None = None,
        learning_rate: float | None = None,
        max_buffer: int = 4096,
        seed: int = 0,
        blend_trials: float | None = 32.0,
        num_tuning_cores: int | None = None,
        xgb_warmup_samples: int = 100,
    ) -> None:
        super().__init__()
        if blend_trials is not None and blend_trials <= 0:
            raise ValueError(f"blend_trials must be > 0 or None, got {blend_trials}")
        self.predictor = predictor if predictor is not None else load_pretrained()
        config = self.predictor.config
        self.online_steps = config.online_steps if online_steps is None else online_steps
        self.learning_rate = learning_rate or config.online_learning_rate
        self.max_buffer = max_buffer
        self._rng = np.random.default_rng(seed)
        self._featurizer: Featurizer | None = None
        self._optimizer: Any = None
        # task (structural hash of the workload) -> [(graph standardised, normalised y)]
        self._seen: dict[int, list[tuple[CandidateGraph, float]]] = {}
        # the model as loaded, for tasks the run has not measured yet (`predict`); made when
        # the first fine-tuning step is about to change the model
        self._base: Predictor | None = None
        self.calls = {"predict": 0, "update": 0}  # how often MetaSchedule asked: for logs
        self.blend_trials = blend_trials
        self._measured: dict[int, int] = {}  # task -> ok measurements seen
        self._xgb: Any = None
        if blend_trials is not None:
            from ago_search.devices import host_num_cores

            cores = num_tuning_cores or host_num_cores()
            from cost_model.xgb import PackSumXGBModel

            self._xgb = PackSumXGBModel(
                num_tuning_cores=cores, num_warmup_samples=xgb_warmup_samples
            )

    def _features(self, context: Any, candidates: list) -> list[CandidateGraph]:
        return [p.graph() for p in self._store_parts(context, candidates)]

    def _store_parts(self, context: Any, candidates: list) -> list[Any]:
        if self._featurizer is None:
            self._featurizer = Featurizer(context.target)
        return self._featurizer.store_parts(context, candidates)

    def predict(self, context: Any, candidates: list) -> np.ndarray:
        self.calls["predict"] += 1
        if not candidates:
            return np.zeros(0, np.float64)
        # MetaSchedule's per-store features, extracted once (each candidate lowered once):
        # the GNN's graphs are built on them, and the online XGB reads their store columns,
        # which are what its own extractor ("per-store-feature") would give
        parts = self._store_parts(context, candidates)
        pred = self._predictor_for(context).predict([p.graph() for p in parts])
        score = -np.asarray(pred, np.float64)  # higher is better, log scale
        weight = self.xgb_weight(context)
        if weight > 0 and len(candidates) > 1:
            throughput = self._xgb_predict(parts)
            xgb = np.log(np.clip(throughput, 1e-9, None))
            score = (1 - weight) * _standardised(score) + weight * _standardised(xgb)
        return np.exp(score - score.max()).astype(np.float64)

    def _predictor_for(self, context: Any) -> Predictor:
        """The fine-tuned model for a task it was fine-tuned on, the model as loaded for any
        other. Fine-tuned on a few tasks' rounds, the GNN ranked the next, unseen task's
        candidates worse: MobileNetV2's six heaviest convs in NCHW, NHWC and NCHW16c, one round
        of 8 each in a row with one model, best of the round 87-222 us without fine-tuning and
        1.2-2.8x slower with it on the three tuned after an NCHW one (the NHWC 1x1 conv 247 us
        against 87, six of its eight candidates near 1 ms). Within one layout it is a wash:
        ResNet-18's eight heaviest NCHW convs in a row (`scripts/first_rounds.py`), first-round
        bests summed 18.60 ms fine-tuned and 16.40 ms as loaded, per task 0.98x (geometric
        mean); another eight of its convs, 14.16 against 9.76 ms. (Which model ranked a new
        task's measured round better in hindsight is no guide: the fine-tuned one did on each
        of those eight after the first, and a guide that followed that verdict summed 12.20.)"""
        import tvm_ffi

        if self._base is None or int(tvm_ffi.structural_hash(context.mod)) in self._seen:
            return self.predictor
        return self._base

    def _xgb_predict(self, parts: list[Any]) -> np.ndarray:
        """The online XGB's normalised throughputs (MetaSchedule's `XGBModel.predict`) on the
        store columns of the features already extracted."""
        inst = self._xgb._inst  # the Python object behind the FFI one (trained: xgb_weight)
        xs = [np.ascontiguousarray(p.features[:, :STORE_DIM]) for p in parts]
        return np.asarray(inst._predict(xs=xs), np.float64)

    def xgb_weight(self, context: Any) -> float:
        """The online XGB's share of the ranking for this task now (0 without measurements)."""
        import tvm_ffi

        if self._xgb is None:
            return 0.0
        inst = self._xgb._inst
        if inst.booster is None or inst.data_size < inst.num_warmup_samples:
            return 0.0  # before its warm-up samples XGBModel predicts uniform noise
        n = self._measured.get(int(tvm_ffi.structural_hash(context.mod)), 0)
        return n / (n + self.blend_trials) if n else 0.0

    def update(self, context: Any, candidates: list, results: list) -> None:
        import tvm_ffi

        self.calls["update"] += 1
        ok = []
        for i, result in enumerate(results):
            secs = [float(s) for s in (result.run_secs or [])]
            if result.error_msg is None and secs and max(secs) < _FAILED:
                ok.append((i, float(np.median(secs))))
        key = int(tvm_ffi.structural_hash(context.mod))
        if self._xgb is not None and candidates:
            self._xgb._inst.update(context, candidates, results)
            self._measured[key] = self._measured.get(key, 0) + len(ok)
        if not ok or self.online_steps <= 0:
            return
        graphs = self._features(context, [candidates[i] for i, _ in ok])
        stats, target = self.predictor.feature_stats, self.predictor.target_stats
        seen = self._seen.setdefault(key, [])
        for graph, (_, secs) in zip(graphs, ok, strict=True):
            seen.append((stats.apply(graph), float(target.normalise(np.log(secs)))))
        del seen[: max(0, len(seen) - self.max_buffer)]
        self._fine_tune(key)

    def _fine_tune(self, key: int) -> None:
        from flax import nnx

        from cost_model.train import fine_tune, make_optimizer

        if self._base is None:
            self._base = dataclasses.replace(self.predictor, model=nnx.clone(self.predictor.model))
        if self._optimizer is None:
            self._optimizer = make_optimizer(
                self.predictor.model, self.learning_rate, self.predictor.config.weight_decay
            )
        per_task = self.predictor.config.candidates_per_task
        keys = list(self._seen)
        batches = []
        for _ in range(self.online_steps):
            # the task just measured, plus one other seen task if there is one
            chosen = [key]
            others = [k for k in keys if k != key]
            if others:
                chosen.append(others[int(self._rng.integers(len(others)))])
            graphs, ys, tids = [], [], []
            for tid, k in enumerate(chosen):
                pool = self._seen[k]
                idx = self._rng.choice(len(pool), min(per_task, len(pool)), replace=False)
                graphs += [pool[i][0] for i in idx]
                ys += [pool[i][1] for i in idx]
                tids += [tid] * len(idx)
            if len(graphs) < 2:
                return
            n_graph = 2 * per_task
            nodes, edges, n_graph_pad = padded_sizes(graphs, n_graph)
            # generous minimum sizes: the steps of a tuning run share one compiled shape
            nodes, edges = max(nodes, 1024), max(edges, 4096)
            from cost_model.features import pad_batch

            y = np.zeros(n_graph_pad, np.float32)
            y[: len(ys)] = ys
            task = np.full(n_graph_pad, -1, np.int32)
            task[: len(tids)] = tids
            batches.append(Batch(pad_batch(graphs, nodes, edges, n_graph_pad), y, task))
        config = self.predictor.config
        losses = fine_tune(
            self.predictor.model,
            self._optimizer,
            batches,
            config.regression_weight,
            config.lambda_scale,
            config.lambda_discount,
        )
        if losses:
            log.debug("GNN online update: loss %.4f -> %.4f", losses[0], losses[-1])

    def save(self, path: str) -> None:
        self.predictor.save(Path(path))

    def load(self, path: str) -> None:
        self.predictor = Predictor.load(Path(path))
        self._optimizer = None
        self._base = None


def _standardised(values: np.ndarray) -> np.ndarray:
    spread = values.std()
    return (values - values.mean()) / spread if spread > 0 else np.zeros_like(values)
