"""Tuning benchmark: TVM default vs tuned vs ONNX Runtime, and our task scheduler vs
MetaSchedule's own at the same small budget.

    .venv/bin/python scripts/bench_tuning.py                       # MobileNetV2 and the small BERT
    .venv/bin/python scripts/bench_tuning.py --models bert_tiny --trials-per-task 2 --small-per-task 1

Per model (TVM's default fusion as the plan, the host as the device), three tuning runs:

- "ours-small": our task scheduler (`FirstPassScheduler`) with 10 trials per task;
- "ours-N": the same database continued to N trials per task (the first run's trials count);
- "metaschedule-small": MetaSchedule's `GradientBased` scheduler with its default rounds of
  64 candidates, 10 trials per task, in a database of its own.

All three use the same search (EvolutionarySearch, population 128, XGBoost cost model), the
same builder and runner, and every candidate is checked against the untuned kernel. Then one
benchmark per model times, with one protocol and each verified against ORT: ONNX Runtime,
TVM's default build, the plan untuned, and the plan built from each run's records (a copy of
the database taken when "ours-small" finished stands for it, since "ours-N" goes on in it).

Resumable: databases and a state file live in --work (default results/bench_tuning/); a
killed run started again with the same arguments measures only what is missing (tuning wall
time then counts the runs that finished stages, not the time lost in a killed one). Prints a
markdown table; writes --json (default results/bench_tuning.json).
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

from make_zoo import make_zoo  # noqa: E402

from ago_search.bench import ORT, TVM_DEFAULT, bench_model  # noqa: E402
from ago_search.build import compile_plan, compile_plan_tuned  # noqa: E402
from ago_search.database import SqliteDatabase, TuningDatabase  # noqa: E402
from ago_search.devices import detect_host  # noqa: E402
from ago_search.pipeline import PlannedModel, load_planned  # noqa: E402
from ago_search.report import markdown_table  # noqa: E402
from ago_search.schedule.config import TuningConfig  # noqa: E402
from ago_search.schedule.tune import tune_tasks  # noqa: E402
from cost_model.factory import make_cost_model  # noqa: E402

log = logging.getLogger("bench_tuning")

DEFAULT_MODELS = ("mobilenetv2", "bert_tiny")
UNTUNED = "plan-untuned"


def _load_state(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(path)


def _tune_stage(
    name: str,
    state: dict,
    state_path: Path,
    tasks: list,
    host: Any,
    db: Path,
    config: TuningConfig,
) -> dict:
    """One tuning run, skipped if the state file says it finished with this budget."""
    done = state.get(name)
    if done and done.get("budget") == config.trials and done.get("finished"):
        log.info("%s: done before (%d trials)", name, done["trials"])
        return done
    wall_before = done.get("wall_s", 0.0) if done else 0.0
    report = tune_tasks(tasks, host, db, config, cost_model=make_cost_model("xgb", config.seed))
    entry = {
        "scheduler": config.scheduler,
        "budget": config.trials,
        "trials": report.trials_before + report.trials_run,
        "trials_per_round": report.trials_per_round,
        "tuned_tasks": report.tuned_tasks,
        "wall_s": wall_before + report.wall_s,
        "resumed": bool(report.trials_before) and not done,
        "database": str(db),
        "report": report.to_json(),
        "finished": True,
    }
    state[name] = entry
    _save_state(state_path, state)
    log.info("%s: %d trials, %.0f s", name, entry["trials"], entry["wall_s"])
    return entry


def _snapshot(source: Path, target: Path) -> None:
    """A copy of a database's records as they are now (a merge into a new file)."""
    if target.exists():
        target.unlink()
    for suffix in ("-wal", "-shm"):
        Path(str(target) + suffix).unlink(missing_ok=True)
    with TuningDatabase(target) as copy:
        copy.merge_from(source)


def tvm_plan(entry: dict, host: Any) -> PlannedModel:
    """A zoo entry under TVM's default fusion, for the host."""
    return load_planned(entry["path"], entry["inputs"], "tvm", host)


