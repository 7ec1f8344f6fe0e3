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
    summary: dict  # GraphSummary.to_dict()
    default_groups: tuple[GroupInfo, ...]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def multi_complex_groups(self) -> int:
        return sum(1 for g in self.default_groups if g.complex_ops > 1)

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "inputs": [{"name": n, "shape": list(s), "dtype": d} for n, s, d in self.inputs],
            "opset": self.opset,
            "original_opset": self.original_opset,
            "folded_nodes": self.folded_nodes,
            "summary": self.summary,
            "tvm_default_groups": {
                "count": len(self.default_groups),
                "multi_complex": self.multi_complex_groups,
                "groups": [
                    {
                        "name": g.name,
                        "nodes": list(g.nodes),
                        "ops": list(g.ops),
                        "complex_ops": g.complex_ops,
                    }
                    for g in self.default_groups
                ],
            },
            "seconds": self.seconds,
        }


def inspect(model: str | Path, input_shapes: list[str] | dict | None = None) -> InspectReport:
    """What is inside a model: operators, FLOPs, params, mapping types, TVM's default groups."""
    return inspect_imported(load(model, input_shapes))


def inspect_imported(imported: ImportedModel) -> InspectReport:
    """`inspect` for a model already imported."""
    from ago_search.devices import host_target
    from ago_search.graph import build_opgraph, legalize, summarize, tvm_default_groups

    seconds = dict(imported.seconds)
    target = host_target()
    start = time.perf_counter()
    legalized = legalize(imported.mod, target)
    graph = build_opgraph(imported.mod, target=target, legalized=legalized)
    seconds["opgraph"] = time.perf_counter() - start
    start = time.perf_counter()
    default = tvm_default_groups(imported.mod, target, graph=graph, legalized=legalized)
    seconds["default_fusion"] = time.perf_counter() - start
    groups = tuple(
        GroupInfo(
            name=g.name,
            nodes=tuple(g.nodes),
            ops=tuple(graph.node(n)["op"] for n in g.nodes),
            complex_ops=g.complex_ops,
        )
        for g in default.groups
    )
    return InspectReport(
        model=imported.path,
        inputs=tuple((s.name, s.shape, s.dtype) for s in imported.inputs),
        opset=imported.opset,
        original_opset=imported.original_opset,
        folded_nodes=imported.fold.nodes_folded,
        summary=summarize(graph).to_dict(),
        default_groups=groups,
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
