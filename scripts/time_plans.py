"""Several searches' plans of one model timed side by side in one run, beside ORT and TVM's
default build, each verified against ORT.

    .venv/bin/python scripts/time_plans.py OUT1 OUT2 ... [--labels a,b] [--json PATH]

Each OUT is a search's output folder (`search-state.json`, `plan.json`, `tuning.db`); its plan
is built with its records as the search's finish builds it, and all builds go to one
`bench_model` call (one protocol, the host's threads, runs never overlapping). For comparing
searches made in different runs of one session: their own figures came with different ORT
timings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outs", nargs="+", type=Path)
    parser.add_argument("--labels", default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    from ago_search.devices import detect_host
    from ago_search.measure.threads import tvm_thread_env

    host = detect_host()
    os.environ.update(tvm_thread_env(host.threads))
    from search_outputs import build_search_output

    from ago_search.bench import bench_model

    labels = args.labels.split(",") if args.labels else [o.name for o in args.outs]
    builds = {}
    prepared = None
    for label, out in zip(labels, args.outs, strict=True):
        search = build_search_output(out, host, prepared)
        prepared = search.prepared
        builds[label] = search.tuned.executable
    imported = prepared.imported
    result = bench_model(imported, threads=[host.threads], builds=builds, tvm_default=False)
    rows = {}
    for run in result.runs:
        if run.timing is None:
            print(f"{run.runtime}: {run.error}")
            continue
        rows[run.runtime] = statistics.median(run.timing.samples)
    ort = rows.get("onnxruntime")
    for name, seconds in rows.items():
        ratio = f"{ort / seconds:.2f}x vs ORT" if ort else ""
        print(f"{name:24s} {seconds * 1e3:8.3f} ms  {ratio}  verified {result.verified}")
    if args.json:
        args.json.write_text(json.dumps({"ms": {k: v * 1e3 for k, v in rows.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
