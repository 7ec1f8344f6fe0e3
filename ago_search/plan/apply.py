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
group. For TVM's own grouping the PrimFuncs equal those of TVM's tuning pipeline with weights
prepacked (`static_shape_tuning_pipeline(cpu_weight_prepack=True)`: a singleton lacks only the
`op_pattern` attribute, a kernel without weights an empty `layout_free_buffers`), so
MetaSchedule records carry over. Weights are layout-free (`mark_prepacked`): each schedule
picks their layout, packed at compile time.

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
import numpy as np
import tvm
from tvm import relax

from ago_search.graph.opgraph import OpGraph
from ago_search.layout import (
    ACT,
    WEIGHT,
    Layout,
    LayoutError,
    parse_layout,
    stored_shape,
    to_stored,
    touches_activation,
    transform_primfunc,
)
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


@dataclass
class _GroupLayout:
    """A group's layout as `_group_function` applies it: the tensors stored in it and their
    role (`_tensor_roles`), and the PrimFuncs made for it (shared by the groups of a module)."""

    layout: Layout
    roles: list[tuple[Any, str]]
    add_primfunc: Any  # (PrimFunc, name hint) -> GlobalVar
    module: tvm.IRModule
    made: dict[tuple[str, str, tuple[str | None, ...]], Any]

    def role(self, expr: Any) -> str | None:
        return next((r for x, r in self.roles if x.same_as(expr)), None)

    def stored_ty(self, expr: Any, role: str | None = None) -> Any:
        role = role or self.role(expr)
        if role is None:
            return expr.ty
        shape = [int(d) for d in expr.ty.shape]
        return relax.TensorType(stored_shape(self.layout, role, shape), expr.ty.dtype)


_CONV_OP = "relax.nn.conv2d"


def _nchw_conv(info: Mapping[str, Any]) -> bool:
    """Whether an OpGraph node is a conv of NCHW data and OIHW weights (its weight, argument
    1, is stored as a weight in a layout; a conv in other layouts is left as it is)."""
    attrs = info.get("attrs") or {}
    return (
        info.get("op") == _CONV_OP
        and attrs.get("data_layout", "NCHW") == "NCHW"
        and attrs.get("kernel_layout", "OIHW") == "OIHW"
        and (attrs.get("out_layout") or "NCHW") == "NCHW"
    )


def _shape_of(expr: Any) -> list[int] | None:
    ty = getattr(expr, "ty", None)
    if not isinstance(ty, relax.TensorType) or ty.shape is None:
        return None
    try:
        return [int(d) for d in ty.shape]
    except (TypeError, ValueError):  # a symbolic dim
        return None


def _tensor_roles(unit: _Unit, graph: OpGraph, layout: Layout) -> list[tuple[Any, str]]:
    """The tensors of a group stored in `layout`: the rank-4 activations of its nodes that
    meet an image (`touches_activation`; whose channels fit the layout) and the weights of its
    NCHW/OIHW convs, as (var or constant, role).

    A tensor a binding reads that is no plain `call_tir` (a tuple item, an alias, a call with
    symbolic shape arguments), or a tuple a call returns, stays as it is, and so does a tensor
    that would have two roles."""
    node_by_index = {int(graph.node(n)["index"]): n for n in graph.order}
    wanted: list[tuple[Any, str]] = []
    kept: list[Any] = []

    def want(expr: Any, role: str) -> None:
        shape = _shape_of(expr)
        fits = layout.act_applies if role == ACT else layout.weight_applies
        if shape is None or not fits(shape):
            return
        have = next((r for x, r in wanted if x.same_as(expr)), None)
        if have is None:
            wanted.append((expr, role))
        elif have != role:
            kept.append(expr)

    for index, b in unit.bindings:
        value = b.value
        plain = (
            _is_call_tir(value)
            and len(value.args) == 2
            and isinstance(value.args[1], relax.Tuple)
            and isinstance(b.var.ty, relax.TensorType)
        )
        node = node_by_index.get(index)
        if not plain or (node is not None and not touches_activation(graph, node)):
            # (a node that meets no image keeps its rank-4 tensors as they are: attention's
            # (batch, heads, tokens, features); `plan_borders` reads them as NCHW too)
            kept.extend(relax.analysis.free_vars(value))
            kept.append(b.var)
            continue
        conv = node is not None and _nchw_conv(graph.node(node))
        for k, arg in enumerate(value.args[1].fields):
            if conv and k == 1:
                # a constant weight is transformed once, in numpy; one computed at run time
                # (rare) stays as it is rather than cost a transform every call
                if isinstance(arg, tvm.ir.Constant):
                    want(arg, WEIGHT)
                else:
                    kept.append(arg)
            else:
                want(arg, ACT)
        want(b.var, ACT)
    return [(x, r) for x, r in wanted if not any(x.same_as(y) for y in kept)]


