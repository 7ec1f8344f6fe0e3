"""Plan: a partition of the OpGraph into groups (plus per-group layout and schedule slots).

A plan is plain data: the groups as tuples of OpGraph node ids, and the fingerprint of the
OpGraph it was made for, so that a plan is never applied to another model. `apply_plan` turns
it into a Relax module with exactly one PrimFunc per group; `compile_plan` builds that module.

How a plan is applied (TVM 0.27, checked on every zoo model)
------------------------------------------------------------
On the legalized module (`ago_search.graph.legalize`: every operator binding an `R.call_tir`),
each group becomes one private Relax function with attribute {"Primitive": True} whose body is
the group's bindings. Its parameters are the vars and constants the group reads, in order of
appearance, constants lifted to parameters "param_<k>" as TVM's FuseOps does; it returns the
members read outside the group (a tuple if several). The members in `main` are replaced by one
call of it (and a TupleGetItem per output, bound to the original output vars, so the rest of
`main` is left untouched). FuseTIR then turns each function into one PrimFunc named after the
group. For TVM's own grouping the PrimFuncs equal those of TVM's default pipeline (a singleton
lacks only the `op_pattern` attribute), so MetaSchedule records carry over.

*Every* group is wrapped, singletons included: FuseOps treats calls of Relax functions as
opaque and never touches Primitive functions, but it would fuse two neighbouring call_tirs
left in `main` (a singleton relu followed by a singleton add become one kernel), and the plan
would not be what runs. With every group wrapped, FuseOps finds nothing to do (the module after
it is structurally equal to the one before; `tests/test_plan.py` checks it) and runs only as a
safety net. The one exception is a node that is no `call_tir` (an operator without
legalization): it cannot be fused, so it must be a group of its own and stays in `main` as is.

Bindings that are not OpGraph nodes (TupleGetItem, Tuple, aliases) go with the group of the
bindings they read when that is one group, else they stay in `main`. The groups (and the
bindings left in `main`) are emitted in a topological order of the group graph, ties broken by
the first binding index, so the same plan gives the same module every time.

Function names: `ago_g<k>_<ops>`, k the group's rank by its first binding index, `<ops>` the
short op names of its members in binding order (cut to about 60 characters: `..._n<count>`).
BlockBuilder.add_func reuses a structurally equal function already in the module (identical
residual blocks lift their weights, so their functions *are* equal): each function is added
with a unique attribute that keeps it apart, removed again right after.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import networkx as nx
import tvm
from tvm import relax

from ago_search.errors import AgoSearchError
from ago_search.graph.opgraph import OpGraph

__all__ = [
    "PLAN_FORMAT",
    "PLAN_VERSION",
    "GroupPlan",
    "Plan",
    "PlanError",
    "TunedBuild",
    "apply_plan",
    "apply_schedules",
    "compile_plan",
    "compile_plan_tuned",
    "graph_fingerprint",
    "group_bindings",
    "group_function_names",
    "lowering_passes",
    "quotient_graph",
    "validate_plan",
]

logger = logging.getLogger(__name__)

PLAN_FORMAT = "ago-search-plan"
PLAN_VERSION = 1
GROUP_PREFIX = "ago_g"

_CALL_TIR_OPS = ("relax.call_tir", "relax.call_tir_inplace")
_MAX_NAME = 60
_KEEP_APART_ATTR = "ago_group"


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
    `apply_plan` do not depend on it.
    """

    model: str
    groups: tuple[GroupPlan, ...]
    func_name: str = "main"

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


def quotient_graph(graph: OpGraph, node_to_group: Mapping[str, Hashable]) -> nx.DiGraph:
    """The group graph: one node per group, an edge where a member of one feeds the other."""
    q = nx.DiGraph()
    q.add_nodes_from(set(node_to_group.values()))
    for u, v in graph.graph.edges:
        gu, gv = node_to_group[u], node_to_group[v]
        if gu != gv:
            q.add_edge(gu, gv)
    return q


def _non_convex_witness(graph: OpGraph, members: set[str]) -> tuple[str, str, str] | None:
    """(member, outside node, member) on a path that leaves the group and comes back, if any."""
    last = max(graph.node(n)["index"] for n in members)
    g = graph.graph
    for start in sorted(members, key=lambda n: graph.node(n)["index"]):
        for out in g.successors(start):
            if out in members or graph.node(out)["index"] > last:
                continue
            # bindings are in topological order: a path back into the group stays below `last`
            seen = {out}
            stack = [out]
            while stack:
                x = stack.pop()
                for y in g.successors(x):
                    if y in members:
                        return start, out, y
                    if y not in seen and graph.node(y)["index"] < last:
                        seen.add(y)
                        stack.append(y)
    return None


