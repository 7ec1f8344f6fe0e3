"""The headline benchmark: the search vs MetaSchedule alone, tune-tasks and ONNX Runtime.

Each tuning method gets the same wall-clock budget per model.

    .venv/bin/python scripts/bench_suite.py                          # 4 zoo models, 10 min each
    .venv/bin/python scripts/bench_suite.py --models bert_tiny --budget 3m
    .venv/bin/python scripts/bench_suite.py --readme README.md        # also write the README table

Per model (the host as the device, its thread count everywhere), one run of each method, one
after another (never two at once: measurements must not share the cores with anything):

- "onnxruntime", "tvm-default": no tuning (timed in the benchmark below);
- "metaschedule": MetaSchedule alone, `tune_relax`'s steps on TVM's default fusion with its
  defaults, in a worker process that starts no round after the budget and then measures the
  rounds it has in flight, which its tuning time counts (scripts/metaschedule_alone.py: how it
  is bounded, the builder fix, the one other change); built with
  `ms.relax_integration.compile_relax` on the unfused imported module;
- "tune-tasks": ours on TVM's default fusion (`load_planned(..., "tvm")`): `tune_tasks` with the
  GNN cost model and a deadline at the budget; built with `compile_plan_tuned`;
- "search": `ago_search.api.search(model, budget)`; its plan.json built with its tuning.db
  (`compile_plan_tuned`, what it wrote model.so from).

Then every build of a model is timed side by side in one `bench_model` call, beside ORT and
TVM's default build, each output checked against ORT's. Per model and method: latency, ratio
vs ORT and vs MetaSchedule, verified, tuning wall time, trials (MetaSchedule: records in its
database; tune-tasks: search trials in its database; the search: its measurements), kernels a
record was applied to. Summary: geometric-mean speedup of the search over MetaSchedule and over
tune-tasks, and on how many models the search beats ORT. And for every group of the search's
final plan with two or more complex ops (convs, matmuls): its tuned latency (best ok record of
its task in the search's tuning.db) against the sum of the TVM-seed groups that cover the same
nodes, each tuned alone (best ok record in the tune-tasks database or the search's own).

Resumable: one state file per (model, method) under --work (default results/bench_suite/), and
one for each model's benchmark. A finished cell is skipped on a rerun. A killed cell restarts
its method: MetaSchedule from scratch; tune-tasks from its database with what is left of the
budget (the killed attempt counted up to its last measured round); the search from its output
folder, whose state counts the budget across runs. JSON of everything in --json (default
results/bench_suite.json); prints a markdown table, and with --readme writes it between
`<!-- bench-suite:start -->` and `<!-- bench-suite:end -->`.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO))

import metaschedule_alone  # noqa: E402
from bench_tuning import compile_from_db  # noqa: E402
from make_zoo import make_zoo  # noqa: E402

from ago_search.bench import ORT, TVM_DEFAULT, bench_model  # noqa: E402
from ago_search.build import TunedBuild  # noqa: E402
from ago_search.database import TuningDatabase  # noqa: E402
from ago_search.devices import DeviceProfile, detect_host  # noqa: E402
from ago_search.pipeline import (  # noqa: E402
    PlannedModel,
    load_planned,
    plan_model,
    plan_winograd,
    prepare_model,
)
from ago_search.report import markdown_table, replace_table  # noqa: E402
from ago_search.schedule.config import TuningConfig  # noqa: E402
from ago_search.schedule.results import task_results  # noqa: E402
from ago_search.schedule.tune import tune_tasks  # noqa: E402
from ago_search.search.budget import format_duration, parse_budget  # noqa: E402
from ago_search.search.config import SearchConfig  # noqa: E402
from ago_search.search.state import write_json_atomic  # noqa: E402
from cost_model.factory import make_cost_model  # noqa: E402

log = logging.getLogger("bench_suite")

DEFAULT_MODELS = ("mobilenetv2", "resnet18", "bert_tiny", "squeezenet")
METASCHEDULE, TUNE_TASKS, SEARCH = "metaschedule", "tune-tasks", "search"
SEARCH_NCHW = "search-nchw"
SEARCH_NO_TRANSFER = "search-no-transfer"
SEARCH_DIRECT = "search-direct"
LABELS = {
    ORT: "ONNX Runtime",
    TVM_DEFAULT: "TVM default",
    METASCHEDULE: "MetaSchedule alone",
    TUNE_TASKS: "tune-tasks (TVM plan)",
    SEARCH: "ago-search",
    SEARCH_NCHW: "ago-search, NCHW only",
    SEARCH_NO_TRANSFER: "ago-search, no transfer",
    SEARCH_DIRECT: "ago-search, direct convs",
}
DEFAULT_METHODS = (METASCHEDULE, TUNE_TASKS, SEARCH)
# A trial count tuning never reaches: the deadline ends it.
UNREACHABLE_TRIALS = 1_000_000


# ---------------------------------------------------------------------------------------------
# state


class Cell:
    """The state file of one (model, method) or one model's benchmark: what ran, for how long,
    whether it finished. Written atomically after every change."""

    def __init__(self, path: Path, budget_s: float) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        if self.data.get("budget_s", budget_s) != budget_s:
            raise SystemExit(
                f"{path} is from a run with a budget of {self.data['budget_s']:g} s, not "
                f"{budget_s:g} s: give another --work, or delete that folder to start over"
            )
        self.data["budget_s"] = budget_s

    @property
    def finished(self) -> bool:
        return bool(self.data.get("finished"))

    def update(self, **fields: Any) -> None:
        self.data.update(fields)
        write_json_atomic(self.data, self.path)


@dataclass
class ModelRun:
    """One zoo model under the suite: where its files go, and its planned model (made once,
    only when a method or the benchmark needs it)."""

    name: str
    path: str
    shapes: dict[str, list[int]]
    host: DeviceProfile
    budget_s: float
    seed: int
    dir: Path

    @cached_property
    def planned(self) -> PlannedModel:
        """TVM's default fusion as a plan (tune-tasks' plan; its import serves everything)."""
        return load_planned(self.path, self.shapes, "tvm", self.host)

    methods: tuple[str, ...] = DEFAULT_METHODS

    @property
    def search_out(self) -> Path:
        return self.out_of(SEARCH)

    @cached_property
    def search_planned(self) -> PlannedModel:
        """The search's final plan, on the same import."""
        return self.planned_with(self.search_out / "plan.json")

    def planned_with(self, plan: Path) -> PlannedModel:
        """A plan.json on the same import, its convs legalized as the plan says (Winograd or
        direct)."""
        prepared = self.planned.prepared
        winograd = plan_winograd(plan)
        if winograd != prepared.winograd:
            prepared = prepare_model(prepared.imported, prepared.target, winograd=winograd)
        return plan_model(prepared, plan)

    def out_of(self, label: str) -> Path:
        return self.dir / label