def _group_function(
    unit: _Unit, outputs: Sequence[Any], laid: _GroupLayout | None = None
) -> tuple[relax.Function, list[Any]]:
    """The Primitive function of a group, and the arguments to call it with.

    With `laid`, the tensors it names are stored in its layout: the function's parameters and
    results of those tensors have their stored shapes (the caller transforms what it passes),
    and each call_tir inside calls its PrimFunc made for the layout (`transform_primfunc`)."""
    inputs: list[Any] = []
    defined: set[Any] = set()
    for _, b in unit.bindings:
        _free_inputs(b.value, defined, inputs)
        defined.add(b.var)
    varmap: dict[Any, Any] = {}
    constmap: list[tuple[Any, Any]] = []
    params = []
    for x in inputs:
        ty = laid.stored_ty(x) if laid is not None else x.ty
        if isinstance(x, tvm.ir.Constant):
            param = relax.Var(f"param_{len(constmap)}", ty)
            constmap.append((x, param))
        else:
            param = varmap[x] = relax.Var(x.name, ty)
        params.append(param)
    out_set = set(outputs)
    inner = []
    for _, b in unit.bindings:
        make = relax.Var if b.var in out_set else relax.DataflowVar
        value = _substitute(b.value, varmap, constmap)
        var_ty = b.var.ty
        if laid is not None and _is_call_tir(b.value) and len(b.value.args) == 2:
            value, var_ty = _laid_call(b, value, laid)
        new_var = make(b.var.name, var_ty)
        inner.append(relax.VarBinding(new_var, value))
        varmap[b.var] = new_var
    if len(outputs) == 1:
        ret: Any = varmap[outputs[0]]
        ret_ty = varmap[outputs[0]].ty
    else:
        ret = relax.Tuple([varmap[o] for o in outputs])
        ret_ty = relax.TupleType([varmap[o].ty for o in outputs])
    body = relax.SeqExpr([relax.DataflowBlock(inner)], ret)
    func = relax.Function(params, body, ret_ty, True)
    func = func.with_attr("Primitive", True)
    return func, inputs


def _laid_call(b: Any, value: relax.Call, laid: _GroupLayout) -> tuple[relax.Call, Any]:
    """A call_tir binding of a group (`value`: its call with the group's parameters) calling
    the PrimFunc made for the group's layout, and the type of its result."""
    old_args = list(b.value.args[1].fields)
    roles = tuple([laid.role(a) for a in old_args] + [laid.role(b.var)])
    if not any(roles):
        return value, b.var.ty
    callee = b.value.args[0]
    key = (callee.name_hint, laid.layout.name, roles)
    gvar = laid.made.get(key)
    if gvar is None:
        func = transform_primfunc(laid.module[callee], roles, laid.layout)
        name = f"{callee.name_hint}_{laid.layout.name.lower()}"
        gvar = laid.made[key] = laid.add_primfunc(func, name)
    out_ty = laid.stored_ty(b.var)
    return relax.call_tir(gvar, value.args[1], out_ty), out_ty


