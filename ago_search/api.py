"""The Python API the CLI wraps: inspect(), bench(). Each call is data in, data out."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ago_search.frontend import ImportedModel, import_onnx, parse_input_shapes


def load(model: str | Path, input_shapes: list[str] | dict | None = None) -> ImportedModel:
    """Import `model`; `input_shapes` as CLI strings (NAME=DIMS) or a name -> shape dict."""
    if isinstance(input_shapes, dict):
        shapes = {k: tuple(v) for k, v in input_shapes.items()}
    else:
        shapes = parse_input_shapes(input_shapes)
    return import_onnx(model, shapes)


def write_json(data: Any, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


@dataclass(frozen=True)
class GroupInfo:
    name: str
    nodes: tuple[str, ...]
    ops: tuple[str, ...]
    complex_ops: int


@dataclass(frozen=True)
class InspectReport:
    model: str
    inputs: tuple[tuple[str, tuple[int, ...], str], ...]
    opset: int
    original_opset: int
    folded_nodes: int
    rewrite: dict | None  # RewriteReport.to_json(), None with --no-rewrite
    summary: dict  # GraphSummary.to_dict() of the graph the optimizer works on
    default_groups: tuple[GroupInfo, ...]
    plan_name: str | None = None  # a seed plan asked for with --plan
    plan_groups: tuple[GroupInfo, ...] = ()
    plan_notes: tuple[str, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def multi_complex_groups(self) -> int:
        return sum(1 for g in self.default_groups if g.complex_ops > 1)

    def to_json(self) -> dict:
        def groups(items: tuple[GroupInfo, ...]) -> dict:
            return {
                "count": len(items),
                "multi_complex": sum(1 for g in items if g.complex_ops > 1),
                "groups": [
                    {
                        "name": g.name,
                        "nodes": list(g.nodes),
                        "ops": list(g.ops),
                        "complex_ops": g.complex_ops,
                    }
                    for g in items
                ],
            }

        data = {
            "model": self.model,
            "inputs": [{"name": n, "shape": list(s), "dtype": d} for n, s, d in self.inputs],
            "opset": self.opset,
            "original_opset": self.original_opset,
            "folded_nodes": self.folded_nodes,
            "rewrite": self.rewrite,
            "summary": self.summary,
            "tvm_default_groups": groups(self.default_groups),
            "seconds": self.seconds,
        }
        if self.plan_name:
            data["plan"] = {"name": self.plan_name, "notes": list(self.plan_notes)}
            data["plan"].update(groups(self.plan_groups))
        return data


def inspect(
    model: str | Path,
    input_shapes: list[str] | dict | None = None,
    plan: str | None = None,
    rewrite: bool = True,
) -> InspectReport:
    """What is inside a model: operators, FLOPs, params, mapping types, TVM's default groups,
    and with `plan` one seed partition's groups (tvm, dnnfusion, intensive)."""
    return inspect_imported(load(model, input_shapes), plan=plan, rewrite=rewrite)


def inspect_imported(
    imported: ImportedModel, plan: str | None = None, rewrite: bool = True
) -> InspectReport:
    """`inspect` for a model already imported."""
    from ago_search.devices import host_target
    from ago_search.graph import summarize
    from ago_search.pipeline import prepare_model, seed_partition

    prepared = prepare_model(imported, host_target(), apply_rewrites=rewrite)
    seconds = {**imported.seconds, **prepared.seconds}
    graph = prepared.graph

    def infos(partition, names=None) -> tuple[GroupInfo, ...]:
        out = []
        for i, gid in enumerate(partition.group_ids):
            nodes = tuple(n for n in graph.order if n in partition.nodes_of(gid))
            ops = tuple(graph.node(n)["op"] for n in nodes)
            name = names[i] if names else f"g{gid}_" + "_".join(_short(o) for o in ops[:4])
            complex_ops = sum(1 for n in nodes if graph.node(n)["complex"])
            out.append(GroupInfo(name, nodes, ops, complex_ops))
        return tuple(out)

    start = time.perf_counter()
    default = seed_partition(prepared, "tvm")
    seconds["default_fusion"] = time.perf_counter() - start
    plan_groups, notes = (), ()
    if plan:
        start = time.perf_counter()
        seed = seed_partition(prepared, plan)
        seconds["plan"] = time.perf_counter() - start
        plan_groups = infos(seed.partition)
        notes = tuple(seed.notes)
        if seed.profile_edges:
            notes += (f"{len(seed.profile_edges)} producer->consumer pairs left to profiling",)
    return InspectReport(
        model=imported.path,
        inputs=tuple((s.name, s.shape, s.dtype) for s in imported.inputs),
        opset=imported.opset,
        original_opset=imported.original_opset,
        folded_nodes=imported.fold.nodes_folded,
        rewrite=prepared.rewrite_report.to_json() if prepared.rewrite_report else None,
        summary=summarize(graph).to_dict(),
        default_groups=infos(default.partition),
        plan_name=plan,
        plan_groups=plan_groups,
        plan_notes=notes,
        seconds=seconds,
    )


