"""The one path from (model, input shapes, plan or seed, device) to what tuning and the
search work on: import -> rewrite -> legalize -> OpGraph -> plan -> fused module -> tasks.

- `load_planned(model, input_shapes, plan, device)`: all of it, as a `PlannedModel` (the
  imported and prepared model, the plan, the fused module, built once, and its tasks). The
  CLI, `collect`, the scripts and the tests start here.
- `prepare_model(imported, target)`: the DNNFusion-style rewrites on the high-level Relax
  module, legalization (every operator a `call_tir`; the module plans are applied to) and the
  OpGraph read off it. Everything downstream takes a `PreparedModel`, so the three stay
  consistent: a plan made on this graph applies to this legalized module.
- `plan_model(prepared, plan)`: one plan (a seed name, a plan.json or a `Plan`) of a prepared
  model, applied once, with its tasks; several plans of one model share its preparation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import tvm

from ago_search.devices import DeviceProfile, load_device
from ago_search.errors import AgoSearchError
from ago_search.frontend import ImportedModel, import_onnx, parse_input_shapes
from ago_search.graph import OpGraph, build_opgraph, legalize, tvm_default_groups
from ago_search.layout import LayoutError, parse_layout, touches_activation
from ago_search.partition import (
    SeedResult,
    dnnfusion_seed,
    host_cache_bytes,
    intensive_seed,
    tvm_seed,
)
from ago_search.plan import Plan, apply_plan
from ago_search.rewrite import RewriteReport, rewrite
from ago_search.schedule.tasks import Task, extract_tasks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedModel:
    imported: ImportedModel
    target: tvm.target.Target
    mod: tvm.IRModule  # high-level Relax after rewriting
    legalized: tvm.IRModule
    graph: OpGraph
    rewrite_report: RewriteReport | None
    seconds: dict[str, float] = field(default_factory=dict)
    winograd: int | None = None  # the Winograd tile its 3x3 convs were legalized with, if any


def prepare_model(
    imported: ImportedModel,
    target: tvm.target.Target,
    rewrite_rules: Sequence[str] | None = None,
    apply_rewrites: bool = True,
    winograd: int | None = None,
) -> PreparedModel:
    """Rewrite (all rules, or the ones named), legalize and build the OpGraph. `winograd`: a
    tile size (`ago_search.graph.winograd.TILES`) for the 3x3 stride-1 convs it applies to."""
    seconds: dict[str, float] = {}
    mod, report = imported.mod, None
    if apply_rewrites:
        start = time.perf_counter()
        mod, report = rewrite(imported.mod, rules=rewrite_rules)
        seconds["rewrite"] = time.perf_counter() - start
        log.info("rewrites: %d -> %d operator bindings", report.ops_before, report.ops_after)
    start = time.perf_counter()
    legalized = legalize(mod, target, winograd=winograd)
    seconds["legalize"] = time.perf_counter() - start
    start = time.perf_counter()
    graph = build_opgraph(mod, target=target, legalized=legalized)
    seconds["opgraph"] = time.perf_counter() - start
    return PreparedModel(imported, target, mod, legalized, graph, report, seconds, winograd)


SEED_NAMES = ("tvm", "dnnfusion", "intensive")


def seed_partition(
    prepared: PreparedModel, name: str, cache_bytes: int | None = None
) -> SeedResult:
    """One of the seed partitions (`SEED_NAMES`) of a prepared model, as a `SeedResult`.

    `intensive` fuses several complex ops while the group's working set fits `cache_bytes`
    (default: this host's L2, `host_cache_bytes()`).
    """
    graph = prepared.graph
    if name == "tvm":
        default = tvm_default_groups(
            prepared.mod, prepared.target, graph=graph, legalized=prepared.legalized
        )
        return tvm_seed(graph, default)
    if name == "dnnfusion":
        return dnnfusion_seed(graph)
    if name == "intensive":
        budget = cache_bytes if cache_bytes is not None else host_cache_bytes()
        return intensive_seed(graph, cache_bytes=budget)
    raise AgoSearchError(f"unknown seed plan '{name}': choose one of {', '.join(SEED_NAMES)}")


def seed_plan(prepared: PreparedModel, name: str, cache_bytes: int | None = None) -> Plan:
    """The `Plan` of one seed partition (`SEED_NAMES`) of a prepared model; "SEED/LAYOUT"
    (`tvm/NHWC`, `intensive/NCHW16c`) puts every group that holds a rank-4 activation in
    that layout."""
    base, _, layout = name.partition("/")
    seed = seed_partition(prepared, base, cache_bytes)
    plan = Plan.from_assignment(prepared.graph, seed.partition.assignment())
    if not layout:
        return plan
    try:
        parsed = parse_layout(layout)
    except LayoutError as err:
        raise AgoSearchError(f"seed plan '{name}': {err}") from err
    if parsed.is_default:
        return plan
    layout = parsed.name
    graph = prepared.graph
    return plan.with_groups(
        [
            replace(g, layout=layout) if any(touches_activation(graph, n) for n in g.nodes) else g
            for g in plan.groups
        ]
    )


def is_seed_name(name: str) -> bool:
    """A seed plan's name: one of `SEED_NAMES`, alone or as SEED/LAYOUT."""
    return str(name).partition("/")[0] in SEED_NAMES


def resolve_plan(prepared: PreparedModel, plan: str | Path | Plan) -> tuple[Plan, str]:
    """A seed plan by name, a plan.json, or a `Plan` as it is; with the name it goes by."""
    if isinstance(plan, Plan):
        return plan, "plan"
    if is_seed_name(str(plan)) and not Path(plan).is_file():
        return seed_plan(prepared, str(plan)), str(plan)
    path = Path(plan)
    if not path.is_file():
        raise AgoSearchError(
            f"--plan {plan}: neither a seed plan ({', '.join(SEED_NAMES)}) nor a plan file"
        )
    return Plan.load(path), str(path)


@dataclass(frozen=True)
class PlannedModel:
    """A prepared model under one plan: the fused module (apply_plan, made once) and the
    distinct tasks it calls, for the prepared model's target."""

    prepared: PreparedModel
    plan: Plan
    plan_name: str
    fused: tvm.IRModule
    tasks: tuple[Task, ...]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def imported(self) -> ImportedModel:
        return self.prepared.imported

    @property
    def graph(self) -> OpGraph:
        return self.prepared.graph

    @property
    def target(self) -> tvm.target.Target:
        return self.prepared.target


def plan_model(prepared: PreparedModel, plan: str | Path | Plan = "tvm") -> PlannedModel:
    """Apply one plan (seed name, plan.json or `Plan`) to a prepared model; extract its tasks."""
    start = time.perf_counter()
    the_plan, name = resolve_plan(prepared, plan)
    from_file = isinstance(plan, str | Path) and Path(plan).is_file()
    if from_file and the_plan.winograd != prepared.winograd:
        raise AgoSearchError(
            f"--plan {plan} is a plan of the model with {_winograd_text(the_plan.winograd)}, "
            f"not with {_winograd_text(prepared.winograd)}: prepare the model as the plan says "
            "(ago-search reads it from the plan file where it loads the model itself)"
        )
    the_plan = replace(the_plan, winograd=prepared.winograd)
    fused = apply_plan(prepared.legalized, prepared.graph, the_plan, prepared.target)
    seconds = {"plan": time.perf_counter() - start}
    start = time.perf_counter()
    tasks = extract_tasks(fused, prepared.target, the_plan, prepared.graph)
    seconds["tasks"] = time.perf_counter() - start
    return PlannedModel(prepared, the_plan, name, fused, tuple(tasks), seconds)


def _winograd_text(tile: int | None) -> str:
    return f"Winograd F({tile}x{tile}, 3x3) convs" if tile else "direct convs"


def plan_winograd(plan: str | Path | Plan) -> int | None:
    """The Winograd tile a plan (a `Plan` or a plan.json) was made with; None for a seed name."""
    if isinstance(plan, Plan):
        return plan.winograd
    if is_seed_name(str(plan)) and not Path(plan).is_file():
        return None
    path = Path(plan)
    return Plan.load(path).winograd if path.is_file() else None


def import_model(
    model: str | Path | ImportedModel,
    input_shapes: Sequence[str] | Mapping[str, Sequence[int]] | None = None,
) -> ImportedModel:
    """Import an ONNX file; `input_shapes` as CLI strings (NAME=DIMS) or a name -> shape map.
    An `ImportedModel` is returned as it is."""
    if isinstance(model, ImportedModel):
        return model
    if isinstance(input_shapes, Mapping):
        shapes = {k: tuple(v) for k, v in input_shapes.items()}
    else:
        shapes = parse_input_shapes(list(input_shapes) if input_shapes else None)
    return import_onnx(model, shapes)


def load_planned(
    model: str | Path | ImportedModel,
    input_shapes: Sequence[str] | Mapping[str, Sequence[int]] | None = None,
    plan: str | Path | Plan = "tvm",
    device: str | Path | DeviceProfile = "host",
    *,
    rewrite_rules: Sequence[str] | None = None,
    apply_rewrites: bool = True,
    winograd: int | None = None,
) -> PlannedModel:
    """Model file (or imported model) -> imported, prepared, planned, fused, tasks, for the
    device's target (`device`: "host", a profile name or TOML path, or a `DeviceProfile`).
    `winograd`: the tile for its 3x3 convs (`ago_search.graph.winograd`); None: as the plan
    says (a plan.json the search wrote with Winograd convs), else direct."""
    profile = device if isinstance(device, DeviceProfile) else load_device(device)
    start = time.perf_counter()
    imported = import_model(model, input_shapes)
    if winograd is None:
        winograd = plan_winograd(plan)
    prepared = prepare_model(
        imported,
        profile.tvm_target(),
        rewrite_rules=rewrite_rules,
        apply_rewrites=apply_rewrites,
        winograd=winograd,
    )
    seconds = {"prepare": time.perf_counter() - start}
    planned = plan_model(prepared, plan)
    return PlannedModel(
        prepared,
        planned.plan,
        planned.plan_name,
        planned.fused,
        planned.tasks,
        {**seconds, **planned.seconds},
    )