def apply_plan(
    legalized_mod: tvm.IRModule,
    graph: OpGraph,
    plan: Plan,
    target: tvm.target.Target | None = None,
) -> tvm.IRModule:
    """The legalized module with one PrimFunc per group (FuseOps + FuseTIR done).

    `legalized_mod` is `legalize(mod, target)` and `graph` its OpGraph (`build_opgraph(mod,
    legalized=legalized_mod)`). A group with a layout computes in it, with transforms where
    layouts meet (`_Borders`); schedules are applied after this, by the tuning layer.
    """
    validate_plan(graph, plan)
    grouped = _group_bindings(legalized_mod, graph, plan)
    passes = tvm.transform.Sequential(
        [relax.transform.FuseOps(), relax.transform.FuseTIR(), mark_prepacked()], name="ago_fuse"
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
    borders = _Borders(graph, legalized_mod, builder)
    blocks = []
    for bi, block in enumerate(func.body.blocks):
        dataflow = isinstance(block, relax.DataflowBlock)
        borders.new_block()  # a transformed var of one block is no var of the next
        bindings: list[Any] = []
        for unit in _unit_order(units, var_unit, bi):
            gi = unit.key[1]
            if unit.key[0] == "b" or not _is_groupable(unit):
                bindings.extend(b for _, b in unit.bindings)
                continue
            outputs = _outputs(unit, used_outside, dataflow)
            laid = borders.group_layout(unit, plan.groups[gi].layout)
            group_func, args = _group_function(unit, outputs, laid)
            name = names[gi]
            # the attribute keeps add_func from reusing an equal function of another group
            gvar = builder.add_func(group_func.with_attr(_KEEP_APART_ATTR, name), name)
            if gvar.name_hint != name:  # names are how groups, PrimFuncs and tasks meet
                raise RuntimeError(f"the module already has a function named {name}")
            builder.update_func(gvar, group_func)
            if laid is not None:
                args = [borders.argument(a, laid, bindings, dataflow) for a in args]
            call = relax.Call(gvar, args)
            results = outputs
            if laid is not None:
                results = [borders.stored_result(o, laid, dataflow) for o in outputs]
            if len(outputs) == 1:
                bindings.append(relax.VarBinding(results[0], call))
            else:
                make = relax.DataflowVar if dataflow else relax.Var
                tuple_var = make(f"{name}_out", relax.TupleType([r.ty for r in results]))
                bindings.append(relax.VarBinding(tuple_var, call))
                bindings.extend(
                    relax.VarBinding(r, relax.TupleGetItem(tuple_var, k))
                    for k, r in enumerate(results)
                )
            if laid is not None:
                for o, r in zip(outputs, results, strict=True):
                    borders.restore(o, r, laid, bindings)
        blocks.append(relax.DataflowBlock(bindings) if dataflow else relax.BindingBlock(bindings))
    body = relax.SeqExpr(blocks, func.body.body)
    new_main = relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs)
    builder.update_func(legalized_mod.get_global_var(plan.func_name), new_main)
    grouped = relax.transform.Normalize()(builder.get())
    if not borders.placed:
        return grouped
    # the transforms become kernels; those nobody reads (a result no default-layout group
    # reads) and the operators' NCHW PrimFuncs a layout replaced go
    cleanup = tvm.transform.Sequential(
        [
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.DeadCodeElimination([plan.func_name]),
        ]
    )
    return cleanup(grouped)


