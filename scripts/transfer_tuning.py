"""Does handing tasks each other's schedules (`schedule.transfer`) tune a plan faster?

    .venv/bin/python scripts/transfer_tuning.py --model resnet18 --plan tvm/NHWC --rounds 2
    .venv/bin/python scripts/transfer_tuning.py --model mobilenetv2 --plan tvm/NHWC --rounds 1

A plan's tasks tuned twice at equal trials, each arm from an empty database and a fresh
shipped GNN guide, same seed, our first-pass scheduler (every task a round before any gets
two): with transfer (a quarter of each round from similar tasks' best schedules) and without
(MetaSchedule's search alone). Printed: each task's best per arm, weighted by its calls in the
model, the sums, and how many tasks' best schedule came by transfer. One run, side by side on
this machine: a comparison, not a figure for another session. JSON in --json.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ago_search.devices import detect_host  # noqa: E402
from ago_search.pipeline import import_model, plan_model, prepare_model  # noqa: E402
from ago_search.schedule.config import TuningConfig  # noqa: E402
from ago_search.schedule.tune import TuningSession  # noqa: E402
from cost_model.factory import make_cost_model  # noqa: E402

log = logging.getLogger("transfer_tuning")
ZOO = REPO / "datasets" / "zoo"
ARMS = ("transfer", "alone")


def plan_tasks(model: str, plan: str, target) -> list:
    manifest = json.loads((ZOO / "manifest.json").read_text())["models"][model]
    prepared = prepare_model(import_model(ZOO / manifest["file"], manifest["inputs"]), target)
    return [t for t in plan_model(prepared, plan).tasks if t.flops > 0]


def run_arm(host, tasks, arm: str, rounds: int, round_trials: int, seed: int) -> dict:
    config = TuningConfig(
        trials=rounds * round_trials * len(tasks),
        trials_per_round=round_trials,
        max_round_trials=round_trials,
        seed=seed,
        transfer=arm == "transfer",
    )
    started = time.perf_counter()
    with (
        tempfile.TemporaryDirectory() as tmp,
        TuningSession(host, Path(tmp) / "tuning.db", config) as session,
    ):
        session.tune(tasks, config, cost_model=make_cost_model("gnn", seed=seed))
        bests = []
        for task in tasks:
            best = session.store.best(task.key, host.key)
            bests.append(best[0].median if best else None)
        sent = session.transfer.report()
        return {
            "best_s": bests,
            "wall_s": time.perf_counter() - started,
            "transferred": sent["candidates"],
            "best_by_transfer": sent["tasks_best_by_transfer"],
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--plan", default="tvm/NHWC")
    parser.add_argument("--rounds", type=int, default=2, help="rounds per task")
    parser.add_argument("--round-trials", type=int, default=12)
    parser.add_argument("--seed", type=int, default=7919)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    host = detect_host()
    tasks = plan_tasks(args.model, args.plan, host.tvm_target())
    log.info("%d tasks, %d rounds of %d each", len(tasks), args.rounds, args.round_trials)
    arms = {a: run_arm(host, tasks, a, args.rounds, args.round_trials, args.seed) for a in ARMS}
    print(f"{'task':44s} {'calls':>5s} {'transfer us':>12s} {'alone us':>10s}")
    for i, task in enumerate(tasks):
        cells = [arms[a]["best_s"][i] for a in ARMS]
        print(
            f"{task.name[:44]:44s} {task.weight:5d} "
            + " ".join(
                f"{c * 1e6:>{w}.1f}" if c else f"{'-':>{w}s}"
                for c, w in zip(cells, (12, 10), strict=True)
            )
        )
    both = [i for i in range(len(tasks)) if all(arms[a]["best_s"][i] for a in ARMS)]
    sums = {a: sum(arms[a]["best_s"][i] * tasks[i].weight for i in both) for a in ARMS}
    ratio = math.exp(
        sum(math.log(arms["alone"]["best_s"][i] / arms["transfer"]["best_s"][i]) for i in both)
        / max(1, len(both))
    )
    print(
        f"weighted sum of the tasks' bests: transfer {sums['transfer'] * 1e3:.3f} ms, alone "
        f"{sums['alone'] * 1e3:.3f} ms (alone / transfer {sums['alone'] / sums['transfer']:.3f}); "
        f"per task, geometric mean over {len(both)}: {ratio:.3f}; "
        f"{arms['transfer']['transferred']} candidates transferred, "
        f"{arms['transfer']['best_by_transfer']} of {len(tasks)} tasks' bests came by transfer; "
        f"wall {arms['transfer']['wall_s']:.0f} s vs {arms['alone']['wall_s']:.0f} s"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "device": host.key,
                    "model": args.model,
                    "plan": args.plan,
                    "rounds": args.rounds,
                    "round_trials": args.round_trials,
                    "tasks": [t.name for t in tasks],
                    "weights": [t.weight for t in tasks],
                    "arms": arms,
                    "weighted_sum_alone_over_transfer": sums["alone"] / sums["transfer"],
                    "geomean_alone_over_transfer": ratio,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