def compile_from_db(planned: PlannedModel, db: Path, device_key: str) -> Any:
    """The plan compiled with the best records of `db` for `device_key` (a TunedBuild)."""
    prepared, target = planned.prepared, planned.target
    with TuningDatabase(db, read_only=True) as store:
        return compile_plan_tuned(
            prepared.legalized,
            prepared.graph,
            planned.plan,
            target,
            SqliteDatabase(store, device_key, target),
            fused=planned.fused,
        )


def arm_row(report: Any, tuning_s: float) -> dict:
    """One tuning arm's figures: wall time, trials, the tasks' bests summed (weights counted)."""
    return {
        "tuning_s": tuning_s,
        "trials": report.trials_run,
        "summed_best_ms": sum((r.best_seconds or 0) * r.weight * 1e3 for r in report.tasks),
    }


def bench_arms(planned: PlannedModel, host: Any, builds: dict, out: dict, summed: str = "") -> None:
    """Time each arm's build beside ORT in one benchmark (outputs checked), add the end-to-end
    figures to `out["arms"]` and print a line per arm; `summed` qualifies the bests' sum."""
    from ago_search.search.finish import runtime_seconds

    bench = bench_model(planned.imported, threads=[host.threads], builds=builds)
    ort = runtime_seconds(bench, ORT)
    out["ort_ms"] = ort * 1e3 if ort else None
    print(f"ORT {out['ort_ms']:.3f} ms")
    for arm in builds:
        seconds = runtime_seconds(bench, arm)
        run = next(r for r in bench.runs if r.runtime == arm)
        row = out["arms"][arm]
        row["end_to_end_ms"] = seconds * 1e3 if seconds else None
        row["verified"] = run.verified
        print(
            f"{arm}: end to end {row['end_to_end_ms']:.3f} ms (vs ORT {ort / seconds:.2f}x), "
            f"tasks' bests summed {row['summed_best_ms']:.3f} ms{summed}, {row['trials']} "
            f"trials in {row['tuning_s']:.0f} s, verified {row['verified']}"
        )


def bench_one(name: str, entry: dict, args: argparse.Namespace, host: Any) -> dict:
    work: Path = args.work
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / f"{name}.state.json"
    state = _load_state(state_path)
    target = host.tvm_target()
    planned = tvm_plan(entry, host)
    imported, prepared, plan, tasks = (
        planned.imported,
        planned.prepared,
        planned.plan,
        planned.tasks,
    )
    n = len(tasks)
    log.info("%s: %d tasks from %d groups", name, n, len(plan.groups))

    ours_db, ms_db = work / f"{name}.first-pass.db", work / f"{name}.gradient.db"
    small_copy = work / f"{name}.first-pass-small.db"
    common = {"seed": args.seed, "population_size": 128}
    small = _tune_stage(
        "ours-small",
        state,
        state_path,
        tasks,
        host,
        ours_db,
        TuningConfig(trials=args.small_per_task * n, scheduler="first-pass", **common),
    )
    if not state.get("ours-small-copied"):
        _snapshot(ours_db, small_copy)
        state["ours-small-copied"] = True
        _save_state(state_path, state)
    full = _tune_stage(
        "ours-N",
        state,
        state_path,
        tasks,
        host,
        ours_db,
        TuningConfig(trials=args.trials_per_task * n, scheduler="first-pass", **common),
    )
    full = {**full, "wall_s_total": full["wall_s"] + small["wall_s"]}
    gradient = None
    if not args.skip_metaschedule:
        gradient = _tune_stage(
            "metaschedule-small",
            state,
            state_path,
            tasks,
            host,
            ms_db,
            TuningConfig(trials=args.small_per_task * n, scheduler="gradient", **common),
        )

    builds: dict[str, Any] = {}
    applied: dict[str, dict] = {}
    started = time.perf_counter()
    builds[UNTUNED] = compile_plan(
        prepared.legalized, prepared.graph, plan, target, fused=planned.fused
    )
    runs = [("ours-small", small_copy), ("ours-N", ours_db)]
    if gradient is not None:
        runs.append(("metaschedule-small", ms_db))
    for label, db in runs:
        tuned = compile_from_db(planned, db, host.key)
        builds[label] = tuned.executable
        applied[label] = {"scheduled": len(tuned.scheduled), "untuned": list(tuned.untuned)}
    compile_s = time.perf_counter() - started
    result = bench_model(imported, threads=[host.threads], builds=builds)
    by_runtime = {run.runtime: run for run in result.runs}

    def latency(runtime: str) -> dict:
        run = by_runtime.get(runtime)
        worst = max((c.max_rel_err for c in run.checks), default=None) if run else None
        return {
            "ms": run.timing.median * 1e3 if run and run.timing else None,
            "verified": bool(run and run.verified),
            "max_rel_err": worst,
            "error": run.error if run else "not run",
        }

    rows = {
        ORT: {**latency(ORT)},
        TVM_DEFAULT: {**latency(TVM_DEFAULT)},
        UNTUNED: {**latency(UNTUNED)},
        "ours-small": {**latency("ours-small"), **_stage_summary(small), **applied["ours-small"]},
        "ours-N": {
            **latency("ours-N"),
            **_stage_summary(full),
            "wall_s": full["wall_s_total"],
            **applied["ours-N"],
        },
    }
    if gradient is not None:
        rows["metaschedule-small"] = {
            **latency("metaschedule-small"),
            **_stage_summary(gradient),
            **applied["metaschedule-small"],
        }
    return {
        "model": name,
        "tasks": n,
        "groups": len(plan.groups),
        "threads": host.threads,
        "trials_per_task": args.trials_per_task,
        "small_per_task": args.small_per_task,
        "compile_s": compile_s,
        "rows": rows,
        "bench": result.to_json(),
    }