class _Borders:
    """Where layouts meet in `main`: a tensor a group reads in its layout is transformed once
    (every later reader in that layout reads the same transformed var), a group's results in a
    layout are stored as such and transformed back to NCHW under their own var (so what reads
    them in NCHW is untouched), and a group in the layout its producer wrote reads the stored
    result itself: the transform pair cancels before it is placed. Weights are transformed
    here, once, in numpy."""

    def __init__(self, graph: OpGraph, module: tvm.IRModule, builder: Any) -> None:
        self.graph = graph
        self.module = module
        self.builder = builder
        self.made: dict[tuple[str, str, tuple[str | None, ...]], Any] = {}
        self.stored: dict[Any, dict[tuple[str, str], Any]] = {}
        self.produced: dict[Any, tuple[str, Any]] = {}  # var -> its producer's layout, result
        self.placed = 0  # transforms placed in main

    def new_block(self) -> None:
        self.stored.clear()
        self.produced.clear()

    def group_layout(self, unit: _Unit, name: str | None) -> _GroupLayout | None:
        try:
            layout = parse_layout(name)
        except LayoutError as err:
            raise PlanError(f"group {unit.key[1]}: {err}") from err
        if layout.is_default:
            return None
        roles = _tensor_roles(unit, self.graph, layout)
        return _GroupLayout(layout, roles, self._add_primfunc, self.module, self.made)

    def _add_primfunc(self, func: Any, name: str) -> Any:
        return self.builder.add_func(func, name)

    def argument(self, x: Any, laid: _GroupLayout, bindings: list[Any], dataflow: bool) -> Any:
        role = laid.role(x)
        if role is None:
            return x
        if isinstance(x, tvm.ir.Constant):
            array = to_stored(laid.layout, role, x.value.numpy())
            return relax.const(np.ascontiguousarray(array), x.ty.dtype)
        have = self.stored.setdefault(x, {})
        key = (laid.layout.name, role)
        if key in have:
            return have[key]
        shape = [int(d) for d in x.ty.shape]
        source, fn = x, laid.layout.act_map() if role == ACT else laid.layout.weight_map(shape)
        other = self.produced.get(x)
        if role == ACT and other is not None:
            # stored by its producer in another layout: one transform from that one
            source, fn = other[1], transform_map(other[0], laid.layout.name)
        make = relax.DataflowVar if dataflow else relax.Var
        var = make(f"{x.name}_{laid.layout.name.lower()}", laid.stored_ty(x, role))
        bindings.append(relax.VarBinding(var, relax.op.layout_transform(source, fn)))
        self.placed += 1
        have[key] = var
        return var

    def stored_result(self, out: Any, laid: _GroupLayout, dataflow: bool) -> Any:
        """The var a group's result is bound to: `out` itself when it is stored as is."""
        if laid.role(out) is None:
            return out
        make = relax.DataflowVar if dataflow else relax.Var
        return make(f"{out.name}_{laid.layout.name.lower()}", laid.stored_ty(out))

    def restore(self, out: Any, result: Any, laid: _GroupLayout, bindings: list[Any]) -> None:
        """`out` bound to the NCHW of `result`, the group's stored result."""
        if result.same_as(out):
            return
        inverse = transform_map(laid.layout.name, "NCHW")
        bindings.append(relax.VarBinding(out, relax.op.layout_transform(result, inverse)))
        self.placed += 1
        self.stored.setdefault(out, {})[(laid.layout.name, ACT)] = result
        self.produced[out] = (laid.layout.name, result)


LAYOUT_FREE_ATTR = "layout_free_buffers"


def mark_prepacked() -> tvm.transform.Pass:
    """Every kernel's parameters that the model binds to constants (weights, biases) made
    layout-free: named in its PrimFunc's `layout_free_buffers` attribute, so that MetaSchedule's
    `RewriteLayout` postprocessor lets each schedule store them in the layout its loops read
    best, packed once at compile time (`ago_search.build.pack_weights`; see
    `ago_search.measure.prepack`). The attribute is part of the task's workload, so it is set
    here, before tasks are extracted; kernels without constant parameters get none (their
    workloads stay those of TVM's own pipeline).

    What TVM's `AttachAttrLayoutFreeBuffers` does, but in place: that pass re-adds each
    PrimFunc under a new GlobalVar, and as the old one still exists the new one's name gets a
    "1" appended, which would part kernels from their groups. Only constants count (the
    frontend binds every weight as one); that pass also counts parameters of `main` past its
    `num_input`, which would make the inputs of `fuse_groups`' stand-in `main` weights. A
    PrimFunc called from several places gets the positions that are constant at every call.
    """

    @tvm.transform.module_pass(opt_level=0, name="ago_mark_prepacked")
    def mark(mod: tvm.IRModule, _ctx: tvm.transform.PassContext) -> tvm.IRModule:
        free: dict[Any, set[int]] = {}
        for func in mod.functions.values():
            if isinstance(func, relax.Function):
                _layout_free_arguments(func, free)
        marked = mod.clone()
        for gvar, positions in free.items():
            func = mod[gvar]
            if positions and isinstance(func, tvm.tirx.PrimFunc):
                marked[gvar] = func.with_attr(LAYOUT_FREE_ATTR, sorted(positions))
        return marked

    return mark