def _si(value: float, unit: str = "") -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


def format_inspect(report: InspectReport) -> str:
    s = report.summary
    lines = [f"model: {report.model}"]
    lines.append(
        "inputs: " + ", ".join(f"{n} {d}[{'x'.join(map(str, sh))}]" for n, sh, d in report.inputs)
    )
    opset = (
        f"{report.opset}"
        if report.opset == report.original_opset
        else f"{report.original_opset} -> {report.opset}"
    )
    lines.append(f"opset {opset}; {report.folded_nodes} shape-computing nodes folded to constants")
    if report.rewrite:
        rw = report.rewrite
        fired = [r for r in rw["rules"] if r["ops_removed"] > 0]
        lines.append(
            f"rewrites: {rw['ops_before']} -> {rw['ops_after']} operators ("
            + (", ".join(f"{r['rule']} -{r['ops_removed']}" for r in fired) or "none fired")
            + ")"
        )
    lines.append(
        f"operators: {s['nodes']} ({s['complex_ops']} complex), FLOPs: {_si(s['flops'])}, "
        f"parameters: {_si(s['params'])}, tensor traffic: {_si(s['bytes'], 'B')}"
    )
    lines.append("")
    lines.append(f"{'operator':<28}{'count':>6}{'FLOPs':>12}{'params':>11}  {'mapping':<13}complex")
    for op in s["ops"]:
        lines.append(
            f"{op['op']:<28}{op['count']:>6}{_si(op['flops']):>12}{_si(op['params']):>11}  "
            f"{op['mapping']:<13}{'yes' if op['complex'] else ''}"
        )
    lines.append("")
    lines.append("mapping types: " + ", ".join(f"{k} {v}" for k, v in s["mapping_counts"].items()))
    groups = report.default_groups
    by_complex: dict[int, int] = {}
    for g in groups:
        by_complex[g.complex_ops] = by_complex.get(g.complex_ops, 0) + 1
    lines.append(
        f"TVM default fusion: {len(groups)} groups; by complex ops per group: "
        + ", ".join(f"{k}: {v}" for k, v in sorted(by_complex.items()))
    )
    largest = sorted(groups, key=lambda g: (-len(g.nodes), g.name))[:5]
    for g in largest:
        lines.append(f"  {g.name}: {len(g.nodes)} ops ({', '.join(_short(o) for o in g.ops)})")
    if report.plan_name:
        plan_groups = report.plan_groups
        multi = sum(1 for g in plan_groups if g.complex_ops > 1)
        lines.append("")
        lines.append(
            f"plan '{report.plan_name}': {len(plan_groups)} groups, {multi} with several "
            "complex ops"
        )
        for note in report.plan_notes:
            lines.append(f"  note: {note}")
        for g in plan_groups:
            ops = ", ".join(_short(o) for o in g.ops[:8]) + (", ..." if len(g.ops) > 8 else "")
            lines.append(f"  {g.name:<40} {len(g.nodes):>3} ops, {g.complex_ops} complex  [{ops}]")
    return "\n".join(lines)


def _short(op: str) -> str:
    return op.removeprefix("relax.").removeprefix("nn.")


def bench(
    model: str | Path,
    input_shapes: list[str] | dict | None = None,
    threads: list[int] | None = None,
    repeat: int | None = None,
    warmup: int | None = None,
    min_repeat_ms: float | None = None,
    seed: int = 0,
):
    """ONNX Runtime vs TVM's default build on `model`, same protocol, outputs compared.

    Returns a `BenchResult` (ago_search.bench); a `None` option keeps the protocol default.
    """
    from ago_search.bench import bench_model
    from ago_search.errors import AgoSearchError
    from ago_search.measure import MeasureProtocol

    options = {"repeat": repeat, "warmup": warmup, "min_repeat_ms": min_repeat_ms}
    try:
        protocol = MeasureProtocol(**{k: v for k, v in options.items() if v is not None})
    except ValueError as exc:
        raise AgoSearchError(f"bench options: {exc}") from exc
    imported = load(model, input_shapes)
    return bench_model(imported, threads=threads, protocol=protocol, seed=seed)


