"""apply_plan: a plan as IR, one Primitive function per group (one PrimFunc after FuseTIR).

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

`ago_search.build.compile_plan` lowers and compiles the module `apply_plan` gives.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import tvm
from tvm import relax

from ago_search.graph.opgraph import OpGraph
from ago_search.plan.plan import Plan, PlanError, validate_plan

GROUP_PREFIX = "ago_g"

_CALL_TIR_OPS = ("relax.call_tir", "relax.call_tir_inplace")
_MAX_NAME = 60
_KEEP_APART_ATTR = "ago_group"


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
# groups on their own


def fuse_groups(
    legalized_mod: tvm.IRModule,
    graph: OpGraph,
    groups: Sequence[Sequence[str]],
    target: tvm.target.Target | None = None,
) -> tuple[tvm.IRModule, tuple[str | None, ...]]:
    """Each node set of `groups` as the PrimFunc `apply_plan` makes of it in any plan that has
    it, all in one small module; and the PrimFuncs' names (None for a group that stays no
    kernel: one binding that is no call_tir).

    The search scores many plans that differ in a group or two: it fuses just the new groups
    (in milliseconds) instead of the whole model for every plan. The groups may overlap (each is
    its own function of a stand-in `main`); each must be convex and lie within one dataflow
    block. A group's function is made by `apply_plan`'s own code (the bindings that go with it,
    its inputs, its outputs: the members read outside it), so its PrimFunc, and the task
    `extract_tasks` keys on it, is the one the full plan gives.
    """
    func: relax.Function = legalized_mod[graph.func_name]
    builder = relax.BlockBuilder(legalized_mod)
    params: list[Any] = []
    param_of: dict[Any, Any] = {}
    bindings: list[Any] = []
    results: list[Any] = []
    names: list[str | None] = []
    for i, nodes in enumerate(groups):
        unit, used_outside, dataflow = _lone_unit(func, graph, nodes)
        if not _is_groupable(unit):
            names.append(None)
            continue
        outputs = _outputs(unit, used_outside, dataflow)
        group_func, args = _group_function(unit, outputs)
        ordered = sorted(nodes, key=lambda n: int(graph.node(n)["index"]))
        name = "ago_q" + _group_name(graph, i, ordered)[len(GROUP_PREFIX) :]
        gvar = builder.add_func(group_func.with_attr(_KEEP_APART_ATTR, name), name)
        builder.update_func(gvar, group_func)
        call_args = []
        for arg in args:
            if isinstance(arg, relax.Var):
                if arg not in param_of:
                    param_of[arg] = relax.Var(arg.name, arg.ty)
                    params.append(param_of[arg])
                call_args.append(param_of[arg])
            else:
                call_args.append(arg)
        out = relax.Var(f"{name}_out", group_func.ret_ty)
        bindings.append(relax.VarBinding(out, relax.Call(gvar, call_args)))
        results.append(out)
        names.append(name)
    body = relax.SeqExpr([relax.BindingBlock(bindings)], relax.Tuple(results))
    ret_ty = relax.TupleType([r.ty for r in results])
    stand_in = relax.Function(params, body, ret_ty, True, func.attrs)
    builder.update_func(legalized_mod.get_global_var(graph.func_name), stand_in)
    passes = tvm.transform.Sequential(
        [
            relax.transform.Normalize(),
            relax.transform.FuseTIR(),
            relax.transform.DeadCodeElimination([graph.func_name]),
        ],
        name="ago_fuse_groups",
    )
    if target is None:
        return passes(builder.get()), tuple(names)
    with target:
        return passes(builder.get()), tuple(names)


def _lone_unit(
    func: relax.Function, graph: OpGraph, nodes: Sequence[str]
) -> tuple[_Unit, set[Any], bool]:
    """The unit `apply_plan` makes of `nodes` (with the bindings that go with them), the vars
    of it read outside it, and whether it lies in a dataflow block."""
    members = set(nodes)
    if not members:
        raise PlanError("an empty group has no kernel")
    rest = [[n] for n in graph.order if n not in members]
    plan = Plan.from_groups(graph, [sorted(members), *rest])
    first = min(members, key=lambda n: int(graph.node(n)["index"]))
    position = next(gi for gi, g in enumerate(plan.groups) if g.nodes[0] == first)
    units, var_unit = _collect_units(func, graph, plan)
    unit = units[("g", position)]
    mine = {b.var for _, b in unit.bindings}
    used_outside = {v for v in relax.analysis.free_vars(func.body.body) if v in mine}
    for other in units.values():
        if other.key == unit.key:
            continue
        for _, b in other.bindings:
            used_outside.update(v for v in relax.analysis.free_vars(b.value) if v in mine)
    return unit, used_outside, isinstance(func.body.blocks[unit.block], relax.DataflowBlock)
