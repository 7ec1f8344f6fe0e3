"""The Python API the CLI wraps: inspect(), bench(). Each call is data in, data out."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ago_search.frontend import ImportedModel
from ago_search.report import summaries


def load(model: str | Path, input_shapes: list[str] | dict | None = None) -> ImportedModel:
    """Import `model`; `input_shapes` as CLI strings (NAME=DIMS) or a name -> shape dict."""
    from ago_search.pipeline import import_model

    return import_model(model, input_shapes)


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
    layout: str | None = None


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
    plan_name: str | None = None  # a seed plan or plan.json asked for with --plan
    plan_groups: tuple[GroupInfo, ...] = ()
    plan_notes: tuple[str, ...] = ()
    plan_transforms: tuple[dict, ...] = ()  # the layout transforms the plan places
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
                        "layout": g.layout or "NCHW",
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
            data["plan"]["transforms"] = list(self.plan_transforms)
        return data


def inspect(
    model: str | Path,
    input_shapes: list[str] | dict | None = None,
    plan: str | None = None,
    rewrite: bool = True,
) -> InspectReport:
    """What is inside a model: operators, FLOPs, params, mapping types, TVM's default groups,
    and with `plan` one plan's groups with their layouts and the layout transforms it places
    (a seed: tvm, dnnfusion, intensive; or a plan.json, the search's among them)."""
    return inspect_imported(load(model, input_shapes), plan=plan, rewrite=rewrite)


def inspect_imported(
    imported: ImportedModel, plan: str | None = None, rewrite: bool = True
) -> InspectReport:
    """`inspect` for a model already imported."""
    from ago_search.devices import host_target
    from ago_search.graph import summarize
    from ago_search.pipeline import (
        SEED_NAMES,
        plan_winograd,
        prepare_model,
        resolve_plan,
        seed_partition,
    )
    from ago_search.plan import group_function_names, plan_borders, validate_plan

    winograd = plan_winograd(plan) if plan else None
    prepared = prepare_model(imported, host_target(), apply_rewrites=rewrite, winograd=winograd)
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
    plan_groups, notes, transforms = (), (), ()
    if plan and str(plan) in SEED_NAMES:  # a seed alone: its notes too
        start = time.perf_counter()
        seed = seed_partition(prepared, plan)
        seconds["plan"] = time.perf_counter() - start
        plan_groups = infos(seed.partition)
        notes = tuple(seed.notes)
        if seed.profile_edges:
            notes += (f"{len(seed.profile_edges)} producer->consumer pairs left to profiling",)
    elif plan:
        loaded, _ = resolve_plan(prepared, plan)
        validate_plan(graph, loaded)
        names = group_function_names(graph, loaded)
        plan_groups = tuple(
            GroupInfo(
                name,
                g.nodes,
                tuple(graph.node(n)["op"] for n in g.nodes),
                sum(1 for n in g.nodes if graph.node(n)["complex"]),
                g.layout,
            )
            for name, g in zip(names, loaded.groups, strict=True)
        )
        borders = plan_borders(
            graph, [g.nodes for g in loaded.groups], [g.layout for g in loaded.groups]
        )
        transforms = tuple(
            {"tensor": b.tensor, "shape": list(b.shape), "from": b.source, "to": b.target}
            for b in borders
        )
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
        plan_transforms=transforms,
        seconds=seconds,
    )


def format_inspect(report: InspectReport) -> str:
    """The summary `ago-search inspect` prints (`report.format_inspect` of its JSON)."""
    return summaries.format_inspect(report.to_json())


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
    """The table `ago-search bench` prints (`report.format_bench` of the `BenchResult`'s JSON)."""
    return summaries.format_bench(result.to_json())


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


