"""Layouts at equal wall time: the TVM plan of each model with every group in one layout, each
tuned by our scheduler (GNN-guided, as `tune-tasks`) for the same seconds, then all builds
timed side by side in one `bench_model` call beside ONNX Runtime and TVM's default build,
every output checked against ORT's.

    .venv/bin/python scripts/layout_bench.py --models resnet18,mobilenetv2 --budget 5m

The layouts are `ago_search.layout.layout_choices(target)`: NCHW, NHWC and NCHW{x}c, x the
target's float32 vector lanes. Resumable: each (model, layout) tuning is a database under
results/layout_bench/MODEL/ and a finished one is skipped; the timing runs again. Writes
results/layout_bench.json; with --readme, the README's table between `<!-- layout-bench:start
-->` and `<!-- layout-bench:end -->`.

This is the first of issue 15's benchmark: one layout for the whole plan. The search choosing a
layout per group comes after it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

from bench_tuning import compile_from_db  # noqa: E402
from make_zoo import make_zoo  # noqa: E402

from ago_search.bench import ORT, TVM_DEFAULT, bench_model  # noqa: E402
from ago_search.database import TuningDatabase  # noqa: E402
from ago_search.devices import detect_host  # noqa: E402
from ago_search.layout import layout_choices  # noqa: E402
from ago_search.pipeline import load_planned, plan_model  # noqa: E402
from ago_search.report import markdown_table, replace_table  # noqa: E402
from ago_search.schedule.config import TuningConfig  # noqa: E402
from ago_search.schedule.results import task_results  # noqa: E402
from ago_search.schedule.tune import tune_tasks  # noqa: E402
from ago_search.search.budget import parse_budget  # noqa: E402
from ago_search.search.state import write_json_atomic  # noqa: E402

log = logging.getLogger("layout_bench")
START, END = "<!-- layout-bench:start -->", "<!-- layout-bench:end -->"
UNREACHABLE_TRIALS = 10**6


def _laid(planned, layout: str):
    """The TVM plan with every group that holds an activation in `layout` (`tvm/LAYOUT`)."""
    return planned if layout == "NCHW" else plan_model(planned.prepared, f"tvm/{layout}")


def tune_layout(planned, host, db: Path, budget_s: float, seed: int) -> dict[str, Any]:
    from cost_model.factory import make_cost_model

    done = db.with_suffix(".done.json")
    if done.exists():
        return json.loads(done.read_text())
    started = time.monotonic()
    tune_tasks(
        list(planned.tasks),
        host,
        db,
        TuningConfig(trials=UNREACHABLE_TRIALS, seed=seed),
        cost_model=make_cost_model("gnn", seed=seed),
        deadline=started + budget_s,
    )
    spent = time.monotonic() - started
    with TuningDatabase(db, read_only=True) as store:
        results = task_results(store, list(planned.tasks), host.key)
    info = {
        "tuning_s": spent,
        "tasks": len(results),
        "tuned_tasks": sum(1 for r in results if r.trials),
        "trials": sum(r.trials for r in results),
        "transforms": sum(1 for t in planned.tasks if "layout_transform" in t.name),
    }
    write_json_atomic(info, done)
    return info


def bench_one(name: str, entry: dict, args: argparse.Namespace, host) -> dict[str, Any]:
    shapes = {k: tuple(v) for k, v in entry["inputs"].items()}
    base = load_planned(str(args.zoo / entry["file"]), shapes, "tvm", host)
    work = args.work / name
    work.mkdir(parents=True, exist_ok=True)
    rows, builds = {}, {}
    for layout in layout_choices(host.tvm_target()):
        planned = _laid(base, layout)
        db = work / f"{layout}.db"
        log.info("%s %s: %d tasks, tuning %.0f s", name, layout, len(planned.tasks), args.budget_s)
        rows[layout] = tune_layout(planned, host, db, args.budget_s, args.seed)
        try:
            builds[layout] = compile_from_db(planned, db, host.key).executable
        except Exception as exc:  # one build failing costs its row, not the table
            log.exception("%s %s: the build failed", name, layout)
            rows[layout]["error"] = f"{type(exc).__name__}: {exc}"
    result = bench_model(base.imported, threads=[host.threads], builds=builds).to_json()
    runs = {r["runtime"]: r for r in result["runs"]}
    for layout, row in rows.items():
        run = runs.get(layout) or {}
        row["latency_s"] = (run.get("timing") or {}).get("median")
        row["verified"] = bool(run.get("verified"))
    return {
        "layouts": rows,
        "ort_s": (runs.get(ORT, {}).get("timing") or {}).get("median"),
        "tvm_default_s": (runs.get(TVM_DEFAULT, {}).get("timing") or {}).get("median"),
        "bench": result,
    }


def markdown(data: dict[str, Any]) -> str:
    head = ["model", "layout", "ms", "vs NCHW", "vs ORT", "tasks tuned", "trials", "transforms"]
    rows = []
    for name, model in data["models"].items():
        nchw = model["layouts"].get("NCHW", {}).get("latency_s")
        for layout, row in model["layouts"].items():
            ms = row.get("latency_s")
            rows.append(
                [
                    name,
                    layout,
                    f"{ms * 1e3:.3f}" if ms else "-",
                    f"{nchw / ms:.2f}x" if ms and nchw else "-",
                    f"{model['ort_s'] / ms:.2f}x" if ms and model.get("ort_s") else "-",
                    f"{row['tuned_tasks']}/{row['tasks']}",
                    str(row["trials"]),
                    str(row["transforms"]),
                ]
            )
        rows.append([name, "ORT", f"{model['ort_s'] * 1e3:.3f}", "", "", "", "", ""])
    return markdown_table(head, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet18,mobilenetv2")
    parser.add_argument("--budget", default="5m", help="tuning time per model and layout")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=REPO / "results" / "layout_bench")
    parser.add_argument("--zoo", type=Path, default=REPO / "datasets" / "zoo")
    parser.add_argument("--readme", type=Path)
    args = parser.parse_args(argv)
    args.budget_s = parse_budget(args.budget)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    manifest = make_zoo(args.zoo)["models"]
    host = detect_host()
    data: dict[str, Any] = {
        "device": host.key,
        "budget_s": args.budget_s,
        "threads": host.threads,
        "models": {},
    }
    for name in args.models.split(","):
        data["models"][name] = bench_one(name, manifest[name], args, host)
    out = REPO / "results" / "layout_bench.json"
    write_json_atomic(data, out)
    table = markdown(data)
    print(table)
    if args.readme:
        replace_table(args.readme, START, END, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
