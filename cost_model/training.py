"""Training jobs: train the GNN on a device's trace files, score it and MetaSchedule's XGB
model on held-out models, and write the model and a metrics JSON (what
`ago-search train-cost-model DIR --out OUT` runs, through `ago_search.api.train_cost_model`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cost_model.configs.default import Config
from cost_model.input_pipeline import Dataset, load_dataset, split_by_models

__all__ = ["choose_held_out_models", "cross_validate_models", "train_cost_model"]

log = logging.getLogger(__name__)


def choose_held_out_models(dataset: Dataset, fraction: float = 0.25, seed: int = 0) -> list[str]:
    """A fixed, seeded choice of about `fraction` of the models (at least one, and never all)."""
    models = dataset.models
    if len(models) < 2:
        raise ValueError(
            f"the held-out-model split needs records of two models or more, found {models}: "
            "label tasks with models (models.json beside the traces, or task names "
            "'<model>/<group>')"
        )
    count = min(len(models) - 1, max(1, round(fraction * len(models))))
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(models, count, replace=False).tolist())


def train_cost_model(
    traces: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    held_out_models: Sequence[str] | None = None,
    config: Config | None = None,
    device_key: str | None = None,
    compare_xgb: bool = True,
    info: dict[str, Any] | None = None,
    dataset: Dataset | None = None,
    remeasured_only: bool = False,
) -> dict[str, Any]:
    """Train on every model but the held-out ones, evaluate on those, save to `out_dir`
    (`model.json`, `params.npz`, `metrics.json`); returns the metrics."""
    from cost_model.predictor import Predictor
    from cost_model.train import evaluate, train

    config = config or Config()
    started = time.perf_counter()
    if dataset is None:
        dataset = load_dataset(traces, device_key=device_key, remeasured_only=remeasured_only)
    load_seconds = time.perf_counter() - started
    if held_out_models is not None and len(held_out_models) == 0:
        held_out: list[str] = []  # train on everything (a model to ship); nothing to score
        train_set, test_set = dataset, Dataset((), dataset.target)
    else:
        held_out = list(held_out_models or choose_held_out_models(dataset, seed=config.seed))
        train_set, test_set = split_by_models(dataset, held_out)
        if not train_set.tasks or not test_set.tasks:
            raise ValueError(f"held-out models {held_out} leave an empty train or test set")
    result = train(config, train_set)
    from cost_model.input_pipeline import normalise_dataset

    gnn = (
        evaluate(
            result.model, normalise_dataset(test_set, result.feature_stats), result.target_stats
        )
        if test_set.tasks
        else None
    )
    metrics: dict[str, Any] = {
        "held_out_models": held_out,
        "train": {
            "tasks": len(train_set.tasks),
            "records": len(train_set),
            "models": train_set.models,
        },
        "test": {"tasks": len(test_set.tasks), "records": len(test_set)},
        "gnn": gnn,
        "train_seconds": result.seconds,
        "featurize_seconds": load_seconds,
        "history": result.history,
        "config": config.to_json(),
    }
    if compare_xgb and test_set.tasks:
        from cost_model.metrics import evaluate_tasks
        from cost_model.xgb_baseline import fit_xgb, xgb_predictions

        t0 = time.perf_counter()
        xgb = fit_xgb(train_set, seed=config.seed)
        metrics["xgb"] = evaluate_tasks(xgb_predictions(xgb, test_set))
        metrics["xgb_seconds"] = time.perf_counter() - t0
    predictor = Predictor(
        config,
        result.model,
        result.feature_stats,
        result.target_stats,
        {
            **(info or {}),
            "trained_on_models": train_set.models,
            "records": len(train_set),
            "held_out_models": held_out,
        },
    )
    out = predictor.save(out_dir)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    log.info("cost model saved to %s: gnn %s", out, gnn)
    return metrics


def _mean_metrics(rows: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name in rows[0]:
        values = [r[name] for r in rows if r.get(name) is not None]
        out[name] = float(np.mean(values)) if values else None
    return out


def cross_validate_models(
    dataset: Dataset, config: Config | None = None, compare_xgb: bool = True
) -> dict[str, Any]:
    """Leave-one-model-out: for each model, train on the others and score on it (GNN and,
    with `compare_xgb`, XGB); per-fold metrics and their unweighted means over folds."""
    from cost_model.input_pipeline import normalise_dataset
    from cost_model.train import evaluate, train

    config = config or Config()
    folds: dict[str, Any] = {}
    for model_name in dataset.models:
        train_set, test_set = split_by_models(dataset, [model_name])
        if not train_set.tasks or not test_set.tasks:
            continue
        result = train(config, train_set)
        fold: dict[str, Any] = {
            "gnn": evaluate(
                result.model,
                normalise_dataset(test_set, result.feature_stats),
                result.target_stats,
            )
        }
        if compare_xgb:
            from cost_model.metrics import evaluate_tasks
            from cost_model.xgb_baseline import fit_xgb, xgb_predictions

            xgb = fit_xgb(train_set, seed=config.seed)
            fold["xgb"] = evaluate_tasks(xgb_predictions(xgb, test_set))
        folds[model_name] = fold
        log.info("fold %s: %s", model_name, fold)
    summary: dict[str, Any] = {"folds": folds}
    for who in ("gnn", "xgb"):
        rows = [f[who] for f in folds.values() if who in f]
        if rows:
            summary[who] = _mean_metrics(rows)
    return summary
