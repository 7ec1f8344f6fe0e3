"""Tuning with the GNN cost model against MetaSchedule's XGB model, at the same trial budget.

    .venv/bin/python scripts/bench_cost_model.py                     # MobileNetV2 and bert_tiny
    .venv/bin/python scripts/bench_cost_model.py --models bert_tiny --trials-per-task 4

Per model (TVM's default fusion as the plan, the host as the device), three tuning runs that
differ only in the cost model: same scheduler (ours), same search (EvolutionarySearch,
population 128), same seed, same budget, each in a database of its own:

- "xgb-ms": MetaSchedule's XGBModel as it ships, trained online from scratch, as MetaSchedule
  uses it;
- "xgb": the same with its training step fixed for many-store candidates (our tuning's
  default, cost_model/xgb.py);
- "gnn": our GNN, trained beforehand on the traces of every *other* zoo model (the model
  being tuned is held out, so no task of it was seen), then updated online like XGB.

The latency reached at 25%, 50% and 100% of the budget is the model's latency estimated from
the database at that point of the run: sum over tasks of calls x best verified kernel so far
(the untuned kernel where no tuned one exists yet). At 100% both are also built and timed end
to end in one benchmark, each checked against ONNX Runtime.

Resumable: databases, held-out GNNs and a state file live in --work (default
results/bench_cost_model/). Prints a markdown table; writes --json (default
results/bench_cost_model.json).
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

from bench_tuning import compile_from_db, tvm_plan  # noqa: E402
from make_zoo import make_zoo  # noqa: E402

from ago_search.bench import ORT, bench_model  # noqa: E402
from ago_search.database import Status, TuningDatabase  # noqa: E402
from ago_search.devices import detect_host  # noqa: E402
from ago_search.report import markdown_table  # noqa: E402
from ago_search.schedule.config import TuningConfig  # noqa: E402
from ago_search.schedule.results import SOURCE_UNTUNED  # noqa: E402
from ago_search.schedule.tune import tune_tasks  # noqa: E402

log = logging.getLogger("bench_cost_model")

DEFAULT_MODELS = ("mobilenetv2", "bert_tiny")
COST_MODELS = ("xgb-ms", "xgb", "gnn")
FRACTIONS = (0.25, 0.5, 1.0)


def held_out_gnn(
    name: str, traces: list[str], work: Path, steps: int | None, remeasured_only: bool = False
) -> Path:
    """A GNN trained on every zoo model's traces but `name`'s (trained once, kept)."""
    from cost_model.configs.default import Config
    from cost_model.training import train_cost_model

    out = work / f"gnn-without-{name}"
    if (out / "params.npz").exists():
        return out
    config = Config() if steps is None else Config().replace(num_steps=steps)
    metrics = train_cost_model(
        traces, out, [name], config, compare_xgb=False, remeasured_only=remeasured_only
    )
    log.info("GNN without %s: %s", name, metrics["gnn"])
    return out


def progress(store: TuningDatabase, tasks: list, device_key: str) -> list[tuple[int, float]]:
    """(trials so far, estimated model seconds) after every search trial, in measuring order."""
    untuned: dict[str, float] = {}
    events = []
    for task in tasks:
        for record in store.records(task.key, device_key):
            if record.extra.get("source") == SOURCE_UNTUNED:
                if record.status == Status.OK and record.median:
                    untuned[task.key] = record.median
                continue
            ok = record.status == Status.OK and record.median
            events.append((record.measured_at, task.key, record.median if ok else None))
    events.sort(key=lambda e: e[0])
    best = dict(untuned)
    weight = {t.key: t.weight for t in tasks}

    def total() -> float:
        return sum(weight[k] * best[k] for k in best)

    curve = []
    for trial, (_, key, seconds) in enumerate(events, start=1):
        if seconds is not None and seconds < best.get(key, float("inf")):
            best[key] = seconds
        curve.append((trial, total()))
    return curve


def at_fraction(curve: list[tuple[int, float]], budget: int, fraction: float) -> float | None:
    limit = round(budget * fraction)
    points = [seconds for trial, seconds in curve if trial <= limit]
    return points[-1] if points else None


def bench_one(name: str, entry: dict, args: argparse.Namespace, host: Any) -> dict:
    from cost_model.factory import make_cost_model
    from cost_model.predictor import Predictor

    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    planned = tvm_plan(entry, host)
    imported, tasks = planned.imported, planned.tasks
    budget = args.trials_per_task * len(tasks)
    log.info("%s: %d tasks, budget %d trials", name, len(tasks), budget)

    rows: dict[str, dict] = {}
    builds: dict[str, Any] = {}
    for cost_model in COST_MODELS:
        db = work / f"{name}.{cost_model}.db"
        if cost_model == "gnn":
            gnn_dir = held_out_gnn(name, args.traces, work, args.gnn_steps, args.remeasured_only)
            chosen: Any = make_cost_model("gnn", predictor=Predictor.load(gnn_dir), seed=args.seed)
        else:
            chosen = make_cost_model(cost_model, seed=args.seed)
        config = TuningConfig(trials=budget, seed=args.seed)
        started = time.perf_counter()
        report = tune_tasks(tasks, host, db, config, cost_model=chosen)
        with TuningDatabase(db, read_only=True) as store:
            curve = progress(store, tasks, host.key)
        tuned = compile_from_db(planned, db, host.key)
        builds[cost_model] = tuned.executable
        rows[cost_model] = {
            "trials": curve[-1][0] if curve else 0,
            "tuned_tasks": report.tuned_tasks,
            "wall_s_this_run": time.perf_counter() - started,
            "estimated_ms": {
                f"{int(f * 100)}%": (v * 1e3 if (v := at_fraction(curve, budget, f)) else None)
                for f in FRACTIONS
            },
        }
    result = bench_model(imported, threads=[host.threads], builds=builds)
    by_runtime = {run.runtime: run for run in result.runs}
    for label, run in by_runtime.items():
        row = rows.setdefault(label, {})
        row["measured_ms"] = run.timing.median * 1e3 if run.timing else None
        row["verified"] = bool(run.verified)
        row["error"] = run.error
    return {
        "model": name,
        "tasks": len(tasks),
        "budget": budget,
        "trials_per_task": args.trials_per_task,
        "threads": host.threads,
        "rows": rows,
        "bench": result.to_json(),
    }


def markdown(results: list[dict]) -> str:
    head = ["model", "cost model", "trials", "est. 25% (ms)", "est. 50% (ms)", "est. 100% (ms)"]
    head += ["measured (ms)", "vs XGB", "verified"]
    table = []
    for res in results:
        rows = res["rows"]
        xgb = rows.get("xgb", {}).get("measured_ms")
        for label in (*COST_MODELS, ORT):
            row = rows.get(label)
            if not row:
                continue
            est = row.get("estimated_ms", {})
            cells = [f"{est[k]:.3f}" if est.get(k) else "-" for k in ("25%", "50%", "100%")]
            ms = row.get("measured_ms")
            if not ms:
                table.append([res["model"], label, *["-"] * 6, "NO"])
                continue
            ratio = f"{xgb / ms:.2f}x" if xgb else "-"
            verified = "yes" if row.get("verified") else "NO"
            table.append(
                [res["model"], label, row.get("trials", "-"), *cells, f"{ms:.3f}", ratio, verified]
            )
    return markdown_table(head, table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--trials-per-task", type=int, default=16)
    parser.add_argument("--traces", nargs="+", default=[str(REPO / "datasets/traces/host")])
    parser.add_argument("--gnn-steps", type=int, default=None, help="training steps of the GNN")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--remeasured-only",
        action="store_true",
        help="train the GNN only on labels `ago-search remeasure` made",
    )
    parser.add_argument("--work", type=Path, default=REPO / "results" / "bench_cost_model")
    parser.add_argument("--json", type=Path, default=REPO / "results" / "bench_cost_model.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    for name in ("bench_cost_model", "ago_search.schedule", "cost_model"):
        logging.getLogger(name).setLevel(logging.INFO)
    names = args.models.split(",")
    manifest = make_zoo(REPO / "datasets" / "zoo", names)["models"]
    host = detect_host()
    results = []
    for name in names:
        entry = {**manifest[name], "path": str(REPO / "datasets" / "zoo" / manifest[name]["file"])}
        results.append(bench_one(name, entry, args, host))
    table = markdown(results)
    print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
