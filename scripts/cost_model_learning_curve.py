"""Learning curve of the cost models: held-out-model metrics against the amount of training data.

    .venv/bin/python scripts/cost_model_learning_curve.py --remeasured-only
    .venv/bin/python scripts/cost_model_learning_curve.py --remeasured-only --gnn 0.5,1 \
        --axis tasks --json results/cost_model_learning_curve.gnn.json

Says whether a cost model is short of traces or of something else, and so how many more
records `ago-search collect` would have to gather on a device. The same leave-one-model-out
folds as scripts/cost_model_report.py; in each fold the training set (every other model's
tasks) is cut to a fraction of itself, and the models are trained on the cut and scored on the
whole held-out model:

- `--axis tasks`: a random fraction of the training tasks, each with all its records;
- `--axis candidates`: every training task, each with a random fraction of its records.

XGB (MetaSchedule's XGBModel with its training step fixed, cost_model/xgb.py) runs at
every fraction of --fractions for each of --seeds cuts; the GNN, which takes minutes per fold,
at the fractions of --gnn (one cut, seed 0). Both train under the host's shared CPU lease,
so a collection or tuning run on this machine measures in between, never beside it.

Two reference points beside the curve (--references):

- measurement ceiling: `ago-search remeasure` timed each schedule in two interleaved rounds;
  the metrics of round 1's ranking scored against round 2's say how well any model could do
  against labels that noisy (the same task weights and mean over models as the folds);
- unseen tasks of seen models: XGB over 5 random folds of tasks instead of whole models, which
  separates "a task never seen" from "a model never seen".

Prints one line per (model, fraction) with the metrics averaged over held-out models and over
cuts; writes every fold's figures to --json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cost_model.configs.default import Config  # noqa: E402
from cost_model.input_pipeline import (  # noqa: E402
    Dataset,
    load_dataset,
    normalise_dataset,
    remeasure_disturbed,
    split_by_models,
    split_by_tasks,
    trace_files,
)
from cost_model.metrics import TaskPrediction, evaluate_tasks  # noqa: E402

log = logging.getLogger("cost_model_learning_curve")

METRICS = ("pairwise_accuracy", "kendall_tau", "top1_peak", "top5_peak")


def cut(train: Dataset, fraction: float, axis: str, seed: int) -> Dataset:
    """`fraction` of `train`'s tasks (axis "tasks") or of each task's records ("candidates"),
    drawn at random with `seed`; a task keeps at least 2 records so it still ranks."""
    if fraction >= 1.0:
        return train
    rng = np.random.default_rng(seed)
    if axis == "tasks":
        n = max(1, round(fraction * len(train.tasks)))
        keep = sorted(rng.choice(len(train.tasks), n, replace=False))
        return Dataset(tuple(train.tasks[i] for i in keep), train.target)
    tasks = []
    for task in train.tasks:
        n = max(2, round(fraction * len(task)))
        idx = sorted(rng.choice(len(task), min(n, len(task)), replace=False))
        tasks.append(
            dataclasses.replace(
                task,
                graphs=tuple(task.graphs[i] for i in idx),
                latencies=np.asarray(task.latencies)[idx],
                traces=tuple(task.traces[i] for i in idx),
            )
        )
    return Dataset(tuple(tasks), train.target)


def score_xgb(train: Dataset, test: Dataset, seed: int) -> dict[str, Any]:
    from cost_model.xgb_baseline import fit_xgb, xgb_predictions

    return evaluate_tasks(xgb_predictions(fit_xgb(train, seed=seed), test))


def score_gnn(train: Dataset, test: Dataset, config: Config) -> dict[str, Any]:
    from cost_model.train import evaluate
    from cost_model.train import train as train_gnn

    result = train_gnn(config, train)  # takes the shared lease a step at a time
    return evaluate(
        result.model, normalise_dataset(test, result.feature_stats), result.target_stats
    )


def _mean_over_models(dataset: Dataset, by_task: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Task-weighted metrics per model, then their mean over models (as the report does)."""
    per_model = []
    for model in dataset.models:
        tasks = [
            by_task[t.task_key]
            for t in dataset.tasks
            if model in t.models and t.task_key in by_task
        ]
        if tasks:
            per_model.append(evaluate_tasks(tasks))
    return {m: float(np.mean([r[m] for r in per_model])) for m in METRICS}


def measurement_ceiling(dataset: Dataset, traces: list[str]) -> dict[str, Any]:
    """Metrics of each schedule's first re-measured round as a prediction of its second."""
    from ago_search.database import read_jsonl

    rounds: dict[str, list[tuple[float, float]]] = {}
    for path in traces:
        for file in trace_files(Path(path)):
            for line in read_jsonl(file):
                info = (line.get("extra") or {}).get("remeasured") or {}
                if line["kind"] != "record" or line["status"] != "ok" or remeasure_disturbed(line):
                    continue
                if len(info.get("rounds") or ()) >= 2:
                    rounds.setdefault(line["task_key"], []).append(tuple(info["rounds"][:2]))
    by_task = {}
    for task in dataset.tasks:
        pairs = rounds.get(task.task_key, [])
        if len(pairs) >= 5:
            first, second = np.asarray(pairs).T
            by_task[task.task_key] = TaskPrediction(task.task_key, second, first, None, task.weight)
    return {"tasks": len(by_task), **_mean_over_models(dataset, by_task)}