def format_bench(result) -> str:
    from ago_search.bench import format_bench_table

    return format_bench_table(result)


# ---------------------------------------------------------------------------------------------
# tuning: tune-tasks and measure

DEFAULT_DB = "ago-tuning.db"
# Trials per task when none are asked for: enough for the first pass and a few rounds more.
DEFAULT_TRIALS_PER_TASK = 16


@dataclass(frozen=True)
class TunedModelReport:
    """A plan's tasks in the tuning database, the tuned build, and the model benchmark.

    tuning: the tuning run (None for `measure`); tasks: every task's state in the database
    (`schedule.TaskResult`); scheduled/untuned: the PrimFuncs of the tuned build that got a
    record and those built without one; bench: ORT, TVM's default build, the plan untuned
    ("plan-untuned") and tuned ("plan-tuned"), timed and verified against ORT (None where
    the device is not this machine).
    """

    model: str
    plan: str
    device: str
    device_key: str
    database: str
    tasks: tuple
    scheduled: tuple[str, ...]
    untuned: tuple[str, ...]
    tuning: Any | None = None  # schedule.TuningReport
    bench: Any | None = None  # bench.BenchResult
    notes: tuple[str, ...] = ()
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        return self.bench is None or self.bench.verified

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "plan": self.plan,
            "device": self.device,
            "device_key": self.device_key,
            "database": self.database,
            "tasks": [t.to_json() for t in self.tasks],
            "kernels": {"scheduled": list(self.scheduled), "untuned": list(self.untuned)},
            "tuning": self.tuning.to_json() if self.tuning is not None else None,
            "bench": self.bench.to_json() if self.bench is not None else None,
            "notes": list(self.notes),
            "seconds": dict(self.seconds),
            "verified": self.verified,
        }


def _plan_for(prepared, plan: str | Path):
    """A seed plan by name, or a plan.json; (Plan, its description)."""
    from ago_search.pipeline import SEED_NAMES, seed_partition
    from ago_search.plan import Plan

    if str(plan) in SEED_NAMES:
        seed = seed_partition(prepared, str(plan))
        return Plan.from_assignment(prepared.graph, seed.partition.assignment()), str(plan)
    path = Path(plan)
    if not path.is_file():
        from ago_search.errors import AgoSearchError

        raise AgoSearchError(
            f"--plan {plan}: neither a seed plan ({', '.join(SEED_NAMES)}) nor a plan file"
        )
    return Plan.load(path), str(path)


def _planned_tasks(model, input_shapes, plan, profile):
    """Import, prepare, plan and extract the tasks for the device's target."""
    from ago_search.pipeline import prepare_model
    from ago_search.plan import apply_plan
    from ago_search.schedule import extract_tasks

    target = profile.tvm_target()
    imported = load(model, input_shapes)
    prepared = prepare_model(imported, target)
    the_plan, plan_name = _plan_for(prepared, plan)
    fused = apply_plan(prepared.legalized, prepared.graph, the_plan, target)
    tasks = extract_tasks(fused, target, the_plan, prepared.graph)
    return imported, prepared, the_plan, plan_name, tasks


def _tuned_build_and_bench(
    imported, prepared, the_plan, profile, store, threads: list[int] | None, bench: bool
) -> tuple[Any, Any | None, tuple[str, ...], dict[str, float]]:
    from ago_search.bench import bench_model
    from ago_search.plan import compile_plan, compile_plan_tuned

    target = profile.tvm_target()
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    tuned = compile_plan_tuned(
        prepared.legalized,
        prepared.graph,
        the_plan,
        target,
        store.metaschedule(profile.key, target),
    )
    seconds["compile_tuned"] = time.perf_counter() - start
    result, notes = None, ()
    if bench and not profile.is_local:
        notes = (f"device {profile.name} is reached over RPC: the whole model is not timed",)
    elif bench:
        start = time.perf_counter()
        untuned = compile_plan(prepared.legalized, prepared.graph, the_plan, target)
        result = bench_model(
            imported,
            threads=threads or [profile.threads],
            builds={"plan-untuned": untuned, "plan-tuned": tuned.executable},
        )
        seconds["bench"] = time.perf_counter() - start
    return tuned, result, notes, seconds


