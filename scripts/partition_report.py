"""Per zoo model: ops removed by the rewrites and the shape of each seed partition.

    python scripts/partition_report.py [--models a,b] [--json results/partition_report.json]
                                       [--readme README.md]

Cells of the seed columns: groups / groups with two or more complex ops / ops in the largest
group. `intensive` uses this host's L2 as its cache budget (as `ago-search inspect --plan
intensive` does) and `intensive-16M` a 16 MiB budget, to show how the budget shapes the seed.
With --readme the table between `<!-- partition-table:start -->` and
`<!-- partition-table:end -->` is replaced.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from make_zoo import ZOO_MODELS, make_zoo  # noqa: E402

from ago_search import api  # noqa: E402
from ago_search.devices import host_target  # noqa: E402
from ago_search.partition import host_cache_bytes, seed_stats  # noqa: E402
from ago_search.pipeline import SEED_NAMES, prepare_model, seed_partition  # noqa: E402
from ago_search.report import markdown_table, replace_table  # noqa: E402

START, END = "<!-- partition-table:start -->", "<!-- partition-table:end -->"
SEEDS = (*SEED_NAMES, "intensive-16M")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None)
    parser.add_argument("--json", type=Path, default=REPO / "results" / "partition_report.json")
    parser.add_argument("--readme", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    names = args.models.split(",") if args.models else list(ZOO_MODELS)
    manifest = make_zoo(REPO / "datasets" / "zoo", names)["models"]
    rows = []
    for name in names:
        entry = manifest[name]
        imported = api.load(REPO / "datasets" / "zoo" / entry["file"], entry["inputs"])
        prepared = prepare_model(imported, host_target())
        report = prepared.rewrite_report
        row = {
            "model": name,
            "ops_imported": report.ops_before,
            "ops_after_rewrite": report.ops_after,
            "removed_by_rule": {r.rule: r.ops_removed for r in report.rules if r.ops_removed},
            "seeds": {},
        }
        for seed in SEEDS:
            if seed == "intensive-16M":
                result = seed_partition(prepared, "intensive", cache_bytes=16 << 20)
            else:
                result = seed_partition(prepared, seed)
            stats = seed_stats(result)
            row["seeds"][seed] = {
                "groups": stats.groups,
                "multi_complex_groups": stats.multi_complex_groups,
                "largest_group": stats.largest_group,
                "most_complex_ops": stats.most_complex_ops,
            }
        rows.append(row)
        print(f"{name}: done", file=sys.stderr)
    head = ["model", "ops imported -> rewritten", "removed by rule", *SEEDS]
    cells_by_row = []
    for r in rows:
        rules = ", ".join(f"{k} {v}" for k, v in r["removed_by_rule"].items()) or "-"
        cells = [
            r["model"],
            f"{r['ops_imported']} -> {r['ops_after_rewrite']}",
            rules,
        ]
        for seed in SEEDS:
            s = r["seeds"][seed]
            cells.append(f"{s['groups']} / {s['multi_complex_groups']} / {s['largest_group']}")
        cells_by_row.append(cells)
    table = markdown_table(head, cells_by_row)
    print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"rows": rows, "l2_bytes": host_cache_bytes()}, indent=2) + "\n"
    )
    if args.readme:
        replace_table(args.readme, START, END, table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