def validate_plan(graph: OpGraph, plan: Plan) -> None:
    """Raise PlanError unless `plan` is a legal partition of `graph`.

    Legal: made for this graph (fingerprint), every node in exactly one group, no empty group,
    every group convex, the group graph acyclic, and a node that is no call_tir alone.
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
        witness = _non_convex_witness(graph, set(group.nodes))
        if witness is not None:
            a, x, b = witness
            raise PlanError(
                f"group {gi} is not convex: the path {a} -> {x} -> ... -> {b} leaves it through "
                f"{x!r} (group {seen[x]}) and comes back; add {x!r} to the group or split it"
            )
    q = quotient_graph(graph, seen)
    try:
        cycle = nx.find_cycle(q)
    except nx.NetworkXNoCycle:
        return
    groups = " -> ".join(str(u) for u, _ in cycle) + f" -> {cycle[0][0]}"
    raise PlanError(f"the groups form a cycle ({groups}): no order can run them")


# ---------------------------------------------------------------------------------------------
# naming


def _short_op(op: str) -> str:
    name = op.rsplit(".", 1)[-1]
    return re.sub(r"[^0-9A-Za-z_]", "_", name) or "op"


def _group_name(graph: OpGraph, rank: int, nodes: Sequence[str]) -> str:
    ops = [_short_op(str(graph.node(n)["op"])) for n in nodes]
    head = f"{GROUP_PREFIX}{rank}"
    name = "_".join([head, *ops])
    if len(name) <= _MAX_NAME:
        return name
    kept = [head]
    for op in ops:
        if len("_".join([*kept, op])) > _MAX_NAME - 6:
            break
        kept.append(op)
    return "_".join(kept) + f"_n{len(ops)}"


def _ranked_groups(graph: OpGraph, plan: Plan) -> list[tuple[int, tuple[str, ...]]]:
    """(position in plan.groups, nodes in binding order), ranked by first binding index."""

    def index(node: str) -> int:
        return int(graph.node(node)["index"])

    ranked = [(gi, tuple(sorted(g.nodes, key=index))) for gi, g in enumerate(plan.groups)]
    ranked.sort(key=lambda item: index(item[1][0]))
    return ranked


def group_function_names(graph: OpGraph, plan: Plan) -> tuple[str, ...]:
    """The name `apply_plan` gives each group's function (and so its PrimFunc), by position in
    `plan.groups`."""
    names = [""] * len(plan.groups)
    for rank, (gi, nodes) in enumerate(_ranked_groups(graph, plan)):
        names[gi] = _group_name(graph, rank, nodes)
    return tuple(names)


# ---------------------------------------------------------------------------------------------
# applying a plan


def _is_call_tir(expr: Any) -> bool:
    return (
        isinstance(expr, relax.Call)
        and isinstance(expr.op, tvm.ir.Op)
        and expr.op.name in _CALL_TIR_OPS
    )


def _substitute(expr: Any, varmap: Mapping[Any, Any], constmap: Sequence[tuple[Any, Any]]) -> Any:
    """`expr` with vars and constants replaced (leaf expressions, calls, tuples, tuple items)."""
    if isinstance(expr, relax.Var):
        return varmap.get(expr, expr)
    if isinstance(expr, tvm.ir.Constant):
        for const, param in constmap:
            if const.same_as(expr):
                return param
        return expr
    if isinstance(expr, relax.Tuple):
        return relax.Tuple([_substitute(f, varmap, constmap) for f in expr.fields])
    if isinstance(expr, relax.TupleGetItem):
        return relax.TupleGetItem(_substitute(expr.tuple_value, varmap, constmap), expr.index)
    if isinstance(expr, relax.Call):
        args = [_substitute(a, varmap, constmap) for a in expr.args]
        return relax.Call(expr.op, args, expr.attrs, expr.ty_args)
    return expr


def _free_inputs(expr: Any, defined: set[Any], out: list[Any]) -> None:
    """Vars not in `defined` and constants read by `expr`, in order of appearance, each once
    (the parameter order TVM's FuseOps gives a fused function)."""
    if isinstance(expr, relax.Var | tvm.ir.Constant):
        if (isinstance(expr, tvm.ir.Constant) or expr not in defined) and not any(
            expr.same_as(x) for x in out
        ):
            out.append(expr)
    elif isinstance(expr, relax.Tuple):
        for f in expr.fields:
            _free_inputs(f, defined, out)
    elif isinstance(expr, relax.TupleGetItem):
        _free_inputs(expr.tuple_value, defined, out)
    elif isinstance(expr, relax.Call):
        for a in expr.args:
            _free_inputs(a, defined, out)


@dataclass
class _Unit:
    """What `main` runs in one step: a group (one call) or a binding left as it is."""

    key: tuple[str, int]  # ("g", group position) or ("b", binding index)
    block: int
    bindings: list[tuple[int, Any]] = field(default_factory=list)  # (binding index, binding)

    @property
    def first(self) -> int:
        return self.bindings[0][0]


def _collect_units(
    func: relax.Function, graph: OpGraph, plan: Plan
) -> tuple[dict[tuple[str, int], _Unit], dict[Any, tuple[str, int]]]:
    """Every binding of `func` in a unit; var -> unit that defines it."""
    node_by_index = {int(graph.node(n)["index"]): n for n in graph.order}
    group_of = plan.assignment()
    units: dict[tuple[str, int], _Unit] = {}
    var_unit: dict[Any, tuple[str, int]] = {}
    index = 0
    for bi, block in enumerate(func.body.blocks):
        for b in block.bindings:
            node = node_by_index.get(index)
            if node is not None:
                if not isinstance(b, relax.VarBinding) or b.var.name != graph.node(node)["var"]:
                    raise PlanError(
                        f"binding {index} of the module is not node {node!r} of the graph: the "
                        "graph was built from another module; build it from this one"
                    )
                key: tuple[str, int] = ("g", group_of[node])
            else:
                deps = {var_unit[v] for v in relax.analysis.free_vars(b.value) if v in var_unit}
                key = ("b", index)
                if len(deps) == 1:
                    (only,) = deps
                    if only[0] == "g" and units[only].block == bi:
                        key = only
            unit = units.get(key)
            if unit is None:
                unit = units[key] = _Unit(key=key, block=bi)
            elif unit.block != bi:
                raise PlanError(
                    f"group {key[1]} spans two binding blocks of {graph.func_name}; a group "
                    "must lie within one dataflow block"
                )
            unit.bindings.append((index, b))
            var_unit[b.var] = key
            index += 1
    missing = [n for i, n in node_by_index.items() if i >= index]
    if missing:
        raise PlanError(
            f"the module has {index} bindings, the graph names binding {len(missing)} more; "
            "build the graph from this module"
        )
    return units, var_unit


def _unit_order(
    units: Mapping[tuple[str, int], _Unit], var_unit: Mapping[Any, tuple[str, int]], block: int
) -> list[_Unit]:
    """Units of one block in a topological order, ties broken by first binding index."""
    dag = nx.DiGraph()
    mine = [u for u in units.values() if u.block == block]
    dag.add_nodes_from(u.key for u in mine)
    for u in mine:
        for _, b in u.bindings:
            for v in relax.analysis.free_vars(b.value):
                src = var_unit.get(v)
                if src is not None and src != u.key and units[src].block == block:
                    dag.add_edge(src, u.key)
    first = {u.key: u.first for u in mine}
    try:
        order = list(nx.lexicographical_topological_sort(dag, key=lambda k: first[k]))
    except nx.NetworkXUnfeasible as err:
        cycle = nx.find_cycle(dag)
        raise PlanError(
            "the groups and the bindings left between them form a cycle "
            f"({' -> '.join(str(a) for a, _ in cycle)}); a tuple or alias binding reads two "
            "groups and feeds one of them: merge those groups"
        ) from err
    return [units[k] for k in order]


def _outputs(unit: _Unit, used_outside: set[Any], dataflow: bool) -> list[Any]:
    """Members read outside the group; in a dataflow block also the block's outputs."""
    outs = [
        b.var
        for _, b in unit.bindings
        if b.var in used_outside or (dataflow and not isinstance(b.var, relax.DataflowVar))
    ]
    # a group nothing reads (dead code) still returns its last value, for a valid function
    return outs or [unit.bindings[-1][1].var]


def _group_function(unit: _Unit, outputs: Sequence[Any]) -> tuple[relax.Function, list[Any]]:
    """The Primitive function of a group, and the arguments to call it with."""
    inputs: list[Any] = []
    defined: set[Any] = set()
    for _, b in unit.bindings:
        _free_inputs(b.value, defined, inputs)
        defined.add(b.var)
    varmap: dict[Any, Any] = {}
    constmap: list[tuple[Any, Any]] = []
    params = []
    for x in inputs:
        if isinstance(x, tvm.ir.Constant):
            param = relax.Var(f"param_{len(constmap)}", x.ty)
            constmap.append((x, param))
        else:
            param = varmap[x] = relax.Var(x.name, x.ty)
        params.append(param)
    out_set = set(outputs)
    inner = []
    for _, b in unit.bindings:
        make = relax.Var if b.var in out_set else relax.DataflowVar
        new_var = make(b.var.name, b.var.ty)
        inner.append(relax.VarBinding(new_var, _substitute(b.value, varmap, constmap)))
        varmap[b.var] = new_var
    if len(outputs) == 1:
        ret: Any = varmap[outputs[0]]
        ret_ty = outputs[0].ty
    else:
        ret = relax.Tuple([varmap[o] for o in outputs])
        ret_ty = relax.TupleType([o.ty for o in outputs])
    body = relax.SeqExpr([relax.DataflowBlock(inner)], ret)
    func = relax.Function(params, body, ret_ty, True)
    func = func.with_attr("Primitive", True)
    return func, inputs


def apply_plan(
    legalized_mod: tvm.IRModule,
    graph: OpGraph,
    plan: Plan,
    target: tvm.target.Target | None = None,
) -> tvm.IRModule:
    """The legalized module with one PrimFunc per group (FuseOps + FuseTIR done).

    `legalized_mod` is `legalize(mod, target)` and `graph` its OpGraph (`build_opgraph(mod,
    legalized=legalized_mod)`). Layouts are not applied yet (a group with a layout raises);
    schedules are applied after this, by the tuning layer.
    """
    validate_plan(graph, plan)
    for gi, group in enumerate(plan.groups):
        if group.layout is not None:
            raise PlanError(
                f"group {gi} asks for layout {group.layout!r}, and this version applies no "
                "layouts; drop the layouts from the plan"
            )
    grouped = _group_bindings(legalized_mod, graph, plan)
    passes = tvm.transform.Sequential(
        [relax.transform.FuseOps(), relax.transform.FuseTIR()], name="ago_fuse"
    )
    if target is None:
        return passes(grouped)
    with target:
        return passes(grouped)


def group_bindings(legalized_mod: tvm.IRModule, graph: OpGraph, plan: Plan) -> tvm.IRModule:
    """Step one of `apply_plan`: each group a Primitive Relax function, before FuseOps/FuseTIR."""
    validate_plan(graph, plan)
    return _group_bindings(legalized_mod, graph, plan)


def _group_bindings(legalized_mod: tvm.IRModule, graph: OpGraph, plan: Plan) -> tvm.IRModule:
    func: relax.Function = legalized_mod[plan.func_name]
    units, var_unit = _collect_units(func, graph, plan)
    names = group_function_names(graph, plan)

    # vars read by another unit, or by the function's result
    used_outside: set[Any] = set(relax.analysis.free_vars(func.body.body))
    for unit in units.values():
        for _, b in unit.bindings:
            for v in relax.analysis.free_vars(b.value):
                if var_unit.get(v, unit.key) != unit.key:
                    used_outside.add(v)

    builder = relax.BlockBuilder(legalized_mod)
    blocks = []
    for bi, block in enumerate(func.body.blocks):
        dataflow = isinstance(block, relax.DataflowBlock)
        bindings = []
        for unit in _unit_order(units, var_unit, bi):
            gi = unit.key[1]
            if unit.key[0] == "b" or not _is_groupable(unit):
                bindings.extend(b for _, b in unit.bindings)
                continue
            outputs = _outputs(unit, used_outside, dataflow)
            group_func, args = _group_function(unit, outputs)
            name = names[gi]
            # the attribute keeps add_func from reusing an equal function of another group
            gvar = builder.add_func(group_func.with_attr(_KEEP_APART_ATTR, name), name)
            if gvar.name_hint != name:  # names are how groups, PrimFuncs and tasks meet
                raise RuntimeError(f"the module already has a function named {name}")
            builder.update_func(gvar, group_func)
            call = relax.Call(gvar, args)
            if len(outputs) == 1:
                bindings.append(relax.VarBinding(outputs[0], call))
                continue
            make = relax.DataflowVar if dataflow else relax.Var
            tuple_var = make(f"{name}_out", relax.TupleType([o.ty for o in outputs]))
            bindings.append(relax.VarBinding(tuple_var, call))
            bindings.extend(
                relax.VarBinding(o, relax.TupleGetItem(tuple_var, k)) for k, o in enumerate(outputs)
            )
        blocks.append(relax.DataflowBlock(bindings) if dataflow else relax.BindingBlock(bindings))
    body = relax.SeqExpr(blocks, func.body.body)
    new_main = relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs)
    builder.update_func(legalized_mod.get_global_var(plan.func_name), new_main)
    return relax.transform.Normalize()(builder.get())