def tune_tasks(
    model: str | Path,
    input_shapes: list[str] | dict | None = None,
    plan: str | Path = "tvm",
    trials: int | None = None,
    db: str | Path = DEFAULT_DB,
    device: str = "host",
    scheduler: str = "first-pass",
    cost_model: str = "xgb",
    trials_per_round: int | None = None,
    verify: bool = True,
    seed: int | None = None,
    threads: list[int] | None = None,
    bench: bool = True,
) -> TunedModelReport:
    """Tune the tasks of `model` under `plan` (a seed plan name or a plan.json) on `device`
    into the database `db`, then build the model with the best records and benchmark it
    against its untuned build, TVM's default build and ONNX Runtime.

    trials: search trials the plan's tasks should have in the database in all (default
    DEFAULT_TRIALS_PER_TASK per task); run again after a kill, it measures only the rest.
    """
    from ago_search.database import TuningDatabase
    from ago_search.devices import load_device
    from ago_search.schedule.tune import TuningConfig
    from ago_search.schedule.tune import tune_tasks as run_tuning

    profile = load_device(device)
    start = time.perf_counter()
    imported, prepared, the_plan, plan_name, tasks = _planned_tasks(
        model, input_shapes, plan, profile
    )
    seconds = {"prepare": time.perf_counter() - start}
    if trials is None:
        trials = DEFAULT_TRIALS_PER_TASK * len(tasks)
    config = TuningConfig(
        trials=trials,
        scheduler=scheduler,
        trials_per_round=trials_per_round,
        cost_model=cost_model,
        verify=verify,
        seed=seed,
    )
    store = TuningDatabase(db)
    try:
        start = time.perf_counter()
        tuning = run_tuning(tasks, profile, store, config)
        seconds["tune"] = time.perf_counter() - start
        tuned, result, notes, more = _tuned_build_and_bench(
            imported, prepared, the_plan, profile, store, threads, bench
        )
    finally:
        store.close()
    return TunedModelReport(
        model=imported.path,
        plan=plan_name,
        device=profile.name,
        device_key=profile.key,
        database=str(db),
        tasks=tuning.tasks,
        scheduled=tuned.scheduled,
        untuned=tuned.untuned,
        tuning=tuning,
        bench=result,
        notes=notes,
        seconds={**seconds, **more},
    )


def measure(
    model: str | Path,
    input_shapes: list[str] | dict | None = None,
    plan: str | Path = "tvm",
    db: str | Path = DEFAULT_DB,
    device: str = "host",
    threads: list[int] | None = None,
) -> TunedModelReport:
    """Build `model` under `plan` with the best records of `db` for `device` and benchmark
    it (untuned plan, TVM's default build, ONNX Runtime), verified against ORT."""
    from ago_search.database import TuningDatabase
    from ago_search.devices import load_device
    from ago_search.schedule.tune import task_results

    profile = load_device(device)
    store = TuningDatabase(db, read_only=True)
    try:
        start = time.perf_counter()
        imported, prepared, the_plan, plan_name, tasks = _planned_tasks(
            model, input_shapes, plan, profile
        )
        seconds = {"prepare": time.perf_counter() - start}
        results = task_results(store, tasks, profile.key)
        tuned, result, notes, more = _tuned_build_and_bench(
            imported, prepared, the_plan, profile, store, threads, True
        )
    finally:
        store.close()
    return TunedModelReport(
        model=imported.path,
        plan=plan_name,
        device=profile.name,
        device_key=profile.key,
        database=str(db),
        tasks=results,
        scheduled=tuned.scheduled,
        untuned=tuned.untuned,
        bench=result,
        notes=notes,
        seconds={**seconds, **more},
    )


def _ms(seconds: float | None) -> str:
    return f"{seconds * 1e3:.4g}" if seconds is not None else "-"


