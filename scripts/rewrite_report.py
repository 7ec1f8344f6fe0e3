"""What the mathematical-property rewrites do to each zoo model: ops before / after, and the
operator bindings each rule removed (times it fired in parentheses).

Usage::

    python scripts/rewrite_report.py [--zoo datasets/zoo] [--models a,b] [--json out.json]
                                     [--legalize] [--check]

`--legalize` also times `ago_search.graph.legalize` (LegalizeOps + FoldConstant ...) on the
module before and after rewriting, and counts the OpGraph's nodes: TVM's FoldConstant compiles
every constant-only operator with LLVM, so what the rewrite folds in numpy beforehand is time
saved there; and constant-only bindings are no OpGraph nodes anyway, so the node counts show
what the rewrite removes beyond constant folding. `--check`
compiles both modules with TVM's default build and reports the largest output difference
relative to the largest |output| (slow: seconds per model).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ago_search.frontend import import_onnx, random_inputs  # noqa: E402
from ago_search.report import markdown_table  # noqa: E402
from ago_search.rewrite import RULES, RewriteReport, rewrite  # noqa: E402


def _legalized_graph(mod) -> tuple[float, int]:
    """Seconds `legalize` takes on `mod`, and the OpGraph's node count (constant-only
    bindings are not nodes: legalize's FoldConstant removes them, slowly)."""
    from ago_search.graph import build_opgraph, legalize

    start = time.perf_counter()
    legalized = legalize(mod)
    seconds = round(time.perf_counter() - start, 3)
    return seconds, len(build_opgraph(mod, legalized=legalized))


def _max_rel_diff(original, rewritten, imported) -> float:
    import tvm

    from ago_search.build import build_default, run_executable

    target = tvm.target.Target({"kind": "llvm", "num-cores": 2})
    feeds = random_inputs(imported.inputs, seed=0)
    args = [feeds[s.name] for s in imported.inputs]
    ref = run_executable(build_default(original, target), args)
    out = run_executable(build_default(rewritten, target), args)
    worst = 0.0
    for r, o in zip(ref, out, strict=True):
        scale = max(float(np.max(np.abs(r))), 1e-12)
        worst = max(worst, float(np.max(np.abs(r.astype(np.float64) - o))) / scale)
    return worst


def report_model(name: str, entry: dict, zoo: Path, legalize: bool, check: bool) -> dict:
    shapes = {k: tuple(v) for k, v in entry["inputs"].items()}
    imported = import_onnx(zoo / entry["file"], shapes)
    rewritten, report = rewrite(imported.mod)
    row = {"model": name, "report": report.to_json()}
    if legalize:
        row["legalize_s_before"], row["opgraph_nodes_before"] = _legalized_graph(imported.mod)
        row["legalize_s_after"], row["opgraph_nodes_after"] = _legalized_graph(rewritten)
    if check:
        row["max_rel_diff"] = _max_rel_diff(imported.mod, rewritten, imported)
    return row


def markdown(rows: list[dict]) -> str:
    reports = {row["model"]: RewriteReport.from_json(row["report"]) for row in rows}
    fired_rules = [r for r in RULES if any(rep.fired(r) for rep in reports.values())]
    extra = ["opgraph_nodes_before", "opgraph_nodes_after", "legalize_s_before"]
    extra = [k for k in [*extra, "legalize_s_after", "max_rel_diff"] if any(k in r for r in rows)]
    head = ["model", "ops before", "ops after", "removed", "rewrite s", *fired_rules, *extra]
    table = []
    totals = {"before": 0, "after": 0, **{r: [0, 0] for r in fired_rules}}
    for row in rows:
        rep = reports[row["model"]]
        totals["before"] += rep.ops_before
        totals["after"] += rep.ops_after
        cells = [row["model"], rep.ops_before, rep.ops_after]
        cells += [f"{rep.ops_removed} ({100 * rep.ops_removed / max(rep.ops_before, 1):.0f}%)"]
        cells += [f"{rep.seconds:.2f}"]
        for r in fired_rules:
            stats = rep.stats(r)
            totals[r][0] += stats.ops_removed
            totals[r][1] += stats.fired
            cells.append(f"{stats.ops_removed} ({stats.fired})" if stats.fired else "")
        for k in extra:
            value = row.get(k)
            cells.append(
                "" if value is None else (f"{value:.1e}" if k == "max_rel_diff" else value)
            )
        table.append(cells)
    removed = totals["before"] - totals["after"]
    cells = ["**total**", totals["before"], totals["after"], f"{removed}", ""]
    cells += [f"{totals[r][0]} ({totals[r][1]})" for r in fired_rules] + [""] * len(extra)
    table.append(cells)
    silent = [r for r in RULES if r not in fired_rules]
    lines = [markdown_table(head, table), ""]
    lines.append(
        "Cells: operator bindings removed (times fired). Rules that fired on no zoo model: "
    )
    lines[-1] += ", ".join(silent) if silent else "none"
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", type=Path, default=REPO / "datasets" / "zoo")
    parser.add_argument("--models", help="comma-separated subset of the zoo")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--legalize", action="store_true", help="time legalize before/after")
    parser.add_argument("--check", action="store_true", help="compile and compare outputs")
    args = parser.parse_args(argv)

    manifest_path = args.zoo / "manifest.json"
    if not manifest_path.is_file():
        print(f"no {manifest_path}: run 'python scripts/make_zoo.py' first", file=sys.stderr)
        return 2
    models = json.loads(manifest_path.read_text())["models"]
    names = args.models.split(",") if args.models else list(models)
    unknown = [n for n in names if n not in models]
    if unknown:
        print(f"unknown models {unknown}; the zoo has {list(models)}", file=sys.stderr)
        return 2
    rows = [report_model(n, models[n], args.zoo, args.legalize, args.check) for n in names]
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps({"rules": list(RULES), "models": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
