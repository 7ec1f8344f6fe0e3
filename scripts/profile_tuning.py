"""Where a tuning trial's time goes, and what the evolutionary search's size buys.

    .venv/bin/python scripts/profile_tuning.py --model mobilenetv2 --tasks 6 --trials-per-task 16 \
        --configs 128x4,64x1

For each configuration (population x genetic iterations of MetaSchedule's EvolutionarySearch)
the same tasks of the model (TVM's fusion, the most expensive first) are tuned from an empty
database with the same seed, the same cost model kind and rounds of `--round` candidates, in
one TuningSession; the script prints wall time per trial and the tasks' summed best latency
(weight x best) at the end. One run each, side by side, on this machine: a comparison, not a
figure to compare with another session's. JSON in --json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from ago_search.devices import detect_host  # noqa: E402
from ago_search.pipeline import load_planned  # noqa: E402
from ago_search.schedule.config import TuningConfig  # noqa: E402
from ago_search.schedule.tune import TuningSession  # noqa: E402
from cost_model.factory import make_cost_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mobilenetv2")
    parser.add_argument("--tasks", type=int, default=6)
    parser.add_argument("--trials-per-task", type=int, default=16)
    parser.add_argument("--round", type=int, default=8)
    parser.add_argument("--configs", default="128x4,64x1")
    parser.add_argument("--cost-model", default="gnn")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=REPO / "results" / "profile_tuning.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    manifest = json.loads((REPO / "datasets" / "zoo" / "manifest.json").read_text())["models"]
    entry = manifest[args.model]
    host = detect_host()
    planned = load_planned(REPO / "datasets" / "zoo" / entry["file"], entry["inputs"], "tvm", host)
    tasks = sorted(planned.tasks, key=lambda t: -t.weight * t.flops)[: args.tasks]
    rows = []
    for spec in args.configs.split(","):
        population, iters = (int(v) for v in spec.split("x"))
        config = TuningConfig(
            trials=args.trials_per_task * len(tasks),
            trials_per_round=args.round,
            population_size=population,
            genetic_iters=iters,
            measure_untuned=False,
            seed=args.seed,
        )
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            with TuningSession(host, Path(tmp) / "tuning.db", config, work_dir=tmp) as session:
                report = session.tune(
                    tasks, config, cost_model=make_cost_model(args.cost_model, seed=args.seed)
                )
            wall = time.perf_counter() - started
        best = [r.best_seconds for r in report.tasks]
        summed = sum(r.weight * b for r, b in zip(report.tasks, best, strict=True) if b)
        row = {
            "config": spec,
            "trials": report.trials_run,
            "wall_s": wall,
            "seconds_per_trial": wall / max(1, report.trials_run),
            "tasks_with_a_schedule": sum(1 for b in best if b),
            "summed_best_ms": summed * 1e3,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"model": args.model, "tasks": len(tasks), "rows": rows}, indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
