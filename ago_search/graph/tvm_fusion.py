"""The groups TVM's default fusion forms, as a node -> group map over the OpGraph.

`relax.get_default_pipeline(target)` for llvm runs DispatchSampling, DispatchSortScan,
LegalizeOps, AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR, ... (TVM 0.27,
`relax/backend/cpu_generic/pipeline.py`). `legalize` runs the passes up to FuseOps; here
FuseOps runs on that, and each Primitive function it creates is one group.

Finding the nodes of a fused function: inside it, FuseOps keeps the member bindings' var names
except the last (renamed "gv"), and the caller's binding gets a fresh name, so names alone do
not tell. Before FuseOps every call_tir binding of `main` is therefore pointed at its own copy
of its PrimFunc under a unique name ("<kernel>__ago<index>"); FuseOps reads only the PrimFuncs'
`op_pattern` and the dataflow, so this changes no decision, and the call_tirs inside each
fused function name their nodes. The same FuseOps also runs on the untagged module; when both
give the same groups (they always did) the groups keep TVM's own function names
("fused_conv2d_add_relu"). A call FuseOps leaves alone in `main` (a lone softmax, an operator
without legalization) is a group of its own, named after its kernel.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import tvm
from tvm import relax

from ago_search.graph.opgraph import OpGraph, build_opgraph, legalize

logger = logging.getLogger(__name__)

_TAG = "__ago"
_TAG_RE = re.compile(rf"^(?P<base>.*){_TAG}(?P<index>\d+)$")
_CALL_TIR = "relax.call_tir"


@dataclass(frozen=True)
class FusedGroup:
    """One group of TVM's default fusion."""

    name: str  # TVM's fused function name, or the kernel name of a lone call
    nodes: tuple[str, ...]  # OpGraph node ids, in binding order
    complex_ops: int  # how many of them are complex (conv, matmul, ...)
    fused: bool  # True when FuseOps made a Primitive function of it


@dataclass(frozen=True)
class DefaultGroups:
    """TVM's default fusion over an OpGraph: groups in execution order, and every node's group."""

    groups: tuple[FusedGroup, ...]
    node_group: Mapping[str, int]  # every OpGraph node -> index into `groups`


def tvm_default_groups(
    mod: tvm.IRModule,
    target: tvm.target.Target | None = None,
    graph: OpGraph | None = None,
    legalized: tvm.IRModule | None = None,
    func_name: str = "main",
) -> DefaultGroups:
    """The groups TVM's default FuseOps forms on `mod`, covering every OpGraph node once.

    `graph` and `legalized` save rebuilding them when the caller has `build_opgraph(mod)` and
    `legalize(mod, target)` already (they must come from this same `mod`).
    """
    if legalized is None:
        legalized = legalize(mod, target)
    if graph is None:
        graph = build_opgraph(mod, func_name, target, legalized=legalized)
    node_by_index = {graph.node(n)["index"]: n for n in graph.order}

    tagged, tag_to_node = _tag_call_tirs(legalized, func_name, node_by_index)
    fused_tagged = _fuse(tagged, target)
    fused_plain = _fuse(legalized, target)
    tagged_groups = _groups_of(fused_tagged, func_name)
    plain_groups = _groups_of(fused_plain, func_name)

    same = [_untag(g[1]) for g in tagged_groups] == [g[1] for g in plain_groups]
    if not same:
        logger.warning(
            "FuseOps grouped the tagged module differently from the plain one; group names "
            "are made up from their kernels"
        )

    groups: list[FusedGroup] = []
    node_group: dict[str, int] = {}
    for i, (name, members, fused) in enumerate(tagged_groups):
        nodes = []
        for member in members:
            node = tag_to_node.get(member) or _node_by_var(graph, member)
            if node is None:
                logger.warning("fused call %s matches no OpGraph node", member)
                continue
            if node in node_group:
                logger.warning("node %s appears in two fused groups; kept in the first", node)
                continue
            nodes.append(node)
            node_group[node] = len(groups)
        if not nodes:
            continue
        if same:
            group_name = plain_groups[i][0]
        else:
            group_name = name if not fused else "fused_" + "_".join(_untag(members))
        groups.append(_group(graph, group_name, nodes, fused))

    for node in graph.order:
        if node not in node_group:
            logger.warning("node %s is in no fused group; it forms its own", node)
            node_group[node] = len(groups)
            groups.append(_group(graph, graph.node(node)["primfunc"] or node, [node], False))
    return DefaultGroups(groups=tuple(groups), node_group=node_group)


