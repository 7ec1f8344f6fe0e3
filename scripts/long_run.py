"""One long run: the search against MetaSchedule alone over the same wall-clock time.

    .venv/bin/python scripts/long_run.py --model mobilenetv2 --budget 1h --readme README.md

Steps, one after another (never two at once: measurements must not share the cores), each
resumable (a finished step is skipped on a rerun; a killed search resumes from its folder, a
killed MetaSchedule starts again):

1. "search": `ago_search.api.search(model, budget)` into WORK/search.
2. "metaschedule": MetaSchedule alone (`metaschedule_alone.run_bounded`, TVM's default fusion,
   `tune_relax`'s defaults) with the same budget, into WORK/metaschedule.
3. "checkpoints" at 10, 25, 50, 75 and 100 % of the budget, each side's build as it stood then:
   - the search: the best verified plan it had timed end to end by then (its state's
     end-to-end timings; every timed plan is kept in WORK/search/plans/), built with the
     records its tuning.db held at that timing (a copy with later records deleted);
   - MetaSchedule: its database as it was then (the records of the rounds its timeline shows
     measured by then), built with `compile_relax`;
   all of them timed side by side in one `bench_model` call with ONNX Runtime and TVM's
   default build, every output checked against ORT's.

Prints and writes (results/long_run_MODEL.json, and with --readme the README's table between
`<!-- long-run:start -->` and `<!-- long-run:end -->`): latency per checkpoint and side, their
ratio, the search's own end-to-end timings as it ran, and whether the search kept to its budget
(spent within 5 %) and beat TVM's default build at 25 % of it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

import metaschedule_alone  # noqa: E402
from bench_tuning import compile_from_db  # noqa: E402
from make_zoo import make_zoo  # noqa: E402

from ago_search.bench import ORT, TVM_DEFAULT, bench_model  # noqa: E402
from ago_search.devices import detect_host  # noqa: E402
from ago_search.pipeline import load_planned, plan_model  # noqa: E402
from ago_search.report import markdown_table, replace_table  # noqa: E402
from ago_search.search.budget import format_duration, parse_budget  # noqa: E402
from ago_search.search.state import OutputFolder, write_json_atomic  # noqa: E402

log = logging.getLogger("long_run")

CHECKPOINTS = (0.10, 0.25, 0.50, 0.75, 1.00)
START, END = "<!-- long-run:start -->", "<!-- long-run:end -->"


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


# ---------------------------------------------------------------------------------------------
# the two runs


def run_search(model: str, shapes: dict, work: Path, budget_s: float, seed: int) -> dict:
    from ago_search import api

    result = api.search(model, budget_s, shapes, out=work / "search", seed=seed, progress=False)
    if result.interrupted:
        raise KeyboardInterrupt
    return result.summary


def run_metaschedule(
    model: str, shapes: dict, work: Path, budget_s: float, threads: int, seed: int
):
    return metaschedule_alone.run_bounded(
        model, shapes, work / "metaschedule", budget_s, threads, seed
    )


# ---------------------------------------------------------------------------------------------
# the builds as they stood at a point of the budget


def search_as_of(work: Path, at_s: float) -> dict[str, Any] | None:
    """The search's best verified end-to-end timing made within `at_s` seconds of its budget
    (None: none yet)."""
    state = _load(OutputFolder(work / "search").state_file)
    timed = [
        e
        for e in state.get("end_to_end", [])
        if e.get("verified") and e.get("measured_s") and e["at_s"] <= at_s and e.get("time")
    ]
    return min(timed, key=lambda e: e["measured_s"]) if timed else None


def search_build(planned, work: Path, entry: dict[str, Any], host_key: str, tmp: Path):
    """The plan of `entry` built with the records its database held when it was timed."""
    folder = OutputFolder(work / "search")
    plan_path = folder.timed_plan(entry["plan"])
    db = tmp / f"search-{entry['plan'][:10]}-{int(entry['time'])}.db"
    with sqlite3.connect(folder.database) as source, sqlite3.connect(db) as copy:
        source.backup(copy)
        copy.execute("DELETE FROM records WHERE measured_at > ?", (entry["time"],))
    return compile_from_db(plan_model(planned.prepared, plan_path), db, host_key)


def metaschedule_as_of(work: Path, at_s: float, tmp: Path) -> tuple[Path, int]:
    """A copy of MetaSchedule's work folder holding the records of the rounds measured within
    `at_s` seconds of its tuning start; and how many records that is."""
    source = work / "metaschedule"
    events = metaschedule_alone.read_json_lines(source / metaschedule_alone.TIMELINE)
    start = next(e["t"] for e in events if e.get("event") == "tuning")
    keep = sum(
        e["candidates"] for e in events if e.get("event") == "round" and e["t"] - start <= at_s
    )
    copy = tmp / f"metaschedule-{int(at_s)}"
    copy.mkdir()
    shutil.copy(source / metaschedule_alone.WORKLOADS, copy / metaschedule_alone.WORKLOADS)
    lines = (source / metaschedule_alone.RECORDS).read_text().splitlines()
    (copy / metaschedule_alone.RECORDS).write_text("".join(x + "\n" for x in lines[:keep]))
    return copy, keep


def checkpoints(model: str, shapes: dict, work: Path, budget_s: float, host) -> dict[str, Any]:
    planned = load_planned(model, shapes, "tvm", host)
    target = host.tvm_target()
    builds, points = {}, []
    with tempfile.TemporaryDirectory(prefix="long-run-") as tmp_name:
        tmp = Path(tmp_name)
        for share in CHECKPOINTS:
            at_s = share * budget_s
            point: dict[str, Any] = {"share": share, "at_s": at_s}
            label = f"search-{round(share * 100)}"
            entry = search_as_of(work, at_s)
            point["search_entry"] = entry
            if entry is not None:
                try:
                    tuned = search_build(planned, work, entry, host.key, tmp)
                    builds[label] = tuned.executable
                    point["search_label"] = label
                except Exception as exc:  # one build failing costs its point, not the table
                    log.exception("the search's build at %.0f s failed", at_s)
                    point["search_error"] = f"{type(exc).__name__}: {exc}"
            label = f"metaschedule-{round(share * 100)}"
            folder, records = metaschedule_as_of(work, at_s, tmp)
            point["metaschedule_records"] = records
            if records:
                try:
                    tuned = metaschedule_alone.compile_tuned(folder, planned.imported.mod, target)
                    builds[label] = tuned.executable
                    point["metaschedule_label"] = label
                except Exception as exc:
                    log.exception("MetaSchedule's build at %.0f s failed", at_s)
                    point["metaschedule_error"] = f"{type(exc).__name__}: {exc}"
            points.append(point)
        result = bench_model(planned.imported, threads=[host.threads], builds=builds)
    bench = result.to_json()
    runs = {r["runtime"]: r for r in bench["runs"]}

    def timing(label: str | None) -> tuple[float | None, bool]:
        run = runs.get(label) if label else None
        if not run or not run.get("timing"):
            return None, False
        return run["timing"]["median"], bool(run.get("verified"))

    for point in points:
        point["search_s"], point["search_verified"] = timing(point.get("search_label"))
        point["metaschedule_s"], point["metaschedule_verified"] = timing(
            point.get("metaschedule_label")
        )
    return {
        "points": points,
        "ort_s": timing(ORT)[0],
        "tvm_default_s": timing(TVM_DEFAULT)[0],
        "bench": bench,
    }


# ---------------------------------------------------------------------------------------------
# report


def _ms(seconds: float | None) -> str:
    return f"{seconds * 1e3:.3f}" if seconds else "-"


def markdown(data: dict[str, Any]) -> str:
    result = data["checkpoints"]
    head = ["at", "of budget", "ago-search ms", "MetaSchedule ms", "MetaSchedule / ours"]
    head += ["vs TVM default", "MS records"]
    rows = []
    for p in result["points"]:
        ours, theirs = p["search_s"], p["metaschedule_s"]
        rows.append(
            [
                format_duration(p["at_s"]),
                f"{p['share']:.0%}",
                _ms(ours) + ("" if not ours or p["search_verified"] else " (NOT verified)"),
                _ms(theirs)
                + ("" if not theirs or p["metaschedule_verified"] else " (NOT verified)"),
                f"{theirs / ours:.2f}x" if ours and theirs else "-",
                f"{result['tvm_default_s'] / ours:.1f}x"
                if ours and result["tvm_default_s"]
                else "-",
                p["metaschedule_records"],
            ]
        )
    search = data["search"]
    spent, budget = search.get("spent_s"), data["budget_s"]
    quarter = next(p for p in result["points"] if p["share"] == 0.25)
    faster = bool(
        quarter["search_s"]
        and result["tvm_default_s"]
        and quarter["search_s"] < result["tvm_default_s"]
    )
    timings = ", ".join(
        f"{format_duration(e['at_s'])}: {_ms(e['measured_s'])}"
        for e in search.get("end_to_end", [])
        if e.get("measured_s")
    )
    return "\n".join(
        [
            markdown_table(head, rows, align="<>>>>>>"),
            "",
            f"{data['model']}, budget {format_duration(budget)} each, {data['threads']} threads; "
            f"ONNX Runtime {_ms(result['ort_s'])} ms, TVM default {_ms(result['tvm_default_s'])} "
            f"ms. The search spent {format_duration(spent) if spent else '-'} of its budget "
            f"({spent / budget - 1:+.1%}); at 25 % of it, faster than TVM's default build: "
            f"{'yes' if faster else 'no'}. Its own end-to-end timings while it ran: {timings or '-'}.",
            "",
            "Each row: each side's build as it stood at that point of its budget (the search: the "
            "best plan it had timed and verified by then, with its records of then; MetaSchedule: "
            "the records of the rounds it had measured by then), all timed side by side in one "
            "benchmark after both runs, outputs checked against ORT's.",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenetv2")
    parser.add_argument("--budget", default="1h")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, help="default: results/long_run/MODEL")
    parser.add_argument("--json", type=Path, help="default: results/long_run_MODEL.json")
    parser.add_argument("--readme", type=Path, help="write the table into this README too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    for name in ("long_run", "metaschedule_alone", "ago_search.schedule", "ago_search.search"):
        logging.getLogger(name).setLevel(logging.INFO)

    budget_s = parse_budget(args.budget)
    zoo_dir = REPO / "datasets" / "zoo"
    try:
        entry = make_zoo(zoo_dir, [args.model])["models"][args.model]
    except ValueError as exc:
        raise SystemExit(f"--model: {exc}") from exc
    model = str(zoo_dir / entry["file"])
    shapes = {k: list(v) for k, v in entry["inputs"].items()}
    work = args.work or REPO / "results" / "long_run" / args.model
    out = args.json or REPO / "results" / f"long_run_{args.model}.json"
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "state.json"
    state = _load(state_path)
    if state.get("budget_s", budget_s) != budget_s:
        raise SystemExit(f"{work} holds a run with another budget: give another --work")
    state["budget_s"] = budget_s
    host = detect_host()

    if not state.get("search_done"):
        log.info("the search: %s", format_duration(budget_s))
        run_search(model, shapes, work, budget_s, args.seed)
        state["search_done"] = True
        write_json_atomic(state, state_path)
    if not state.get("metaschedule"):
        log.info("MetaSchedule alone: %s", format_duration(budget_s))
        state["metaschedule"] = run_metaschedule(
            model, shapes, work, budget_s, host.threads, args.seed
        )
        write_json_atomic(state, state_path)
    search_state = _load(OutputFolder(work / "search").state_file)
    data = {
        "model": args.model,
        "host": host.to_json(),
        "threads": host.threads,
        "budget_s": budget_s,
        "search": {
            "spent_s": search_state.get("spent_s"),
            "end_to_end": search_state.get("end_to_end", []),
        },
        "metaschedule": state["metaschedule"],
        "checkpoints": checkpoints(model, shapes, work, budget_s, host),
    }
    write_json_atomic(data, out)
    table = markdown(data)
    print(table)
    if args.readme:
        replace_table(args.readme, START, END, table)
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