# ---------------------------------------------------------------------------------------------
# the methods: tune (skipped once its cell finished), then build from what tuning left on disk


def tune_metaschedule(m: ModelRun, cell: Cell) -> None:
    outcome = metaschedule_alone.run_bounded(
        m.path, m.shapes, m.dir / METASCHEDULE, m.budget_s, m.host.threads, m.seed
    )
    cell.update(**outcome)


def build_metaschedule(m: ModelRun) -> TunedBuild:
    target = m.host.tvm_target()
    return metaschedule_alone.compile_tuned(m.dir / METASCHEDULE, m.planned.imported.mod, target)


def tune_tune_tasks(m: ModelRun, cell: Cell) -> None:
    db, timeline = m.dir / "tune-tasks.db", m.dir / "tune-tasks.timeline.jsonl"
    spent = cell.data.get("tuning_s", 0.0) + _killed_attempt_s(cell, timeline)
    cell.update(tuning_s=spent, attempt_started=time.time(), timeline=str(timeline))
    tasks = m.planned.tasks
    left = m.budget_s - spent
    if left > 0:
        started = time.monotonic()
        tune_tasks(
            tasks,
            m.host,
            db,
            TuningConfig(trials=UNREACHABLE_TRIALS, seed=m.seed),
            cost_model=make_cost_model("gnn", seed=m.seed),
            measure_callbacks=[metaschedule_alone.TimelineCallback(timeline)],
            deadline=started + left,
        )
        spent += time.monotonic() - started
    with TuningDatabase(db, read_only=True) as store:
        results = task_results(store, tasks, m.host.key)
    cell.update(
        tuning_s=spent,
        attempt_started=None,
        trials=sum(r.trials for r in results),
        tuned_tasks=sum(1 for r in results if r.trials),
        tasks=len(results),
    )


