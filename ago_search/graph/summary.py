"""Plain-data summaries of an OpGraph, for the `inspect` command and reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ago_search.graph.mapping import MappingType
from ago_search.graph.opgraph import OpGraph


@dataclass(frozen=True)
class OpTypeSummary:
    """All nodes of one operator type."""

    op: str
    count: int
    flops: int
    params: int  # sum over the nodes (a weight shared by two nodes counts twice)
    bytes: int
    mapping: str
    complex: bool


@dataclass(frozen=True)
class GraphSummary:
    """Totals of an OpGraph."""

    nodes: int
    edges: int
    flops: int
    params: int  # distinct constant elements: each weight once
    bytes: int
    complex_ops: int
    inputs: tuple[tuple[str, tuple[int, ...], str], ...]
    outputs: tuple[str, ...]
    ops: tuple[OpTypeSummary, ...]  # by FLOPs, largest first
    mapping_counts: dict[str, int]  # every mapping type, zero included

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready plain data."""
        return asdict(self)


def ops_by_type(graph: OpGraph) -> tuple[OpTypeSummary, ...]:
    """One row per operator type: count, FLOPs, params, bytes; most FLOPs first."""
    rows: dict[str, dict[str, Any]] = {}
    for n in graph.order:
        a = graph.node(n)
        row = rows.setdefault(
            a["op"],
            {"count": 0, "flops": 0, "params": 0, "bytes": 0, "mapping": a["mapping"]},
        )
        row["count"] += 1
        row["flops"] += a["flops"]
        row["params"] += a["params"]
        row["bytes"] += a["bytes"]
        row["complex"] = bool(row.get("complex", False) or a["complex"])
    summaries = [OpTypeSummary(op=op, **row) for op, row in rows.items()]
    return tuple(sorted(summaries, key=lambda s: (-s.flops, -s.count, s.op)))


def mapping_counts(graph: OpGraph) -> dict[str, int]:
    """Number of nodes of each DNNFusion mapping type (all five keys, zeros included)."""
    counts = {m.value: 0 for m in MappingType}
    for n in graph.order:
        counts[graph.node(n)["mapping"]] += 1
    return counts


def total_flops(graph: OpGraph) -> int:
    """FLOPs of the whole graph (conventions in `ago_search.graph.flops`)."""
    return sum(graph.node(n)["flops"] for n in graph.order)


def summarize(graph: OpGraph) -> GraphSummary:
    """Everything `inspect` prints about a graph, as plain data."""
    return GraphSummary(
        nodes=len(graph.order),
        edges=graph.graph.number_of_edges(),
        flops=total_flops(graph),
        params=graph.param_count,
        bytes=sum(graph.node(n)["bytes"] for n in graph.order),
        complex_ops=sum(1 for n in graph.order if graph.node(n)["complex"]),
        inputs=tuple((t.name, t.shape, t.dtype) for t in graph.inputs),
        outputs=graph.outputs,
        ops=ops_by_type(graph),
        mapping_counts=mapping_counts(graph),
    )