def _layout_free_arguments(func: relax.Function, free: dict[Any, set[int]]) -> None:
    """For each PrimFunc `func` calls: the positions of its arguments that are constants,
    intersected with what `free` holds for it."""

    def visit(expr: Any) -> None:
        if not (
            isinstance(expr, relax.Call)
            and isinstance(expr.op, tvm.ir.Op)
            and expr.op.name == "relax.call_tir"
            and isinstance(expr.args[0], tvm.ir.GlobalVar)
        ):
            return
        positions = {i for i, a in enumerate(expr.args[1].fields) if isinstance(a, tvm.ir.Constant)}
        gvar = expr.args[0]
        free[gvar] = free[gvar] & positions if gvar in free else positions

    relax.analysis.post_order_visit(func, visit)


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
    layouts: Sequence[str | None] | None = None,
) -> tuple[tvm.IRModule, tuple[str | None, ...]]:
    """Each node set of `groups` (in `layouts[i]`, default NCHW) as the PrimFunc `apply_plan`
    makes of it in any plan that has it, all in one small module; and the PrimFuncs' names
    (None for a group that stays no kernel: one binding that is no call_tir).

    The search scores many plans that differ in a group or two: it fuses just the new groups
    (in milliseconds) instead of the whole model for every plan. The groups may overlap (each is
    its own function of a stand-in `main`); each must be convex and lie within one dataflow
    block. A group's function is made by `apply_plan`'s own code (the bindings that go with it,
    its inputs, its outputs: the members read outside it), so its PrimFunc, and the task
    `extract_tasks` keys on it, is the one the full plan gives.
    """
    func: relax.Function = legalized_mod[graph.func_name]
    builder = relax.BlockBuilder(legalized_mod)
    borders = _Borders(graph, legalized_mod, builder)
    params: list[Any] = []
    param_of: dict[tuple[Any, str], Any] = {}
    bindings: list[Any] = []
    results: list[Any] = []
    names: list[str | None] = []
    for i, nodes in enumerate(groups):
        unit, used_outside, dataflow = _lone_unit(func, graph, nodes)
        if not _is_groupable(unit):
            names.append(None)
            continue
        outputs = _outputs(unit, used_outside, dataflow)
        laid = borders.group_layout(unit, layouts[i] if layouts is not None else None)
        group_func, args = _group_function(unit, outputs, laid)
        ordered = sorted(nodes, key=lambda n: int(graph.node(n)["index"]))
        name = "ago_q" + _group_name(graph, i, ordered)[len(GROUP_PREFIX) :]
        gvar = builder.add_func(group_func.with_attr(_KEEP_APART_ATTR, name), name)
        builder.update_func(gvar, group_func)
        call_args = []
        for arg in args:
            if isinstance(arg, relax.Var):
                ty = laid.stored_ty(arg) if laid is not None else arg.ty
                key = (arg, str(ty))
                if key not in param_of:
                    param_of[key] = relax.Var(arg.name, ty)
                    params.append(param_of[key])
                call_args.append(param_of[key])
            elif laid is not None:
                call_args.append(borders.argument(arg, laid, bindings, False))  # a weight
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
            mark_prepacked(),
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


# ---------------------------------------------------------------------------------------------
# the transforms a plan places


@dataclass(frozen=True)
class Border:
    """A layout transform a plan places in `main`: the tensor `tensor` (a node id, or
    "input:<name>"), NCHW `shape`, from the layout it is stored in (`source`) to the one a
    reader wants (`target`); "NCHW" is the model's own."""

    tensor: str
    shape: tuple[int, ...]
    dtype: str
    source: str
    target: str


def _stored_as(layout: Layout, shape: Sequence[int]) -> str:
    return layout.name if layout.act_applies(shape) else "NCHW"


def plan_borders(
    graph: OpGraph, groups: Sequence[Sequence[str]], layouts: Sequence[str | None]
) -> list[Border]:
    """The layout transforms `apply_plan` places for a plan with these groups and layouts,
    read off the graph: a rank-4 activation stored by its producer's group in one layout and
    read by another group in another, once per tensor and layout read (a model input read in
    a layout is transformed from NCHW; a model output stored in a layout is transformed back).
    What this counts and what `apply_plan` places differ only where a group's tensor stays as
    it is for a reason only the module shows (a tuple's fields, a tensor with two roles)."""
    return _border_reads(graph, groups, layouts)[0]


def cancelled_borders(
    graph: OpGraph, groups: Sequence[Sequence[str]], layouts: Sequence[str | None]
) -> int:
    """The transform pairs a plan does not place: a tensor passed between two groups in the
    same layout other than NCHW (without cancelling, the producer's transform back to NCHW and
    the reader's transform into its layout), once per tensor and layout."""
    return _border_reads(graph, groups, layouts)[1]