def _killed_attempt_s(cell: Cell, timeline: Path) -> float:
    """Seconds a killed attempt spent, at least: from its start to its last measured round."""
    started = cell.data.get("attempt_started")
    if started is None:
        return 0.0
    times = [e["t"] for e in metaschedule_alone.read_json_lines(timeline) if e["t"] >= started]
    return max(times, default=started) - started


def build_tune_tasks(m: ModelRun) -> TunedBuild:
    return compile_from_db(m.planned, m.dir / "tune-tasks.db", m.host.key)


def tune_search(
    m: ModelRun,
    cell: Cell,
    label: str = SEARCH,
    layouts: bool = True,
    transfer: bool = True,
    winograd: int | None = SearchConfig.winograd,
) -> None:
    """The search into `m.out_of(label)`; with `layouts=False` every group stays NCHW
    (`--no-layouts`: what layouts are worth); with `transfer=False` no task is handed other
    tasks' schedules (what transfer tuning is worth); `winograd`: its 3x3 convs as Winograd
    convs of that tile (None: direct convs, what Winograd is worth)."""
    from ago_search import api

    result = api.search(
        m.path,
        m.budget_s,
        m.shapes,
        out=m.out_of(label),
        seed=m.seed,
        progress=False,
        layouts=layouts,
        transfer=transfer,
        winograd=winograd,
    )
    if result.interrupted:  # Ctrl-C inside the search: stop the suite, the cell stays open
        raise KeyboardInterrupt
    summary = result.summary
    cell.update(tuning_s=summary["spent_s"], trials=summary["measurements"], summary=summary)


def build_search(m: ModelRun, label: str = SEARCH) -> TunedBuild:
    out = m.out_of(label)
    if not (out / "plan.json").exists():
        raise RuntimeError(f"the search wrote no verified plan to {out}")
    planned = m.search_planned if label == SEARCH else m.planned_with(out / "plan.json")
    return compile_from_db(planned, out / "tuning.db", m.host.key)


Tune = Callable[[ModelRun, Cell], None]
Build = Callable[[ModelRun], TunedBuild]
METHODS: dict[str, tuple[Tune, Build]] = {
    METASCHEDULE: (tune_metaschedule, build_metaschedule),
    TUNE_TASKS: (tune_tune_tasks, build_tune_tasks),
    SEARCH: (tune_search, build_search),
    SEARCH_NCHW: (
        partial(tune_search, label=SEARCH_NCHW, layouts=False),
        partial(build_search, label=SEARCH_NCHW),
    ),
    SEARCH_NO_TRANSFER: (
        partial(tune_search, label=SEARCH_NO_TRANSFER, transfer=False),
        partial(build_search, label=SEARCH_NO_TRANSFER),
    ),
    SEARCH_DIRECT: (
        partial(tune_search, label=SEARCH_DIRECT, winograd=None),
        partial(build_search, label=SEARCH_DIRECT),
    ),
}


# ---------------------------------------------------------------------------------------------
# fused groups of the search's plan vs their parts tuned alone


def _task_of_group(planned: PlannedModel) -> dict[frozenset[str], str]:
    """The task key of each group (by its node set) of a planned model."""
    return {frozenset(nodes): task.key for task in planned.tasks for nodes in task.nodes if nodes}


