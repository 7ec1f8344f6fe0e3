"""Tune kernels warm or cold? What each protocol's tuning gives the model end to end.

    .venv/bin/python scripts/cold_tuning.py --model resnet18 --plan tvm/NHWC --trials 32

A kernel timed alone runs back to back on the same buffers, its weights in cache from the
call before; inside the model its weights come from memory (searches here see kernels
1.1-1.4x slower in the model than alone). One plan's tasks tuned twice at equal trials, each
from an empty database, same seed, shipped GNN guide, our first-pass scheduler:
- warm: the tuning protocol (`measure.TUNING_PROTOCOL`: calls back to back, number
  calibrated to 20 ms a repeat, 5 repeats);
- cold: one call a repeat, 10 repeats, every argument but the first evicted from the caches
  before each (TVM's `cache_flush_cpu_non_first_arg`, as AutoTVM advises for x86 networks).
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

from bench_tuning import arm_row, bench_arms, compile_from_db  # noqa: E402

from ago_search.devices import detect_host  # noqa: E402
from ago_search.measure import TUNING_PROTOCOL, MeasureProtocol  # noqa: E402
from ago_search.pipeline import load_planned  # noqa: E402
from ago_search.schedule.config import TuningConfig  # noqa: E402
from ago_search.schedule.tune import tune_tasks  # noqa: E402
from cost_model.factory import make_cost_model  # noqa: E402

log = logging.getLogger("cold_tuning")
ZOO = REPO / "datasets" / "zoo"
COLD = MeasureProtocol(warmup=1, number=1, repeat=10, flush_cache=True)
PROTOCOLS = {"warm": TUNING_PROTOCOL, "cold": COLD}


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
    tasks = list(planned.tasks)
    out: dict = {"device": host.key, "model": args.model, "plan": args.plan, "arms": {}}
    builds = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm, protocol in PROTOCOLS.items():
            config = TuningConfig(
                trials=args.trials * len(tasks),
                trials_per_round=args.round_trials,
                max_round_trials=args.round_trials,
                protocol=protocol,
                seed=args.seed,
            )
            db = Path(tmp) / f"{arm}.db"
            started = time.perf_counter()
            report = tune_tasks(
                tasks, host, db, config, cost_model=make_cost_model("gnn", seed=args.seed)
            )
            wall = time.perf_counter() - started
            builds[arm] = compile_from_db(planned, db, host.key).executable
            out["arms"][arm] = arm_row(report, wall)
            log.info("%s: %d trials in %.0f s", arm, report.trials_run, wall)
    bench_arms(planned, host, builds, out, summed=" as this protocol times them")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
