"""Plan: a partition of the OpGraph into groups (plus per-group layout and schedule slots).

A plan is plain data: the groups as tuples of OpGraph node ids, and the fingerprint of the
OpGraph it was made for, so that a plan is never applied to another model. JSON round-trips and
`plan_hash` make it replayable; `validate_plan` says whether it is a legal partition of a graph.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ago_search.errors import AgoSearchError
from ago_search.graph.opgraph import OpGraph
from ago_search.layout import LayoutError, parse_layout
from ago_search.partition.quotient import convexity_witness, quotient_cycle

PLAN_FORMAT = "ago-search-plan"
PLAN_VERSION = 1


class PlanError(AgoSearchError, ValueError):
    """A plan that cannot be applied: it does not cover the graph, or a group is illegal."""


# ---------------------------------------------------------------------------------------------
# data


@dataclass(frozen=True)
class GroupPlan:
    """One group: its OpGraph nodes (in binding order) and its layout and schedule slots.

    `layout` names the group's tensor layout and `schedule` references a tuning record; both are
    None (default layout, untuned kernel) until the layout and tuning layers fill them.
    """

    nodes: tuple[str, ...]
    layout: str | None = None
    schedule: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"nodes": list(self.nodes), "layout": self.layout, "schedule": self.schedule}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> GroupPlan:
        return GroupPlan(
            nodes=tuple(str(n) for n in data["nodes"]),
            layout=data.get("layout"),
            schedule=data.get("schedule"),
        )


@dataclass(frozen=True)
class Plan:
    """A partition of one model's OpGraph, with a layout and schedule slot per group.

    `model` is `graph_fingerprint(graph)` of the OpGraph the plan was made for; `apply_plan`
    refuses a graph with another fingerprint. Group order carries no meaning: `plan_hash` and
    `apply_plan` do not depend on it. `winograd`: the Winograd tile the model's 3x3 convs were
    legalized with (`ago_search.graph.winograd`; None: direct convs), so that a plan.json is
    applied to the model it was made for (its fingerprint already tells them apart).
    """

    model: str
    groups: tuple[GroupPlan, ...]
    func_name: str = "main"
    winograd: int | None = None

    # -- constructors --------------------------------------------------------------------------

    @staticmethod
    def from_assignment(graph: OpGraph, node_to_group: Mapping[str, Hashable]) -> Plan:
        """The plan of a node -> group map (any hashable group ids); groups in binding order.

        Nodes missing from the map are not added: `validate_plan` reports them.
        """
        members: dict[Hashable, list[str]] = {}
        for node, group in node_to_group.items():
            members.setdefault(group, []).append(node)
        return Plan.from_groups(graph, members.values())

    @staticmethod
    def from_groups(graph: OpGraph, groups: Iterable[Iterable[str]]) -> Plan:
        """The plan of groups given as node lists; nodes and groups are put in binding order."""

        def index(node: str) -> int:
            return int(graph.node(node)["index"]) if node in graph.graph else 1 << 62

        ordered = [tuple(sorted(g, key=lambda n: (index(n), n))) for g in groups]
        ordered = [g for g in ordered if g]
        ordered.sort(key=lambda g: (index(g[0]), g[0]))
        return Plan(
            model=graph_fingerprint(graph),
            groups=tuple(GroupPlan(nodes=g) for g in ordered),
            func_name=graph.func_name,
        )

    # -- views ---------------------------------------------------------------------------------

    def assignment(self) -> dict[str, int]:
        """node -> position of its group in `groups` (a node listed twice keeps the last)."""
        return {n: gi for gi, g in enumerate(self.groups) for n in g.nodes}

    def with_groups(self, groups: Sequence[GroupPlan]) -> Plan:
        return replace(self, groups=tuple(groups))

    # -- serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "model": self.model,
            "func_name": self.func_name,
            "groups": [g.to_dict() for g in self.groups],
            **({"winograd": self.winograd} if self.winograd else {}),
        }

    @staticmethod
    def from_dict(data: Mapping[str, Any], source: str = "plan") -> Plan:
        if not isinstance(data, Mapping) or data.get("format") != PLAN_FORMAT:
            found = data.get("format") if isinstance(data, Mapping) else type(data).__name__
            raise PlanError(
                f"{source} is not an ago-search plan (format {found!r}, expected "
                f"{PLAN_FORMAT!r}); give a plan.json written by ago-search"
            )
        if data.get("version") != PLAN_VERSION:
            raise PlanError(
                f"{source} has plan format version {data.get('version')}, this ago-search reads "
                f"version {PLAN_VERSION}; re-create the plan with this version"
            )
        try:
            return Plan(
                model=str(data["model"]),
                groups=tuple(GroupPlan.from_dict(g) for g in data["groups"]),
                func_name=str(data.get("func_name", "main")),
                winograd=int(data["winograd"]) if data.get("winograd") else None,
            )
        except (KeyError, TypeError) as err:
            raise PlanError(f"{source} is damaged ({err!r}); re-create the plan") from err

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True)

    @staticmethod
    def from_json(text: str, source: str = "plan") -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise PlanError(f"{source} is not valid JSON ({err}); re-create the plan") from err
        return Plan.from_dict(data, source)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n")
        return path

    @staticmethod
    def load(path: str | Path) -> Plan:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise PlanError(f"cannot read plan file {path}: {err}") from err
        return Plan.from_json(text, source=f"plan file {path}")

    def plan_hash(self) -> str:
        """sha256 of the canonical JSON: independent of group order and numbering, and of node
        order inside a group."""
        groups = sorted((sorted(g.nodes), g.layout or "", g.schedule or "") for g in self.groups)
        canonical = {
            "format": PLAN_FORMAT,
            "version": PLAN_VERSION,
            "model": self.model,
            "func_name": self.func_name,
            "groups": groups,
        }
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


def graph_fingerprint(graph: OpGraph) -> str:
    """sha256 of what a plan relies on: node ids, ops, binding indices, shapes and edges.

    Weights do not count: a plan fits any model of the same structure.
    """
    nodes = [
        [
            n,
            str(a["op"]),
            int(a["index"]),
            str(a["var"]),
            [str(i) for i in a["inputs"]],
            [list(s) for s in a["in_shapes"]],
            [list(s) for s in a["out_shapes"]],
            str(a["dtype"]),
        ]
        for n in graph.order
        for a in [graph.node(n)]
    ]
    data = {
        "func_name": graph.func_name,
        "inputs": [[t.name, list(t.shape), t.dtype] for t in graph.inputs],
        "outputs": list(graph.outputs),
        "nodes": nodes,
    }
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# validation


def validate_plan(graph: OpGraph, plan: Plan) -> None:
    """Raise PlanError unless `plan` is a legal partition of `graph`.

    Legal: made for this graph (fingerprint), every node in exactly one group, no empty group,
    every group convex, the group graph acyclic, and a node that is no call_tir alone. The
    convexity and cycle checks are those of `ago_search.partition` (`convexity_witness`,
    `quotient_cycle`), which every Partition move obeys too.
    """
    fingerprint = graph_fingerprint(graph)
    if plan.model != fingerprint:
        raise PlanError(
            f"the plan was made for another model (fingerprint {plan.model[:12]}..., this "
            f"model's graph has {fingerprint[:12]}...); make the plan from this model's graph"
        )
    if plan.func_name != graph.func_name:
        raise PlanError(
            f"the plan is for function {plan.func_name!r}, the graph is of {graph.func_name!r}"
        )
    seen: dict[str, int] = {}
    for gi, group in enumerate(plan.groups):
        if not group.nodes:
            raise PlanError(f"group {gi} of the plan is empty")
        for n in group.nodes:
            if n not in graph.graph:
                raise PlanError(f"group {gi} names node {n!r}, which the graph does not have")
            if n in seen:
                where = "twice in group" if seen[n] == gi else f"in groups {seen[n]} and"
                raise PlanError(f"node {n!r} is {where} {gi}; every node belongs to one group")
            seen[n] = gi
    for gi, group in enumerate(plan.groups):
        try:
            parse_layout(group.layout)
        except LayoutError as err:
            raise PlanError(f"group {gi}: {err}") from err
    missing = [n for n in graph.order if n not in seen]
    if missing:
        shown = ", ".join(missing[:8]) + (", ..." if len(missing) > 8 else "")
        raise PlanError(f"{len(missing)} nodes are in no group of the plan: {shown}")
    for gi, group in enumerate(plan.groups):
        if len(group.nodes) > 1:
            lone = [n for n in group.nodes if graph.node(n)["primfunc"] is None]
            if lone:
                raise PlanError(
                    f"group {gi} holds node {lone[0]!r} ({graph.node(lone[0])['op']}), which "
                    "is no call_tir and cannot be fused: it must be a group of its own"
                )
        witness = convexity_witness(graph, group.nodes)
        if witness is not None:
            a, x, b = witness
            raise PlanError(
                f"group {gi} is not convex: the path {a} -> {x} -> ... -> {b} leaves it through "
                f"{x!r} (group {seen[x]}) and comes back; add {x!r} to the group or split it"
            )
    cycle = quotient_cycle(graph, seen)
    if cycle is not None:
        groups = " -> ".join(str(g) for g in [*cycle, cycle[0]])
        raise PlanError(f"the groups form a cycle ({groups}): no order can run them")