def _best_s(
    stores: dict[str, TuningDatabase], key: str | None, device_key: str
) -> tuple[float | None, str | None]:
    """(fastest ok latency of the task in any of `stores`, the store's name), or (None, None)."""
    found = []
    for name, store in stores.items():
        best = store.best(key, device_key) if key is not None else []
        if best and best[0].median is not None:
            found.append((best[0].median, name))
    return min(found) if found else (None, None)


def fused_groups(m: ModelRun) -> list[dict[str, Any]]:
    """Every group of the search's final plan with two or more complex ops: its tuned latency
    vs the sum of the TVM-seed groups that make it up, each tuned alone."""
    if not (m.search_out / "plan.json").exists():
        return []
    ours, tvm = m.search_planned, m.planned
    graph = ours.graph
    our_tasks, tvm_tasks = _task_of_group(ours), _task_of_group(tvm)
    tvm_groups = [frozenset(g.nodes) for g in tvm.plan.groups]
    paths = {SEARCH: m.search_out / "tuning.db", TUNE_TASKS: m.dir / "tune-tasks.db"}
    stores = {k: TuningDatabase(p, read_only=True) for k, p in paths.items() if p.exists()}
    key = m.host.key
    rows = []
    try:
        for index, group in enumerate(ours.plan.groups):
            nodes = frozenset(group.nodes)
            complex_ops = sum(1 for n in group.nodes if graph.node(n)["complex"])
            if complex_ops < 2:
                continue
            search_only = {SEARCH: stores[SEARCH]} if SEARCH in stores else {}
            fused_s, _ = _best_s(search_only, our_tasks.get(nodes), key)
            parts = []
            for part in (p for p in tvm_groups if p & nodes):
                seconds, source = _best_s(stores, tvm_tasks.get(part), key)
                parts.append({"nodes": len(part), "best_s": seconds, "source": source})
            covered = all(p <= nodes for p in tvm_groups if p & nodes)
            known = all(p["best_s"] is not None for p in parts)
            parts_s = sum(p["best_s"] for p in parts) if covered and known else None
            rows.append(
                {
                    "group": index,
                    "ops": [str(graph.node(n)["op"]) for n in group.nodes],
                    "complex_ops": complex_ops,
                    "task": our_tasks.get(nodes),
                    "fused_s": fused_s,
                    "parts": parts,
                    "parts_cover_group": covered,
                    "parts_s": parts_s,
                    "parts_over_fused": parts_s / fused_s if parts_s and fused_s else None,
                }
            )
    finally:
        for store in stores.values():
            store.close()
    return rows


# ---------------------------------------------------------------------------------------------
# one model


def bench_one(m: ModelRun) -> dict[str, Any]:
    methods_run = {label: METHODS[label] for label in m.methods}
    cells = {label: Cell(m.dir / f"{label}.state.json", m.budget_s) for label in methods_run}
    for label, (tune, _) in methods_run.items():
        cell = cells[label]
        if cell.finished:
            log.info("%s / %s: finished before, skipped", m.name, label)
            continue
        log.info("%s / %s: tuning for %s", m.name, label, format_duration(m.budget_s))
        cell.update(attempts=cell.data.get("attempts", 0) + 1, error=None)
        try:
            tune(m, cell)
        except Exception as exc:  # one method failing must not cost the others their run
            log.exception("%s / %s failed", m.name, label)
            cell.update(error=f"{type(exc).__name__}: {exc}")
            continue
        cell.update(finished=True, finished_at=time.time())

    bench = Cell(m.dir / "bench.state.json", m.budget_s)
    signature = {label: cells[label].data.get("finished_at") for label in methods_run}
    if not (bench.finished and bench.data.get("signature") == signature):
        builds, applied = {}, {}
        for label, (_, build) in methods_run.items():
            if not cells[label].finished:
                applied[label] = {"error": f"not tuned: {cells[label].data.get('error')}"}
                continue
            try:
                tuned = build(m)
            except Exception as exc:
                log.exception("%s / %s: the build failed", m.name, label)
                applied[label] = {"error": f"build failed: {type(exc).__name__}: {exc}"}
                continue
            if not tuned.scheduled:
                log.warning("%s / %s: no tuning record was applied to any kernel", m.name, label)
            builds[label] = tuned.executable
            applied[label] = {
                "scheduled": len(tuned.scheduled),
                "kernels": tuned.kernels,
                "untuned": list(tuned.untuned),
            }
        result = bench_model(m.planned.imported, threads=[m.host.threads], builds=builds)
        try:
            groups = fused_groups(m)
        except Exception:  # the comparison of groups is an extra; the timings stand without it
            log.exception("%s: the fused-group comparison failed", m.name)
            groups = []
        bench.update(
            finished=True,
            signature=signature,
            applied=applied,
            groups=groups,
            bench=result.to_json(),
        )
    methods = {label: cells[label].data for label in methods_run}
    return {
        "model": m.name,
        "threads": m.host.threads,
        "budget_s": m.budget_s,
        "rows": method_rows(bench.data["bench"], methods, bench.data["applied"]),
        "groups": bench.data["groups"],
        "methods": methods,
        "bench": bench.data["bench"],
    }