def unseen_tasks(dataset: Dataset, folds: int = 5, seed: int = 0) -> dict[str, Any]:
    """XGB scored on tasks it never saw, of models it saw: random folds of tasks."""
    from cost_model.xgb_baseline import fit_xgb, xgb_predictions

    keys = [t.task_key for t in dataset.tasks]
    np.random.default_rng(seed).shuffle(keys)
    by_task: dict[str, Any] = {}
    for k in range(folds):
        train, test = split_by_tasks(dataset, keys[k::folds])
        for p in xgb_predictions(fit_xgb(train, seed=seed), test):
            by_task[p.task_key] = p
    return {"folds": folds, **_mean_over_models(dataset, by_task)}


def summarise(rows: list[dict[str, Any]]) -> dict[tuple[str, float], dict[str, float]]:
    out: dict[tuple[str, float], dict[str, float]] = {}
    for key in sorted({(r["model"], r["fraction"]) for r in rows}):
        mine = [r for r in rows if (r["model"], r["fraction"]) == key]
        # mean over held-out models of each cut, then over cuts
        per_seed = {}
        for seed in sorted({r["seed"] for r in mine}):
            folds = [r for r in mine if r["seed"] == seed]
            per_seed[seed] = {m: float(np.mean([f["metrics"][m] for f in folds])) for m in METRICS}
        out[key] = {m: float(np.mean([s[m] for s in per_seed.values()])) for m in METRICS}
        out[key]["spread_top1"] = float(np.ptp([s["top1_peak"] for s in per_seed.values()]))
        out[key]["train_records"] = float(np.mean([r["train_records"] for r in mine]))
        out[key]["cuts"] = len(per_seed)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", nargs="+", default=[str(REPO / "datasets/traces/host")])
    parser.add_argument("--remeasured-only", action="store_true")
    parser.add_argument("--axis", choices=("tasks", "candidates"), default="tasks")
    parser.add_argument("--fractions", default="0.125,0.25,0.5,1")
    parser.add_argument("--seeds", type=int, default=3, help="random cuts per XGB fraction")
    parser.add_argument("--gnn", default="", help="fractions at which to train the GNN too")
    parser.add_argument("--folds", default=None, help="comma-separated held-out models")
    parser.add_argument(
        "--references",
        action="store_true",
        help="also the measurement ceiling and XGB on unseen tasks of seen models",
    )
    parser.add_argument(
        "--json", type=Path, default=REPO / "results" / "cost_model_learning_curve.json"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)

    dataset = load_dataset(args.traces, remeasured_only=args.remeasured_only)
    models = args.folds.split(",") if args.folds else dataset.models
    fractions = [float(f) for f in args.fractions.split(",")]
    gnn_fractions = [float(f) for f in args.gnn.split(",")] if args.gnn else []
    config = Config()
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for held_out in models:
        train, test = split_by_models(dataset, [held_out])
        jobs = [("xgb", f, s) for f in fractions for s in range(args.seeds if f < 1 else 1)]
        jobs += [("gnn", f, 0) for f in gnn_fractions]
        for who, fraction, seed in jobs:
            part = cut(train, fraction, args.axis, seed)
            t0 = time.perf_counter()
            gnn = who == "gnn"
            metrics = score_gnn(part, test, config) if gnn else score_xgb(part, test, seed)
            rows.append(
                {
                    "held_out": held_out,
                    "model": who,
                    "fraction": fraction,
                    "seed": seed,
                    "train_tasks": len(part.tasks),
                    "train_records": len(part),
                    "seconds": time.perf_counter() - t0,
                    "metrics": {m: metrics[m] for m in METRICS},
                }
            )
            log.info(
                "%s %s %.3f seed %d: %d records, top-1 %.3f (%.0f s)",
                held_out, who, fraction, seed, len(part), metrics["top1_peak"],
                rows[-1]["seconds"],
            )  # fmt: skip
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"axis": args.axis, "rows": rows}, indent=1) + "\n")
    summary = summarise(rows)
    references = {}
    if args.references:
        references = {
            "measurement_ceiling": measurement_ceiling(dataset, args.traces),
            "xgb_unseen_tasks_of_seen_models": unseen_tasks(dataset),
        }
    print(
        f"{len(dataset)} records, {len(dataset.tasks)} tasks; axis {args.axis}; "
        f"{len(models)} held-out models; {time.perf_counter() - started:.0f} s"
    )
    print("| model | fraction | train records (mean) | pairwise | tau | top-1 | top-5 | cuts |")
    print("|---|---|---|---|---|---|---|---|")
    for (who, fraction), s in summary.items():
        print(
            f"| {who} | {fraction:g} | {s['train_records']:.0f} | {s['pairwise_accuracy']:.3f} "
            f"| {s['kendall_tau']:.3f} | {s['top1_peak']:.3f} | {s['top5_peak']:.3f} "
            f"| {s['cuts']} (top-1 spread {s['spread_top1']:.3f}) |"
        )
    for name, ref in references.items():
        print(
            f"{name}: pairwise {ref['pairwise_accuracy']:.3f}, tau {ref['kendall_tau']:.3f}, "
            f"top-1 {ref['top1_peak']:.3f}, top-5 {ref['top5_peak']:.3f}"
        )
    args.json.write_text(
        json.dumps(
            {
                "axis": args.axis,
                "records": len(dataset),
                "tasks": len(dataset.tasks),
                "remeasured_only": args.remeasured_only,
                "rows": rows,
                "references": references,
                "summary": [{"model": w, "fraction": f, **s} for (w, f), s in summary.items()],
            },
            indent=1,
        )
        + "\n"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
