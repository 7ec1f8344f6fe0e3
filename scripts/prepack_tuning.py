"""Weights packed by each schedule (MetaSchedule's RewriteLayout) or left as the plan lays them?

    .venv/bin/python scripts/prepack_tuning.py --model resnet18 --plan tvm/NHWC --trials 32

One plan's tasks tuned twice at equal trials, each from an empty database, same seed, shipped
GNN guide, our first-pass scheduler:
- plain: the kernels' weights are ordinary arguments, stored as the plan's layout says
  (NHWC's HWIO, say); every schedule reads them as they are;
- prepacked: the weights are layout-free (`plan.apply.mark_prepacked`, what the tool does):
  each schedule stores them in the order its loops read them, packed once at compile time
  (`build.pack_weights`); candidates are checked with their inputs packed the same way.
Then both tuned plans are built and timed end to end beside ONNX Runtime, one benchmark,
outputs checked. One run, side by side on this machine: a comparison, not a figure for
another session. JSON in --json.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

import tvm  # noqa: E402
from bench_tuning import arm_row, bench_arms  # noqa: E402

from ago_search.build import compile_plan_tuned  # noqa: E402
from ago_search.database import SqliteDatabase, TuningDatabase  # noqa: E402
from ago_search.devices import detect_host  # noqa: E402
from ago_search.pipeline import load_planned  # noqa: E402
from ago_search.plan.apply import LAYOUT_FREE_ATTR  # noqa: E402
from ago_search.schedule.config import TuningConfig  # noqa: E402
from ago_search.schedule.tasks import extract_tasks  # noqa: E402
from ago_search.schedule.tune import tune_tasks  # noqa: E402
from cost_model.factory import make_cost_model  # noqa: E402

log = logging.getLogger("prepack_tuning")
ZOO = REPO / "datasets" / "zoo"
ARMS = ("plain", "prepacked")


def without_layout_free(fused: tvm.IRModule) -> tvm.IRModule:
    """The fused module with no kernel's weights layout-free (what the tool did before)."""
    plain = fused.clone()
    for gvar, func in list(plain.functions.items()):
        if isinstance(func, tvm.tirx.PrimFunc) and func.attrs and LAYOUT_FREE_ATTR in func.attrs:
            plain[gvar] = func.without_attr(LAYOUT_FREE_ATTR)
    return plain


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--plan", default="tvm/NHWC")
    parser.add_argument("--trials", type=int, default=32, help="trials per task")
    parser.add_argument("--round-trials", type=int, default=16)
    parser.add_argument("--seed", type=int, default=7919)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    host = detect_host()
    manifest = json.loads((ZOO / "manifest.json").read_text())["models"][args.model]
    planned = load_planned(ZOO / manifest["file"], manifest["inputs"], plan=args.plan, device=host)
    prepared, target = planned.prepared, planned.target
    fused = {"prepacked": planned.fused, "plain": without_layout_free(planned.fused)}
    out: dict = {"device": host.key, "model": args.model, "plan": args.plan, "arms": {}}
    builds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm in ARMS:
            tasks = extract_tasks(fused[arm], target, planned.plan, prepared.graph)
            config = TuningConfig(
                trials=args.trials * len(tasks),
                trials_per_round=args.round_trials,
                max_round_trials=args.round_trials,
                seed=args.seed,
            )
            db = Path(tmp) / f"{arm}.db"
            started = time.perf_counter()
            report = tune_tasks(
                tasks, host, db, config, cost_model=make_cost_model("gnn", seed=args.seed)
            )
            wall = time.perf_counter() - started
            with TuningDatabase(db, read_only=True) as store:
                built = compile_plan_tuned(
                    prepared.legalized,
                    prepared.graph,
                    planned.plan,
                    target,
                    SqliteDatabase(store, host.key, target),
                    fused=fused[arm],
                )
            builds[arm] = built.executable
            out["arms"][arm] = {"tasks": len(tasks), **arm_row(report, wall)}
            log.info("%s: %d trials in %.0f s", arm, report.trials_run, wall)
    bench_arms(planned, host, builds, out)
    plain, packed = (out["arms"][a]["end_to_end_ms"] for a in ARMS)
    if plain and packed:
        print(f"prepacked over plain: {plain / packed:.2f}x end to end")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
