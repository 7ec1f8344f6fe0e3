"""Inspect and bench every zoo model: the README's zoo table, measured side by side in one run.

    python scripts/zoo_report.py [--models a,b] [--json results/zoo_report.json] [--readme README.md]

For each model: operators, FLOPs, parameters, TVM's default fusion groups (and how many hold
more than one complex op), then ONNX Runtime vs TVM's default build at 1 and at all threads
with one protocol (ago_search.measure), outputs compared. Medians and ratios only: the machine
is shared, so a lone absolute time means little. With --readme the table between the markers
`<!-- zoo-table:start -->` and `<!-- zoo-table:end -->` is replaced.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from make_zoo import ZOO_MODELS, make_zoo  # noqa: E402

from ago_search import api  # noqa: E402
from ago_search.bench import bench_model  # noqa: E402
from ago_search.measure import MeasureProtocol  # noqa: E402
from ago_search.report import markdown_table, replace_table  # noqa: E402

START, END = "<!-- zoo-table:start -->", "<!-- zoo-table:end -->"


def _row(name: str, entry: dict, report, result) -> dict:
    s = report.summary
    row = {
        "model": name,
        "exporter": entry["exporter"],
        "opset": entry["opset"],
        "inputs": entry["inputs"],
        "ops": s["nodes"],
        "complex_ops": s["complex_ops"],
        "gflops": s["flops"] / 1e9,
        "params_m": s["params"] / 1e6,
        "folded_nodes": report.folded_nodes,
        "tvm_groups": len(report.default_groups),
        "tvm_multi_complex_groups": report.multi_complex_groups,
        "mapping_counts": s["mapping_counts"],
        "verified": result.verified,
        "threads": {},
    }
    worst = 0.0
    for threads in result.thread_counts:
        ort, tvm = result.run("onnxruntime", threads), result.run("tvm-default", threads)
        row["threads"][threads] = {
            "ort_ms": ort.timing.median * 1e3 if ort and ort.timing else None,
            "tvm_ms": tvm.timing.median * 1e3 if tvm and tvm.timing else None,
            "ort_over_tvm": result.speedup("tvm-default", threads),
        }
        if tvm:
            worst = max([worst] + [c.max_rel_err for c in tvm.checks])
    row["max_rel_err"] = worst
    return row


def markdown(rows: list[dict], threads: list[int]) -> str:
    head = [
        "model",
        "exporter (opset)",
        "ops",
        "GFLOPs",
        "params (M)",
        "TVM groups (multi-complex)",
    ]
    for t in threads:
        head += [f"ORT {t}t ms", f"TVM {t}t ms", f"TVM/ORT speed {t}t"]
    head += ["max rel err", "verified"]
    table = []
    for r in rows:
        cells = [
            r["model"],
            f"{r['exporter']} ({r['opset']})",
            str(r["ops"]),
            f"{r['gflops']:.2f}",
            f"{r['params_m']:.2f}",
            f"{r['tvm_groups']} ({r['tvm_multi_complex_groups']})",
        ]
        for t in threads:
            d = r["threads"].get(t, {})
            cells += [
                f"{d['ort_ms']:.3g}" if d.get("ort_ms") else "-",
                f"{d['tvm_ms']:.3g}" if d.get("tvm_ms") else "-",
                f"{d['ort_over_tvm']:.3f}x" if d.get("ort_over_tvm") else "-",
            ]
        cells += [f"{r['max_rel_err']:.1e}", "yes" if r["verified"] else "**NO**"]
        table.append(cells)
    return markdown_table(head, table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=None, help="comma-separated subset (default: all)")
    parser.add_argument("--threads", default=None, help="e.g. 1,2 (default: 1,all)")
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--json", type=Path, default=REPO / "results" / "zoo_report.json")
    parser.add_argument("--readme", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    names = args.models.split(",") if args.models else list(ZOO_MODELS)
    manifest = make_zoo(REPO / "datasets" / "zoo", names)["models"]
    threads = [int(t) for t in args.threads.split(",")] if args.threads else None
    protocol = MeasureProtocol(repeat=args.repeat)
    rows = []
    for name in names:
        entry = manifest[name]
        path = REPO / "datasets" / "zoo" / entry["file"]
        start = time.perf_counter()
        imported = api.load(path, entry["inputs"])
        report = api.inspect_imported(imported, rewrite=False)
        result = bench_model(imported, threads=threads, protocol=protocol)
        rows.append(_row(name, entry, report, result))
        print(f"{name}: done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    thread_counts = sorted({int(t) for r in rows for t in r["threads"]})
    table = markdown(rows, thread_counts)
    print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows, "command": " ".join(sys.argv)}, indent=2) + "\n")
    if args.readme:
        replace_table(args.readme, START, END, table)
    return 0 if all(r["verified"] for r in rows) else 3


if __name__ == "__main__":
    raise SystemExit(main())