def _group(graph: OpGraph, name: str, nodes: list[str], fused: bool) -> FusedGroup:
    nodes = sorted(nodes, key=lambda n: graph.node(n)["index"])
    complex_ops = sum(1 for n in nodes if graph.node(n)["complex"])
    return FusedGroup(name=name, nodes=tuple(nodes), complex_ops=complex_ops, fused=fused)


def _node_by_var(graph: OpGraph, member: str) -> str | None:
    """A member that is no call_tir is named by its binding var (operators left unlegalized)."""
    return member if member in graph.graph else None


def _untag(names: Any) -> list[str]:
    out = []
    for name in names:
        m = _TAG_RE.match(name)
        out.append(m.group("base") if m else name)
    return out


def _fuse(mod: tvm.IRModule, target: tvm.target.Target | None) -> tvm.IRModule:
    if target is None:
        return relax.transform.FuseOps()(mod)
    with target:
        return relax.transform.FuseOps()(mod)


def _is_call_tir(expr: Any) -> bool:
    return (
        isinstance(expr, relax.Call)
        and isinstance(expr.op, tvm.ir.Op)
        and expr.op.name == _CALL_TIR
        and isinstance(expr.args[0], tvm.ir.GlobalVar)
    )


def _tag_call_tirs(
    legalized: tvm.IRModule, func_name: str, node_by_index: Mapping[int, str]
) -> tuple[tvm.IRModule, dict[str, str]]:
    """A copy of `legalized` whose call_tir bindings in `func_name` each call their own PrimFunc.

    Returns it and tagged kernel name -> OpGraph node id.
    """
    builder = relax.BlockBuilder(legalized)
    func: relax.Function = legalized[func_name]
    tag_to_node: dict[str, str] = {}
    blocks = []
    index = 0
    for block in func.body.blocks:
        bindings = []
        for b in block.bindings:
            value = b.value
            if isinstance(b, relax.VarBinding) and _is_call_tir(value) and index in node_by_index:
                tag = f"{value.args[0].name_hint}{_TAG}{index}"
                # the attribute keeps the copies apart: add_func reuses an equal function
                kernel = legalized[value.args[0]].with_attr("ago_node", tag)
                new_gv = builder.add_func(kernel, tag)
                call = relax.Call(value.op, [new_gv, *value.args[1:]], value.attrs, value.ty_args)
                b = relax.VarBinding(b.var, call)
                tag_to_node[new_gv.name_hint] = node_by_index[index]
            bindings.append(b)
            index += 1
        blocks.append(type(block)(bindings))
    body = relax.SeqExpr(blocks, func.body.body)
    new_func = relax.Function(func.params, body, func.ret_ty, func.is_pure, func.attrs)
    builder.update_func(legalized.get_global_var(func_name), new_func)
    tagged = builder.get()
    return relax.transform.Normalize()(tagged), tag_to_node


def _groups_of(fused: tvm.IRModule, func_name: str) -> list[tuple[str, list[str], bool]]:
    """(name, member kernels or var names, fused?) of each call in `func_name`, in order."""
    groups: list[tuple[str, list[str], bool]] = []
    for block in fused[func_name].body.blocks:
        for b in block.bindings:
            value = b.value
            if not isinstance(value, relax.Call):
                continue
            op = value.op
            if isinstance(op, tvm.ir.GlobalVar) and isinstance(fused[op], relax.Function):
                sub = fused[op]
                if sub.attrs is not None and "Primitive" in sub.attrs:
                    groups.append((op.name_hint, _members(sub), True))
                    continue
            if _is_call_tir(value):
                name = value.args[0].name_hint
                groups.append((_untag([name])[0], [name], False))
            elif isinstance(op, tvm.ir.Op):
                groups.append((op.name, [b.var.name], False))
    return groups


def _members(func: relax.Function) -> list[str]:
    return [
        b.value.args[0].name_hint
        for block in func.body.blocks
        for b in block.bindings
        if _is_call_tir(b.value)
    ]