def _stage_summary(stage: dict) -> dict:
    return {
        "trials": stage["trials"],
        "tuned_tasks": stage["tuned_tasks"],
        "trials_per_round": stage["trials_per_round"],
        "wall_s": stage["wall_s"],
    }


def markdown(results: list[dict]) -> str:
    head = ["model", "build", "trials", "tasks tuned", "tuning s", "latency ms", "vs ORT"]
    head.append("verified")
    rows = []
    for result in results:
        ort = result["rows"][ORT]["ms"]
        for label, row in result["rows"].items():
            ms = row["ms"]
            ratio = f"{ort / ms:.2f}x" if ms and ort else "-"
            trials = row.get("trials", "-")
            tuned = f"{row['tuned_tasks']}/{result['tasks']}" if "tuned_tasks" in row else "-"
            wall = f"{row['wall_s']:.0f}" if "wall_s" in row else "-"
            latency = f"{ms:.3f}" if ms is not None else "failed"
            verified = "yes" if row["verified"] else "NO"
            rows.append([result["model"], label, trials, tuned, wall, latency, ratio, verified])
    lines = [markdown_table(head, rows, align="<<>>>>><"), ""]
    lines.append(
        "vs ORT: ORT's latency / this latency (> 1: faster than ORT), as in `ago-search "
        "bench`. ours-small and metaschedule-small "
        "have the same budget (trials per task x tasks); metaschedule-small runs "
        "MetaSchedule's GradientBased scheduler with its default rounds of 64."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument("--trials-per-task", type=int, default=32, help="N of ours-N")
    parser.add_argument(
        "--small-per-task", type=int, default=10, help="budget per task of the small runs"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--skip-metaschedule", action="store_true")
    parser.add_argument("--work", type=Path, default=REPO / "results" / "bench_tuning")
    parser.add_argument("--json", type=Path, default=REPO / "results" / "bench_tuning.json")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
    )
    for name in ("bench_tuning", "ago_search.schedule"):
        logging.getLogger(name).setLevel(logging.INFO)

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    zoo = make_zoo(REPO / "datasets" / "zoo", models=models)["models"]
    host = detect_host()
    results = []
    for name in models:
        entry = {**zoo[name], "path": str(REPO / "datasets" / "zoo" / zoo[name]["file"])}
        results.append(bench_one(name, entry, args, host))
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps({"host": host.to_json(), "results": results}, indent=2) + "\n"
        )
    print(markdown(results))
    print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