def _is_groupable(unit: _Unit) -> bool:
    """A group that is one binding which is no call_tir stays in main as it is."""
    return any(_is_call_tir(b.value) for _, b in unit.bindings)


# ---------------------------------------------------------------------------------------------
# compiling


def lowering_passes(target: tvm.target.Target) -> list[tvm.transform.Pass]:
    """What TVM's default CPU pipeline runs after FuseTIR: its dataflow lowering and
    finalisation passes (`relax/backend/cpu_generic/pipeline.py`), taken from TVM itself."""
    from tvm.relax.backend.cpu_generic import pipeline

    return pipeline.dataflow_lower_passes(target) + pipeline.finalize_passes(target)


def _lower(target: tvm.target.Target) -> tvm.transform.Pass:
    @tvm.transform.module_pass(opt_level=0, name="ago_lower")
    def lower(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        with target:
            return tvm.transform.Sequential(lowering_passes(target))(mod)

    return lower


def compile_plan(
    legalized_mod: tvm.IRModule,
    graph: OpGraph,
    plan: Plan,
    target: tvm.target.Target,
    database: Any | None = None,
) -> relax.VMExecutable:
    """Build the model as the plan groups it: apply_plan, then TVM's default lowering.

    Without `database` the kernels are untuned; with one (a MetaSchedule `Database`, e.g.
    `TuningDatabase.metaschedule(device_key)`) each group's best record is applied first
    (`compile_plan_tuned`, which also says which kernels got one).
    """
    if database is not None:
        return compile_plan_tuned(legalized_mod, graph, plan, target, database).executable
    if any(g.schedule is not None for g in plan.groups):
        logger.warning("compile_plan builds untuned kernels; the plan's schedules are ignored")
    fused = apply_plan(legalized_mod, graph, plan, target)
    return tvm.compile(fused, target, relax_pipeline=_lower(target))


_SCHEDULED_ATTR = "tirx.is_scheduled"  # what MetaScheduleApplyDatabase marks its PrimFuncs with


@dataclass(frozen=True)
class TunedBuild:
    """A compiled plan with tuning records applied, and which kernels got one.

    scheduled: PrimFuncs a record was applied to; untuned: those compiled without one.
    """

    executable: relax.VMExecutable
    scheduled: tuple[str, ...]
    untuned: tuple[str, ...]

    @property
    def kernels(self) -> int:
        return len(self.scheduled) + len(self.untuned)


def apply_schedules(
    fused_mod: tvm.IRModule, target: tvm.target.Target, database: Any
) -> tuple[tvm.IRModule, tuple[str, ...], tuple[str, ...]]:
    """The fused module (after FuseTIR) with the database's best record of each PrimFunc
    applied (`MetaScheduleApplyDatabase` under `with target, database`), and the names of
    the PrimFuncs that got one and of those that did not.

    `database` is a MetaSchedule `Database`; ours (`TuningDatabase.metaschedule`) serves
    only records with status ok, so failures and wrong results are never applied.
    """
    with target, database:
        scheduled_mod = relax.transform.MetaScheduleApplyDatabase()(fused_mod)
    scheduled, untuned = [], []
    for gv, func in scheduled_mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc):
            continue
        has_record = func.attrs is not None and bool(func.attrs.get(_SCHEDULED_ATTR, False))
        (scheduled if has_record else untuned).append(gv.name_hint)
    return scheduled_mod, tuple(sorted(scheduled)), tuple(sorted(untuned))


def compile_plan_tuned(
    legalized_mod: tvm.IRModule,
    graph: OpGraph,
    plan: Plan,
    target: tvm.target.Target,
    database: Any,
) -> TunedBuild:
    """apply_plan, the database's schedules (`apply_schedules`), then TVM's lowering.

    Check `TunedBuild.untuned`: a kernel without a record is built untuned (TVM_NOTES.md:
    records silently not found are the usual way a tuned build comes out slow).
    """
    fused = apply_plan(legalized_mod, graph, plan, target)
    scheduled_mod, scheduled, untuned = apply_schedules(fused, target, database)
    if untuned:
        count = len(scheduled) + len(untuned)
        logger.info("%d of %d kernels have no tuning record", len(untuned), count)
    executable = tvm.compile(scheduled_mod, target, relax_pipeline=_lower(target))
    return TunedBuild(executable, scheduled, untuned)