def format_tuned(report: TunedModelReport) -> str:
    """The per-task table, the kernels applied, and the model benchmark."""
    lines = [
        f"model:    {report.model}",
        f"plan:     {report.plan}, {len(report.tasks)} tasks",
        f"device:   {report.device} ({report.device_key}), database {report.database}",
    ]
    tuning = report.tuning
    if tuning is not None:
        lines.append(
            f"tuning:   {tuning.trials_run} trials this run ({tuning.trials_before} before, "
            f"budget {tuning.budget}), scheduler {tuning.scheduler}, rounds of "
            f"{tuning.trials_per_round}, cost model {tuning.cost_model or '-'}, "
            f"{tuning.wall_s:.0f} s"
        )
    lines.append("")
    width = max([len("task"), *(len(t.name) for t in report.tasks)])
    header = (
        f"{'task':<{width}} {'weight':>6} {'trials':>6} {'new':>5} {'best ms':>9} "
        f"{'untuned ms':>10} {'speedup':>8}  failures"
    )
    lines += [header, "-" * len(header)]
    for t in report.tasks:
        speedup = (
            f"{t.untuned_seconds / t.best_seconds:.1f}x"
            if t.best_seconds and t.untuned_seconds
            else "-"
        )
        failures = ", ".join(f"{k} {v}" for k, v in sorted(t.statuses.items()) if k != "ok")
        lines.append(
            f"{t.name:<{width}} {t.weight:>6} {t.trials:>6} {t.new_trials:>5} "
            f"{_ms(t.best_seconds):>9} {_ms(t.untuned_seconds):>10} {speedup:>8}  {failures}"
        )
    tuned_sum = sum(t.weight * t.best_seconds for t in report.tasks if t.best_seconds)
    untuned_sum = sum(t.weight * t.untuned_seconds for t in report.tasks if t.untuned_seconds)
    lines.append(
        f"kernels, sum of weight x latency: best {tuned_sum * 1e3:.4g} ms, untuned "
        f"{untuned_sum * 1e3:.4g} ms"
    )
    kernels = len(report.scheduled) + len(report.untuned)
    lines.append(f"tuned build: {len(report.scheduled)} of {kernels} kernels got a record")
    if report.untuned:
        shown = ", ".join(report.untuned[:6]) + (", ..." if len(report.untuned) > 6 else "")
        lines.append(f"  built untuned: {shown}")
    for note in report.notes:
        lines.append(f"note: {note}")
    if report.bench is not None:
        lines += ["", format_bench(report.bench)]
    return "\n".join(lines)


def train_cost_model(
    traces,
    out: str | Path,
    held_out_models: list[str] | None = None,
    device_key: str | None = None,
    steps: int | None = None,
    compare_xgb: bool = True,
    remeasured_only: bool = False,
) -> dict:
    """Train the GNN cost model on trace files; metrics on held-out models (and XGB's).
    remeasured_only: only schedules whose label `ago-search remeasure` made."""
    from cost_model.cli import train_cost_model as train
    from cost_model.configs.default import Config

    config = Config()
    if steps:
        config = config.replace(num_steps=steps)
    return train(
        traces,
        out,
        held_out_models,
        config,
        device_key,
        compare_xgb=compare_xgb,
        remeasured_only=remeasured_only,
    )


def format_cost_model_metrics(metrics: dict) -> str:
    keys = ("pairwise_accuracy", "kendall_tau", "top1_peak", "top5_peak", "mape")
    held = metrics.get("held_out_models") or []
    lines = [f"held-out models: {', '.join(held) if held else 'none (trained on every model)'}"]
    lines.append(f"{'model':<6}" + "".join(f"{k:>19}" for k in keys))
    for name in ("gnn", "xgb"):
        row = metrics.get(name)
        if isinstance(row, dict):
            cells = "".join(
                f"{row[k]:>19.3f}" if isinstance(row.get(k), int | float) else f"{'-':>19}"
                for k in keys
            )
            lines.append(f"{name:<6}{cells}")
    return "\n".join(lines)


def collect(
    models: list[str] | None = None,
    device: str = "host",
    db: str | Path | None = None,
    out: str | Path | None = None,
    seeds: list[str] | None = None,
    zoo: str | Path | None = None,
    **options: Any,
):
    """Device traces for the cost model (`ago_search.collect.collect`): the zoo's tasks under
    every seed plan, tuned in passes into `db` and exported to `out`; a `CollectReport`."""
    from ago_search import collect as collector

    return collector.collect(
        models=models,
        device=device,
        db=db,
        out=out,
        seeds=seeds or collector.SEEDS,
        zoo=zoo or collector.DEFAULT_ZOO,
        **options,
    )


def format_collect(report) -> str:
    """The summary `ago-search collect` prints."""
    from ago_search.collect import format_collect as fmt

    return fmt(report)


def remeasure(db: str | Path, device: str = "host", **options: Any):
    """Time the ok records of a tuning database again on this machine and replace their
    labels (`ago_search.remeasure.remeasure`); a `RemeasureReport`."""
    from ago_search.remeasure import remeasure as run

    return run(db, device=device, **options)


def format_remeasure(report) -> str:
    """The summary `ago-search remeasure` prints."""
    from ago_search.remeasure import format_remeasure as fmt

    return fmt(report)