# ---------------------------------------------------------------------------------------------
# results -> rows, summary, tables (pure functions of the JSON)


def method_rows(
    bench: dict[str, Any], methods: dict[str, dict], applied: dict[str, dict]
) -> dict[str, dict[str, Any]]:
    """Per runtime (ORT, TVM default, each method): latency, ratios, verified, tuning facts."""
    runs = {r["runtime"]: r for r in bench["runs"]}

    def latency_ms(label: str) -> float | None:
        run = runs.get(label)
        return run["timing"]["median"] * 1e3 if run and run.get("timing") else None

    ort, metaschedule = latency_ms(ORT), latency_ms(METASCHEDULE)
    rows = {}
    for label in (ORT, TVM_DEFAULT, *methods):
        run, facts, kernels = runs.get(label) or {}, methods.get(label, {}), applied.get(label, {})
        ms = latency_ms(label)
        errors = [c["max_rel_err"] for c in run.get("checks", []) if c["max_rel_err"] is not None]
        rows[label] = {
            "ms": ms,
            "vs_ort": ort / ms if ort and ms else None,
            "vs_metaschedule": metaschedule / ms if metaschedule and ms else None,
            "verified": bool(run.get("verified")),
            "max_rel_err": max(errors, default=None),
            "tuning_s": facts.get("tuning_s"),
            "trials": facts.get("trials"),
            "kernels_scheduled": kernels.get("scheduled"),
            "kernels": kernels.get("kernels"),
            "error": run.get("error") or kernels.get("error") or facts.get("error"),
        }
    return rows


def _geomean(values: list[float]) -> float | None:
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def summarize(results: list[dict]) -> dict[str, Any]:
    """Geometric-mean speedup of the search over MetaSchedule and over tune-tasks (models where
    both builds are verified), and on how many models the verified search beats ORT."""

    def speedups(other: str, ours_label: str = SEARCH) -> list[float]:
        out = []
        for result in results:
            rows = result["rows"]
            if ours_label not in rows or other not in rows:
                continue
            ours, theirs = rows[ours_label], rows[other]
            if ours["verified"] and theirs["verified"] and ours["ms"] and theirs["ms"]:
                out.append(theirs["ms"] / ours["ms"])
        return out

    over_ms, over_tt = speedups(METASCHEDULE), speedups(TUNE_TASKS)
    over_nchw = speedups(SEARCH_NCHW)
    over_no_transfer = speedups(SEARCH_NO_TRANSFER)
    winograd_over_direct = speedups(SEARCH_DIRECT)
    beats = [
        r["model"]
        for r in results
        if SEARCH in r["rows"]
        and r["rows"][SEARCH]["verified"]
        and r["rows"][SEARCH]["ms"]
        and r["rows"][ORT]["ms"]
        and r["rows"][SEARCH]["ms"] < r["rows"][ORT]["ms"]
    ]
    return {
        "search_over_metaschedule": {"geomean": _geomean(over_ms), "models": len(over_ms)},
        "search_over_tune_tasks": {"geomean": _geomean(over_tt), "models": len(over_tt)},
        "layouts_over_nchw_only": {"geomean": _geomean(over_nchw), "models": len(over_nchw)},
        "winograd_over_direct": {
            "geomean": _geomean(winograd_over_direct),
            "models": len(winograd_over_direct),
        },
        "transfer_over_none": {
            "geomean": _geomean(over_no_transfer),
            "models": len(over_no_transfer),
        },
        "search_beats_ort": {"models": beats, "count": len(beats), "of": len(results)},
    }


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value else "-"