def _tuned_build_and_bench(
    planned, profile, store, threads: list[int] | None, bench: bool
) -> tuple[Any, Any | None, tuple[str, ...], dict[str, float]]:
    from ago_search.bench import bench_model
    from ago_search.build import compile_plan, compile_plan_tuned
    from ago_search.database import SqliteDatabase

    prepared, target = planned.prepared, planned.target
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    tuned = compile_plan_tuned(
        prepared.legalized,
        prepared.graph,
        planned.plan,
        target,
        SqliteDatabase(store, profile.key, target),
        fused=planned.fused,
    )
    seconds["compile_tuned"] = time.perf_counter() - start
    result, notes = None, ()
    if bench and not profile.is_local:
        notes = (f"device {profile.name} is reached over RPC: the whole model is not timed",)
    elif bench:
        start = time.perf_counter()
        untuned = compile_plan(
            prepared.legalized, prepared.graph, planned.plan, target, fused=planned.fused
        )
        result = bench_model(
            planned.imported,
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
    from ago_search.pipeline import load_planned
    from ago_search.schedule.config import TuningConfig
    from ago_search.schedule.tune import tune_tasks as run_tuning
    from cost_model.factory import make_cost_model

    profile = load_device(device)
    planned = load_planned(model, input_shapes, plan, profile)
    tasks = planned.tasks
    seconds = {"prepare": sum(planned.seconds.values())}
    if trials is None:
        trials = DEFAULT_TRIALS_PER_TASK * len(tasks)
    config = TuningConfig(
        trials=trials,
        scheduler=scheduler,
        trials_per_round=trials_per_round,
        verify=verify,
        seed=seed,
    )
    store = TuningDatabase(db)
    try:
        start = time.perf_counter()
        guide = make_cost_model(cost_model, seed=seed)
        tuning = run_tuning(tasks, profile, store, config, cost_model=guide)
        seconds["tune"] = time.perf_counter() - start
        tuned, result, notes, more = _tuned_build_and_bench(planned, profile, store, threads, bench)
    finally:
        store.close()
    return TunedModelReport(
        model=planned.imported.path,
        plan=planned.plan_name,
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
    from ago_search.pipeline import load_planned
    from ago_search.schedule.results import task_results

    profile = load_device(device)
    store = TuningDatabase(db, read_only=True)
    try:
        planned = load_planned(model, input_shapes, plan, profile)
        seconds = {"prepare": sum(planned.seconds.values())}
        results = task_results(store, planned.tasks, profile.key)
        tuned, result, notes, more = _tuned_build_and_bench(planned, profile, store, threads, True)
    finally:
        store.close()
    return TunedModelReport(
        model=planned.imported.path,
        plan=planned.plan_name,
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


def format_tuned(report: TunedModelReport) -> str:
    """The per-task table, the kernels applied, and the model benchmark."""
    return summaries.format_tuned(report.to_json())


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
    remeasured_only: only clean labels (`cost_model.input_pipeline.clean_label`): re-measured
    ones, and those measured after the measurement fix of 2026-11-21."""
    from cost_model.configs.default import Config
    from cost_model.training import train_cost_model as train

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
    """The scores `ago-search train-cost-model` prints from its metrics dict."""
    return summaries.format_cost_model_metrics(metrics)


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
    return summaries.format_collect(report.to_json())


def remeasure(db: str | Path, device: str = "host", **options: Any):
    """Time the ok records of a tuning database again on this machine and replace their
    labels (`ago_search.remeasure.remeasure`); a `RemeasureReport`."""
    from ago_search.remeasure import remeasure as run

    return run(db, device=device, **options)


def format_remeasure(report) -> str:
    """The summary `ago-search remeasure` prints."""
    return summaries.format_remeasure(report.to_json())


# ---------------------------------------------------------------------------------------------
# the search: ago-search MODEL --budget 2h


def default_out(model: str | Path) -> Path:
    """The output folder a search of `model` gets when none is given: <stem>-ago-search."""
    return Path(f"{Path(model).stem}-ago-search")


def search(
    model: str | Path,
    budget: str | float,
    input_shapes: list[str] | dict | None = None,
    device: str = "host",
    out: str | Path | None = None,
    seed: int = 0,
    ray_address: str | None = None,
    cost_model: str = "gnn",
    progress: bool = True,
    **options: Any,
):
    """Search partitions, fusion and schedules of `model` on `device` for `budget` (seconds,
    or text like "45s", "20m", "2h") and write the verified best plan, its library, every
    measurement and a summary to `out` (default: `default_out(model)`). Run again on the same
    `out`, it goes on where it stopped. Returns a `SearchResult` (ago_search.search.driver);
    `options` are further `SearchConfig` fields."""
    import ray
    from tqdm.contrib.logging import logging_redirect_tqdm

    from ago_search.devices import load_device
    from ago_search.errors import AgoSearchError
    from ago_search.search.budget import parse_budget
    from ago_search.search.driver import SearchConfig, run_search
    from ago_search.search.progress import SearchProgressBar
    from ago_search.search.state import OutputFolder
    from cost_model.factory import COST_MODELS, make_cost_model

    seconds = float(budget) if isinstance(budget, int | float) else parse_budget(budget)
    if cost_model not in COST_MODELS:
        raise AgoSearchError(f"--cost-model {cost_model}: choose one of {', '.join(COST_MODELS)}")
    profile = load_device(device)
    imported = load(model, input_shapes)
    out_dir = Path(out) if out is not None else default_out(model)
    config = SearchConfig(budget_s=seconds, seed=seed, cost_model=cost_model, **options)
    started_ray = False
    if ray_address is not None and not ray.is_initialized():
        ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
        started_ray = True
    state = None
    folder = OutputFolder(out_dir)
    if folder.state_file.exists():
        import json

        state = json.loads(folder.state_file.read_text())
    bar = SearchProgressBar(seconds, float((state or {}).get("spent_s", 0.0)), enabled=progress)
    try:
        with logging_redirect_tqdm():
            return run_search(
                imported,
                profile,
                out_dir,
                config,
                make_cost_model(cost_model, seed=seed),
                on_progress=bar,
            )
    finally:
        bar.close()
        if started_ray:
            ray.shutdown()


def format_search(result) -> str:
    """What the search prints at its end (from its summary)."""
    return summaries.format_search(result.summary)
