"""Does a GNN fine-tuned on earlier tasks' rounds guide a new task's first round better than
the model as loaded? Each plan's heaviest tasks, one round each, in a row, with one GNN guide:

    .venv/bin/python scripts/first_rounds.py --model resnet18 --plan tvm --tasks 8
    .venv/bin/python scripts/first_rounds.py --model mobilenetv2 \
        --plan tvm,tvm/NHWC,tvm/NCHW16c --tasks 2

Arms, each from an empty database and a fresh cost model, the tasks in the same order:
- fine-tuned: every task's candidates ranked by the model fine-tuned online on the rounds
  before (`GNNCostModel` as it was until 2026-12-06);
- loaded: a task the run has not measured ranked by the model as loaded (what it does now).

With several plans the tasks go in turns across them (the first of each, then the second of
each), as a search's layout exploration tunes them. Printed: each task's best of its round per
arm and the sums. One run each, side by side, on this machine: a comparison, not a figure for
another session. JSON in --json.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from ago_search.devices import detect_host  # noqa: E402
from ago_search.pipeline import import_model, plan_model, prepare_model  # noqa: E402
from ago_search.schedule.config import TuningConfig  # noqa: E402
from ago_search.schedule.tune import TuningSession  # noqa: E402
from cost_model.factory import make_cost_model  # noqa: E402

log = logging.getLogger("first_rounds")
ZOO = REPO / "datasets" / "zoo"


def heaviest_tasks(model: str, plans: list[str], count: int, target) -> list:
    """The `count` heaviest tasks (FLOPs x calls) of each plan, in turns across the plans."""
    manifest = json.loads((ZOO / "manifest.json").read_text())["models"][model]
    prepared = prepare_model(import_model(ZOO / manifest["file"], manifest["inputs"]), target)
    columns = []
    for plan in plans:
        tasks = [t for t in plan_model(prepared, plan).tasks if t.flops > 0]
        tasks.sort(key=lambda t: -t.flops * t.weight)
        columns.append(tasks[:count])
    picked: dict[str, object] = {}
    for row in range(count):
        for column in columns:
            if row < len(column) and column[row].key not in picked:
                picked[column[row].key] = column[row]
    return list(picked.values())


def run_arm(host, tasks, arm: str, trials: int, seed: int) -> list[float | None]:
    model = make_cost_model("gnn", seed=seed)
    if arm == "fine-tuned":
        model._predictor_for = lambda context: model.predictor  # every task: the fine-tuned one
    config = TuningConfig(
        trials=trials,
        measure_untuned=False,
        trials_per_round=trials,
        max_round_trials=trials,
        seed=seed,
    )
    bests: list[float | None] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        TuningSession(host, Path(tmp) / "tuning.db", config) as session,
    ):
        for task in tasks:
            session.tune([task], config, cost_model=model)
            records = session.store.best(task.key, host.key)
            bests.append(records[0].median if records else None)
            log.info("%s %s: %s", arm, task.name, bests[-1])
    return bests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--plan", default="tvm", help="seed plans, comma-separated")
    parser.add_argument("--tasks", type=int, default=8, help="heaviest tasks of each plan")
    parser.add_argument("--trials", type=int, default=8, help="candidates in a task's round")
    parser.add_argument("--seed", type=int, default=7919)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    host = detect_host()
    tasks = heaviest_tasks(args.model, args.plan.split(","), args.tasks, host.tvm_target())
    arms = {
        arm: run_arm(host, tasks, arm, args.trials, args.seed) for arm in ("fine-tuned", "loaded")
    }
    print(f"{'task':44s} {'fine-tuned us':>14s} {'loaded us':>10s}")
    for i, task in enumerate(tasks):
        cells = [arms[a][i] for a in arms]
        print(
            f"{task.name[:44]:44s} "
            + " ".join(
                f"{c * 1e6:>{w}.1f}" if c else f"{'-':>{w}s}"
                for c, w in zip(cells, (14, 10), strict=True)
            )
        )
    sums = {a: sum(b for b in v if b) for a, v in arms.items()}
    both = [i for i in range(len(tasks)) if all(arms[a][i] for a in arms)]
    ratio = math.exp(
        sum(math.log(arms["fine-tuned"][i] / arms["loaded"][i]) for i in both) / max(1, len(both))
    )
    print(
        f"sum of the first rounds' bests: fine-tuned {sums['fine-tuned'] * 1e3:.3f} ms, "
        f"loaded {sums['loaded'] * 1e3:.3f} ms; fine-tuned / loaded per task (geometric "
        f"mean over {len(both)}): {ratio:.2f}"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "device": host.key,
                    "model": args.model,
                    "plans": args.plan,
                    "tasks": [t.name for t in tasks],
                    "best_s": arms,
                    "geomean_fine_tuned_over_loaded": ratio,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