def _ms(seconds_or_ms: float | None, scale: float = 1.0) -> str:
    return f"{seconds_or_ms * scale:.3f}" if seconds_or_ms is not None else "-"


def markdown(results: list[dict], summary: dict[str, Any]) -> str:
    head = ["model", "method", "latency ms", "vs ORT", "vs MetaSchedule", "verified"]
    head += ["tuning", "trials", "kernels tuned"]
    table = []
    for result in results:
        for label, row in result["rows"].items():
            kernels = f"{row['kernels_scheduled']}/{row['kernels']}" if row["kernels"] else "-"
            tuning = format_duration(row["tuning_s"]) if row["tuning_s"] is not None else "-"
            verified = "yes" if row["verified"] else ("NO" if row["ms"] else "failed")
            table.append(
                [
                    result["model"],
                    LABELS.get(label, label),
                    _ms(row["ms"]),
                    _x(row["vs_ort"]),
                    _x(row["vs_metaschedule"]),
                    verified,
                    tuning,
                    row["trials"] if row["trials"] is not None else "-",
                    kernels,
                ]
            )
    over_ms, over_tt = summary["search_over_metaschedule"], summary["search_over_tune_tasks"]
    beats = summary["search_beats_ort"]
    budget = format_duration(results[0]["budget_s"]) if results else "-"
    threads = results[0]["threads"] if results else "-"
    lines = [
        markdown_table(head, table, align="<<>>><>>>"),
        "",
        f"Search over MetaSchedule alone: {_x(over_ms['geomean'])} (geometric mean over "
        f"{over_ms['models']} models); over tune-tasks: {_x(over_tt['geomean'])} (over "
        f"{over_tt['models']}); the search beats ONNX Runtime on {beats['count']} of "
        f"{beats['of']} models."
        + (
            f" Layouts over NCHW only: {_x(summary['layouts_over_nchw_only']['geomean'])} (over "
            f"{summary['layouts_over_nchw_only']['models']})."
            if summary.get("layouts_over_nchw_only", {}).get("models")
            else ""
        )
        + (
            f" Transfer tuning over none: {_x(summary['transfer_over_none']['geomean'])} (over "
            f"{summary['transfer_over_none']['models']})."
            if summary.get("transfer_over_none", {}).get("models")
            else ""
        )
        + (
            f" Winograd over direct convs: {_x(summary['winograd_over_direct']['geomean'])} (over "
            f"{summary['winograd_over_direct']['models']})."
            if summary.get("winograd_over_direct", {}).get("models")
            else ""
        ),
        "",
        f"Budget {budget} of wall-clock time per method and model, {threads} threads. vs ORT / "
        "vs MetaSchedule: their latency / this latency (> 1: faster). Every build timed in one "
        "benchmark per model and its outputs checked against ORT's. Trials: MetaSchedule, "
        "records in its database; tune-tasks, search trials in its database; the search, its "
        "measurements. Kernels tuned: kernels a tuning record was applied to / kernels.",
    ]
    plans = []
    for result in results:
        for label in (SEARCH, SEARCH_NCHW, SEARCH_NO_TRANSFER, SEARCH_DIRECT):
            plan = (result["methods"].get(label, {}).get("summary") or {}).get("plan")
            if plan:
                layouts = ", ".join(f"{k} {v}" for k, v in sorted(plan["layouts"].items()))
                plans.append(
                    f"- {result['model']} / {LABELS[label]}: {plan['groups']} groups ({layouts}); "
                    f"layout transforms {plan['transforms']} placed, "
                    f"{plan.get('transforms_cancelled', 0)} cancelled"
                )
    if plans:
        lines += ["", "The searches' final plans:", *plans]
    failures = [
        f"- {result['model']} / {LABELS.get(label, label)}: {' '.join(row['error'].split())[:300]}"
        for result in results
        for label, row in result["rows"].items()
        if row["error"]
    ]
    if failures:
        lines += ["", "Failures:", *failures]
    groups = groups_markdown(results)
    if groups:
        lines += ["", groups]
    return "\n".join(lines)