def _border_reads(
    graph: OpGraph, groups: Sequence[Sequence[str]], layouts: Sequence[str | None]
) -> tuple[list[Border], int]:
    group_of: dict[str, int] = {n: gi for gi, nodes in enumerate(groups) for n in nodes}
    parsed = [parse_layout(name) for name in layouts]
    stored: dict[str, str] = {}  # tensor -> the layout its producer stores it in
    shapes: dict[str, tuple[tuple[int, ...], str]] = {}
    for info in graph.inputs:
        ref = f"input:{info.name}"
        stored[ref], shapes[ref] = "NCHW", (tuple(info.shape), info.dtype)
    nchw_only: set[str] = set()  # nodes that read and write NCHW whatever their group's layout
    for node in graph.order:
        data = graph.node(node)
        outs = data["out_shapes"]
        shape = tuple(int(d) for d in outs[0]) if len(outs) == 1 else ()
        shapes[node] = (shape, str(data["dtype"]))
        layout = parsed[group_of[node]]
        # a tuple-producing call and an operator left in main as it is (no call_tir) keep
        # their tensors as they are (`_tensor_roles`, `_is_groupable`); so, trivially, does
        # one with no rank-4 tensor
        if not touches_activation(graph, node):
            nchw_only.add(node)
        stored[node] = "NCHW" if node in nchw_only else _stored_as(layout, shape)
    wanted: dict[tuple[str, str], None] = {}
    kept: set[tuple[str, str]] = set()
    for node in graph.order:
        data = graph.node(node)
        gi = group_of[node]
        layout = parsed[gi]
        conv = _nchw_conv(data)
        for k, ref in enumerate(data["inputs"]):
            if ref == "const" or (ref in group_of and group_of[ref] == gi):
                continue
            shape = shapes[ref][0]
            plain = node not in nchw_only and not (conv and k == 1)
            reads = _stored_as(layout, shape) if plain else "NCHW"
            if reads != stored[ref]:
                wanted[(ref, reads)] = None
            elif reads != "NCHW":
                kept.add((ref, reads))
    for ref in graph.outputs:
        if ref in stored and stored[ref] != "NCHW":
            wanted[(ref, "NCHW")] = None
    borders = [
        Border(ref, shapes[ref][0], shapes[ref][1], stored[ref], reads) for ref, reads in wanted
    ]
    return borders, len(kept)


def transform_map(source: str, target: str) -> Any:
    """The index map of one transform between two layouts of a rank-4 activation (the one
    `apply_plan` places: from NCHW, back to NCHW, or straight from one to the other)."""
    src, dst = parse_layout(source), parse_layout(target)
    forward = None if dst.is_default else dst.act_map()
    if src.is_default:
        if forward is None:
            raise ValueError("no transform from NCHW to NCHW")
        return forward
    return src.act_inverse(then=forward)


def border_module(
    borders: Sequence[Border], target: tvm.target.Target | None = None
) -> tuple[tvm.IRModule, tuple[str, ...]]:
    """Each border's transform as the PrimFunc `apply_plan` places (a legalized
    `relax.layout_transform`), in one module whose `main` calls them all, and the PrimFunc's
    name of each border: what `extract_tasks` makes the transforms' tasks of."""
    bb = relax.BlockBuilder()
    params = []
    for k, b in enumerate(borders):
        shape = b.shape
        if b.source != "NCHW":
            shape = stored_shape(parse_layout(b.source), ACT, b.shape)
        params.append(relax.Var(f"t{k}", relax.TensorType(shape, b.dtype)))
    with bb.function("main", params):
        outs = [
            bb.emit(relax.op.layout_transform(p, transform_map(b.source, b.target)))
            for p, b in zip(params, borders, strict=True)
        ]
        bb.emit_func_output(relax.Tuple(outs))
    legalize = tvm.transform.Sequential(
        [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern()]
    )
    if target is None:
        mod = legalize(bb.get())
    else:
        with target:
            mod = legalize(bb.get())
    names = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            if _is_call_tir(binding.value):
                names.append(binding.value.args[0].name_hint)
    if len(names) != len(borders):
        raise RuntimeError(f"{len(borders)} transforms became {len(names)} kernels")
    return mod, tuple(names)
