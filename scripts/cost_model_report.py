"""Held-out-model report of the cost model: the GNN against MetaSchedule's XGB model.

    .venv/bin/python scripts/cost_model_report.py                  # datasets/traces/host
    .venv/bin/python scripts/cost_model_report.py --folds bert_tiny,mobilenetv2 --steps 300

Leave one model out: for each zoo model with records (or each of --folds), the GNN and
MetaSchedule's XGBModel (with its pack-sum training step fixed, cost_model/xgb.py;
the model as MetaSchedule ships it diverges on our many-store candidates and is scored on a
last row of its own) are trained on the tasks of every other model (a task shared with the
held-out model is never trained on) and scored on the held-out model's tasks: pairwise
accuracy, Kendall tau, top-1 and top-5 peak score, averaged over tasks weighted by their calls
per inference (cost_model/metrics.py). Same records, same features for both (the XGB baseline
gets the store rows of the GNN's graphs). Also measured: the GNN's training time per fold and
its inference throughput on this CPU, predicting alone and with featurisation (what the
tuning plug-in pays per candidate).

Prints a markdown table; writes --json (default results/cost_model_report.json) and, with
--readme, replaces the table between `<!-- cost-model-table:start -->` and
`<!-- cost-model-table:end -->`.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

from ago_search.report import markdown_table, replace_table  # noqa: E402
from cost_model.configs.default import Config  # noqa: E402
from cost_model.input_pipeline import (  # noqa: E402
    Dataset,
    load_dataset,
    normalise_dataset,
    split_by_models,
)
from cost_model.metrics import evaluate_tasks  # noqa: E402

log = logging.getLogger("cost_model_report")

START, END = "<!-- cost-model-table:start -->", "<!-- cost-model-table:end -->"
METRICS = ("pairwise_accuracy", "kendall_tau", "top1_peak", "top5_peak")
SHORT = {"pairwise_accuracy": "pairwise", "kendall_tau": "tau", "top1_peak": "top-1",
         "top5_peak": "top-5"}  # fmt: skip


def run_fold(dataset: Dataset, held_out: str, config: Config) -> dict[str, Any]:
    """The GNN, our XGB (MetaSchedule's XGBModel with its training step fixed) and XGBModel
    as MetaSchedule ships it, trained on every model but `held_out` and scored on it."""
    from cost_model.train import evaluate, train
    from cost_model.xgb_baseline import fit_xgb, xgb_predictions

    train_set, test_set = split_by_models(dataset, [held_out])
    result = train(config, train_set)
    gnn = evaluate(
        result.model, normalise_dataset(test_set, result.feature_stats), result.target_stats
    )
    started = time.perf_counter()
    xgb_model = fit_xgb(train_set, seed=config.seed)
    xgb = evaluate_tasks(xgb_predictions(xgb_model, test_set))
    xgb_seconds = time.perf_counter() - started
    # MetaSchedule's XGBModel as it ships (its training diverges on many-store candidates)
    shipped = evaluate_tasks(xgb_predictions(fit_xgb(train_set, config.seed, "xgb-ms"), test_set))
    return {
        "held_out": held_out,
        "train_tasks": len(train_set.tasks),
        "train_records": len(train_set),
        "test_tasks": len(test_set.tasks),
        "test_records": len(test_set),
        "gnn": gnn,
        "xgb": xgb,
        "xgb_ms": shipped,
        "gnn_train_seconds": result.seconds,
        "xgb_train_seconds": xgb_seconds,
        "_result": result,
    }


def throughput(dataset: Dataset, fold: dict[str, Any], repeats: int = 3) -> dict[str, float]:
    """Candidates per second: the trained GNN predicting standardised graphs (batches of
    256), and featurise (replay + MetaSchedule's extractor + graph) then predict, as the
    tuning plug-in does for a round's population."""
    from cost_model.features import Featurizer
    from cost_model.predictor import Predictor
    from cost_model.train import predict_normalised

    result = fold["_result"]
    graphs = [result.feature_stats.apply(g) for g in dataset.all_graphs()[:4096]]
    predict_normalised(result.model, graphs)  # compile every bucket once
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        predict_normalised(result.model, graphs)
        times.append(time.perf_counter() - started)
    predict_rate = len(graphs) / statistics.median(times)

    predictor = Predictor(Config(), result.model, result.feature_stats, result.target_stats, {})
    task = max(dataset.tasks, key=len)
    featurizer = Featurizer(json.loads(dataset.target))
    featurizer.from_traces(task.workload, task.traces[:8])  # warm: context, jit
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        predictor.predict([g for g in featurizer.from_traces(task.workload, task.traces)])
        times.append(time.perf_counter() - started)
    end_to_end = len(task.traces) / statistics.median(times)
    return {
        "predict_candidates_per_s": predict_rate,
        "featurize_and_predict_candidates_per_s": end_to_end,
        "end_to_end_task": task.name or task.task_key,
        "end_to_end_candidates": len(task.traces),
    }


def _mean(rows: list[dict[str, Any]], who: str, name: str) -> float | None:
    values = [r[who][name] for r in rows if r[who].get(name) is not None]
    return float(np.mean(values)) if values else None


def markdown(report: dict[str, Any]) -> str:
    head = ["held-out model", "tasks", "records"]
    for name in METRICS:
        head += [f"{SHORT[name]} GNN", f"{SHORT[name]} XGB"]

    def cells(values: dict[str, Any]) -> list[str]:
        out = []
        for name in METRICS:
            g, x = values["gnn"][name], values["xgb"][name]
            fmt = [f"{v:.3f}" if v is not None else "-" for v in (g, x)]
            if g is not None and x is not None and g > x:
                fmt[0] = f"**{fmt[0]}**"
            elif g is not None and x is not None and x > g:
                fmt[1] = f"**{fmt[1]}**"
            out += fmt
        return out

    rows = [
        [row["held_out"], row["test_tasks"], row["test_records"], *cells(row)]
        for row in report["folds"]
    ]
    mean = report["mean"]
    rows.append(["**mean over models**", "", report["records"], *cells(mean)])
    shipped = [mean["xgb_ms"][name] for name in METRICS]
    rows.append(
        ["*mean, XGB as MetaSchedule ships it*", "", ""]
        + [c for v in shipped for c in ("", f"*{v:.3f}*" if v is not None else "-")]
    )
    return markdown_table(head, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", nargs="+", default=[str(REPO / "datasets/traces/host")])
    parser.add_argument("--folds", default=None, help="comma-separated held-out models")
    parser.add_argument("--steps", type=int, default=None, help="GNN training steps per fold")
    parser.add_argument("--config", default=None, help="JSON of Config fields to change")
    parser.add_argument("--json", type=Path, default=REPO / "results" / "cost_model_report.json")
    parser.add_argument("--readme", type=Path, default=None)
    parser.add_argument(
        "--remeasured-only",
        action="store_true",
        help="only schedules whose label `ago-search remeasure` made",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)

    config = Config()
    if args.config:
        config = config.replace(**json.loads(args.config))
    if args.steps:
        config = config.replace(num_steps=args.steps)
    started = time.perf_counter()
    dataset = load_dataset(args.traces, remeasured_only=args.remeasured_only)
    load_s = time.perf_counter() - started
    models = args.folds.split(",") if args.folds else dataset.models
    log.info(
        "%d records, %d tasks, models %s (loaded in %.0f s)",
        len(dataset),
        len(dataset.tasks),
        dataset.models,
        load_s,
    )
    folds = []
    for name in models:
        fold = run_fold(dataset, name, config)
        folds.append(fold)
        log.info(
            "held out %s: gnn %s | xgb %s (%.0f s)",
            name,
            {k: round(fold["gnn"][k], 3) for k in METRICS if fold["gnn"][k] is not None},
            {k: round(fold["xgb"][k], 3) for k in METRICS if fold["xgb"][k] is not None},
            fold["gnn_train_seconds"],
        )
    speed = throughput(dataset, folds[0])
    report = {
        "traces": args.traces,
        "remeasured_only": args.remeasured_only,
        "records": len(dataset),
        "tasks": len(dataset.tasks),
        "models": dataset.models,
        "config": config.to_json(),
        "load_seconds": load_s,
        "folds": [{k: v for k, v in f.items() if not k.startswith("_")} for f in folds],
        "mean": {
            who: {name: _mean(folds, who, name) for name in (*METRICS, "mape")}
            for who in ("gnn", "xgb", "xgb_ms")
        },
        "gnn_train_seconds_median": statistics.median(f["gnn_train_seconds"] for f in folds),
        "xgb_train_seconds_median": statistics.median(f["xgb_train_seconds"] for f in folds),
        **speed,
    }
    table = markdown(report)
    print(table)
    print(
        f"\n{report['records']} records, {report['tasks']} tasks, {len(report['models'])} "
        f"models; GNN training {report['gnn_train_seconds_median']:.0f} s per fold "
        f"({config.num_steps} steps, median), XGB {report['xgb_train_seconds_median']:.0f} s; "
        f"GNN inference {speed['predict_candidates_per_s']:.0f} candidates/s predicting, "
        f"{speed['featurize_and_predict_candidates_per_s']:.0f} candidates/s with "
        "featurisation"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")
    if args.readme:
        replace_table(args.readme, START, END, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