def groups_markdown(results: list[dict]) -> str:
    """The search's groups of two or more complex ops vs their TVM-seed parts tuned alone."""
    head = ["model", "group", "complex ops", "ops", "fused ms", "parts", "parts ms", "parts/fused"]
    table = []
    for result in results:
        for g in result["groups"]:
            ops = [op.removeprefix("relax.").removeprefix("nn.") for op in g["ops"]]
            shown = "+".join(ops[:6]) + (f" (+{len(ops) - 6})" if len(ops) > 6 else "")
            parts = f"{len(g['parts'])}" + ("" if g["parts_cover_group"] else " (overlap)")
            table.append(
                [
                    result["model"],
                    g["group"],
                    g["complex_ops"],
                    shown,
                    _ms(g["fused_s"], 1e3),
                    parts,
                    _ms(g["parts_s"], 1e3),
                    _x(g["parts_over_fused"]),
                ]
            )
    if not table:
        return ""
    return "\n".join(
        [
            markdown_table(head, table, align="<>><>>>>"),
            "",
            "Groups of the search's final plan with two or more complex ops (convs, matmuls): "
            "fused ms, the best record of the group's kernel in the search's database; parts ms, "
            "the sum of the TVM-seed groups covering the same nodes, each at its best record in "
            'the tune-tasks or the search\'s database ("-": a part has no record, or a TVM '
            "group reaches outside the group: overlap). parts/fused > 1: fusing won.",
        ]
    )


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
    parser.add_argument(
        "--budget", default="10m", help="wall-clock time per method and model (45s, 10m, 1h)"
    )
    parser.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"comma-separated, of {', '.join(METHODS)} (default: {','.join(DEFAULT_METHODS)})",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=REPO / "results" / "bench_suite")
    parser.add_argument("--json", type=Path, default=REPO / "results" / "bench_suite.json")
    parser.add_argument("--readme", type=Path, help="write the table into this README too")
    parser.add_argument(
        "--marker",
        default="bench-suite",
        help="the README's table goes between <!-- MARKER:start --> and <!-- MARKER:end -->",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
    )
    for name in ("bench_suite", "metaschedule_alone", "ago_search.schedule", "ago_search.search"):
        logging.getLogger(name).setLevel(logging.INFO)

    budget_s = parse_budget(args.budget)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise SystemExit(f"--methods: choose among {', '.join(METHODS)} (not {unknown})")
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    zoo_dir = REPO / "datasets" / "zoo"
    try:
        manifest = make_zoo(zoo_dir, names)["models"]
    except ValueError as exc:  # an unknown model name
        raise SystemExit(f"--models: {exc}") from exc
    host = detect_host()
    results = []
    for name in names:
        entry = manifest[name]
        run = ModelRun(
            name=name,
            path=str(zoo_dir / entry["file"]),
            shapes={k: list(v) for k, v in entry["inputs"].items()},
            host=host,
            budget_s=budget_s,
            seed=args.seed,
            dir=args.work / name,
            methods=methods,
        )
        results.append(bench_one(run))
        data = {"host": host.to_json(), "budget_s": budget_s, "seed": args.seed}
        data.update(results=results, summary=summarize(results))
        write_json_atomic(data, args.json)
    table = markdown(results, summarize(results))
    print(table)
    if args.readme:
        replace_table(
            args.readme, f"<!-- {args.marker}:start -->", f"<!-- {args.marker}:end -->", table
        )
    print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
