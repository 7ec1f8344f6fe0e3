"""How well a cost model judges tasks across layouts: what the search's plan scores need.

    .venv/bin/python scripts/layout_estimates.py datasets/traces/host-rocketlake \
        --models shipped,/tmp/gnn_new --only-models mobilenetv2 [--json PATH]

A plan's score sums its tasks' estimates, each calibrated by one offset per layout
(`search/score.py`), so what counts is not only how a model ranks one task's schedules but how
its estimate of each task's best follows the measured best from task to task, within a layout
once that layout's offset is taken off. For each trace folder's tasks (their layout from the
folder's `tasks.json`: the seed they were collected from, "tvm/NHWC" -> NHWC) and each model:

- per layout: the median of log(predicted best) - log(measured best) (the offset a calibration
  takes off), the spread left after it (median absolute deviation of that difference, log), and
  Spearman's rank correlation of predicted vs measured best over the layout's tasks;
- all layouts with their offsets off: the same spread and rank correlation over every task;
- per task, the ranking of its schedules: pairwise accuracy and top-1 (`cost_model.metrics`),
  weighted by the tasks' calls.

"predicted best": the model's lowest predicted latency over the task's measured schedules (the
search's estimate takes a low quantile over schedules it samples; these are the ones measured).
"shipped" names the default model. A comparison of models on the same records, one run.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ago_search.report import markdown_table  # noqa: E402

log = logging.getLogger("layout_estimates")


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("traces", nargs="+", type=Path, help="trace folders with tasks.json")
    parser.add_argument("--models", default="shipped", help="comma-separated: shipped, or dirs")
    parser.add_argument("--only-models", default=None, help="only tasks of these zoo models")
    parser.add_argument("--json", type=Path, default=None)
    return parser.parse_args()


def _layouts(folders: list[Path]) -> dict[str, str]:
    out: dict[str, str] = {}
    for folder in folders:
        info = json.loads((folder / "tasks.json").read_text())
        for key, value in info.items():
            seeds = value.get("seeds") or []
            layouts = {s.partition("/")[2] or "NCHW" for s in seeds} or {"NCHW"}
            out[key] = "/".join(sorted(layouts))
    return out


def _spearman(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3:
        return None
    ra = np.argsort(np.argsort(a))
    rb = np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def _mad(values: list[float]) -> float | None:
    if not values:
        return None
    centre = statistics.median(values)
    return float(statistics.median(abs(v - centre) for v in values))


def evaluate(predictor, dataset, layouts: dict[str, str]) -> dict:
    from cost_model.metrics import TaskPrediction, evaluate_tasks

    rows = []
    preds = []
    for task in dataset.tasks:
        predicted = np.asarray(predictor.predict(list(task.graphs)), np.float64)
        measured = np.log(np.asarray(task.latencies, np.float64))
        rows.append(
            (layouts.get(task.task_key, "NCHW"), float(predicted.min()), float(measured.min()))
        )
        preds.append(
            TaskPrediction(task.task_key, task.latencies, predicted, np.exp(predicted), task.weight)
        )
    by_layout: dict[str, dict] = {}
    residuals_all: list[float] = []
    pred_all: list[float] = []
    meas_all: list[float] = []
    for layout in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == layout]
        diffs = [p - m for _, p, m in mine]
        offset = statistics.median(diffs)
        by_layout[layout] = {
            "tasks": len(mine),
            "offset": offset,
            "spread": _mad(diffs),
            "rank": _spearman([p for _, p, _ in mine], [m for _, _, m in mine]),
        }
        residuals_all += [d - offset for d in diffs]
        pred_all += [p - offset for _, p, _ in mine]
        meas_all += [m for _, _, m in mine]
    ranking = evaluate_tasks(preds)
    return {
        "layouts": by_layout,
        "all": {
            "tasks": len(rows),
            "spread": _mad(residuals_all),
            "rank": _spearman(pred_all, meas_all),
        },
        "ranking": ranking,
    }


def main() -> int:
    args = _parse()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from cost_model.input_pipeline import Dataset, load_dataset
    from cost_model.predictor import DEFAULT_PRETRAINED, Predictor, load_pretrained

    dataset = load_dataset([str(f) for f in args.traces], remeasured_only=True)
    if args.only_models:
        keep = set(args.only_models.split(","))
        dataset = Dataset(tuple(t for t in dataset.tasks if keep & set(t.models)), dataset.target)
    layouts = _layouts(args.traces)
    log.info("%d tasks, %d records", len(dataset.tasks), len(dataset))
    results = {}
    for name in args.models.split(","):
        predictor = load_pretrained() if name == "shipped" else Predictor.load(name)
        label = f"shipped ({DEFAULT_PRETRAINED})" if name == "shipped" else name
        results[label] = evaluate(predictor, dataset, layouts)
    table = []
    for label, result in results.items():
        for layout, row in [*result["layouts"].items(), ("all, offsets off", result["all"])]:
            table.append(
                {
                    "model": label,
                    "layout": layout,
                    "tasks": row["tasks"],
                    "offset (log)": f"{row['offset']:+.2f}" if "offset" in row else "",
                    "spread (log MAD)": f"{row['spread']:.3f}"
                    if row["spread"] is not None
                    else "-",
                    "rank corr": f"{row['rank']:.3f}" if row["rank"] is not None else "-",
                }
            )
        r = result["ranking"]
        table.append(
            {
                "model": label,
                "layout": "per task: pairwise / top-1",
                "tasks": len(dataset.tasks),
                "offset (log)": "",
                "spread (log MAD)": f"{r.get('pairwise_accuracy') or float('nan'):.3f}",
                "rank corr": f"{r.get('top1_peak') or float('nan'):.3f}",
            }
        )
    headers = list(table[0])
    print(markdown_table(headers, [[row[h] for h in headers] for row in table]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=float))
        print(f"written: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
