"""What the vector seeds of a task's first round are worth: the same tasks' first rounds with
and without them, side by side.

    .venv/bin/python scripts/vector_seeds_probe.py [--model mobilenetv2] [--plan tvm/NHWC] \
        [--match conv2d] [--tasks 8] [--round 8] [--rounds 1] [--json PATH]

The `--tasks` heaviest tasks of the plan whose name holds `--match` are tuned from an empty
database `--rounds` rounds of `--round` candidates each, once with `TuningConfig.vector_seeds`
(a quarter of a task's first round: its own design spaces vectorised along each tiled block's
innermost spatial loop, `schedule.transfer.vector_decisions`) and once without, same seed,
same cost model kind (XGB, so that nothing learnt before decides), transfer between tasks off
in both (so the two runs differ in the seeds only). Printed per task: its name, calls and
MFLOPs (MobileNetV2's depthwise convs are the tasks of few MFLOPs), the best latency each way,
and the sums weighted by calls. One run, this machine.
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
sys.path.insert(0, str(REPO))

from ago_search.devices import detect_host  # noqa: E402
from ago_search.pipeline import load_planned  # noqa: E402
from ago_search.schedule.config import TuningConfig  # noqa: E402
from ago_search.schedule.tune import TuningSession  # noqa: E402
from cost_model.factory import make_cost_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mobilenetv2")
    parser.add_argument("--plan", default="tvm/NHWC")
    parser.add_argument("--match", default="conv2d")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--round", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    manifest = json.loads((REPO / "datasets" / "zoo" / "manifest.json").read_text())["models"]
    entry = manifest[args.model]
    host = detect_host()
    planned = load_planned(
        REPO / "datasets" / "zoo" / entry["file"], entry["inputs"], args.plan, host
    )
    tasks = [t for t in planned.tasks if args.match in t.name]
    tasks = sorted(tasks, key=lambda t: -t.weight * t.flops)[: args.tasks]
    best: dict[str, dict[str, float | None]] = {t.key: {} for t in tasks}
    walls = {}
    for label, seeds in (("without", False), ("with", True)):
        config = TuningConfig(
            trials=args.round * args.rounds * len(tasks),
            trials_per_round=args.round,
            max_round_trials=args.round,
            measure_untuned=False,
            seed=args.seed,
            vector_seeds=seeds,
        )
        with tempfile.TemporaryDirectory() as tmp:
            started = time.perf_counter()
            with TuningSession(host, Path(tmp) / "tuning.db", config, work_dir=tmp) as session:
                # transfer between tasks off: the pool is used for the seeds alone
                session.transfer.max_distance = -1.0
                report = session.tune(
                    tasks, config, cost_model=make_cost_model("xgb", seed=args.seed)
                )
                seeded = session.transfer.report()
            walls[label] = time.perf_counter() - started
        for result in report.tasks:
            best[result.key][label] = result.best_seconds
        print(f"{label} vector seeds: {walls[label]:.0f} s, {seeded}", flush=True)
    rows = []
    sums = {"without": 0.0, "with": 0.0}
    print(f"{'task':36s} {'calls':>5s} {'MFLOP':>7s} {'without ms':>11s} {'with ms':>9s}")
    for task in tasks:
        got = best[task.key]
        row = {
            "task": task.name,
            "calls": task.weight,
            "mflops": task.flops / 1e6,
            "without_ms": got.get("without") and got["without"] * 1e3,
            "with_ms": got.get("with") and got["with"] * 1e3,
        }
        rows.append(row)
        if got.get("without") and got.get("with"):
            sums["without"] += task.weight * got["without"]
            sums["with"] += task.weight * got["with"]
        print(
            f"{task.name[:36]:36s} {task.weight:5d} {task.flops / 1e6:7.1f} "
            f"{row['without_ms'] or float('nan'):11.4f} {row['with_ms'] or float('nan'):9.4f}"
        )
    print(
        f"weighted sum: without {sums['without'] * 1e3:.3f} ms, with {sums['with'] * 1e3:.3f} ms "
        f"({sums['without'] / sums['with']:.2f}x)"
        if sums["with"]
        else "no task tuned both ways"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "args": vars(args) | {"json": str(args.json)},
                    "walls": walls,
                    "sums_ms": {k: v * 1e3 for k, v in sums.items()},
                    "rows": rows,
                },
                indent=1,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
