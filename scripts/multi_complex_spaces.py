"""Which schedule-rule set lets MetaSchedule sample the zoo's multi-complex groups?

    .venv/bin/python scripts/multi_complex_spaces.py --models mobilenetv2,resnet18,squeezenet

For every group of the intensive seed with two or more convs/matmuls (cut to the search's
limits and regions, as `scripts/staged_tuning.py` picks them), the design space of its task is
generated and --samples schedules sampled with each rule set of `ago_search.schedule.rules`, in
the task probe's bounded worker (memory and time limits). Printed per model and rule set: groups
whose space generates and samples, and the first reason of the others. No measurement: which
set gives *correct and fast* kernels is for the tuning (every candidate checked against the
untuned kernel) to say, on the groups this makes tunable.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

from make_zoo import make_zoo  # noqa: E402
from staged_tuning import multi_complex_groups, tasks_of  # noqa: E402

from ago_search.devices import detect_host  # noqa: E402
from ago_search.pipeline import import_model, prepare_model  # noqa: E402
from ago_search.report import markdown_table  # noqa: E402
from ago_search.schedule.probe import TaskProbe  # noqa: E402
from ago_search.schedule.rules import RULE_SETS  # noqa: E402

log = logging.getLogger("multi_complex_spaces")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="mobilenetv2,resnet18,squeezenet")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--groups", type=int, default=1000, help="at most this many per model")
    parser.add_argument("--json", type=Path, default=REPO / "results" / "multi_complex_spaces.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    host = detect_host()
    target = host.tvm_target()
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    zoo = REPO / "datasets" / "zoo"
    manifest = make_zoo(zoo, names)["models"]
    rows, out = [], {"host": host.to_json(), "samples": args.samples, "models": {}}
    with TaskProbe(samples=args.samples) as probe:
        for name in names:
            entry = manifest[name]
            imported = import_model(str(zoo / entry["file"]), entry["inputs"])
            prepared = prepare_model(imported, target)
            groups = multi_complex_groups(prepared, args.groups)
            tasks = [t for t in tasks_of(prepared, [g for g, _ in groups]) if t is not None]
            log.info("%s: %d multi-complex groups, %d tasks", name, len(groups), len(tasks))
            per_set = {}
            for rules in RULE_SETS:
                results = []
                for task in tasks:
                    started = time.perf_counter()
                    result = probe.probe(task.mod, target, rules=rules)
                    results.append(
                        {
                            "task": task.name,
                            "ok": result.ok,
                            "reason": result.reason,
                            "seconds": time.perf_counter() - started,
                        }
                    )
                ok = sum(r["ok"] for r in results)
                reasons = Counter(r["reason"][:70] for r in results if not r["ok"])
                per_set[rules] = results
                rows.append(
                    [
                        name,
                        rules,
                        f"{ok}/{len(results)}",
                        f"{sum(r['seconds'] for r in results):.1f}",
                        "; ".join(f"{n}x {why}" for why, n in reasons.most_common(2)) or "-",
                    ]
                )
                log.info("%s / %s: %d of %d sample", name, rules, ok, len(results))
            out["models"][name] = per_set
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(markdown_table(["model", "rule set", "sample", "seconds", "why not"], rows))
    print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
