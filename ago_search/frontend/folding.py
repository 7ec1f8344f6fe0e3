"""Fold shape-computing subgraphs to constants once the input shapes are fixed.

Exporters compute shapes at run time: Shape -> Gather -> Unsqueeze -> Concat -> Reshape, the
`sizes` of a Resize, the `shape` of an Expand. TVM's Relax importer wants those operands as
constants ("Reshape requires the input new shape to be Shape"). With static input shapes they
are constants: we infer shapes, turn each `Shape`/`Size` of a statically shaped tensor into a
constant, evaluate every node whose inputs are all constant with ONNX's reference evaluator,
and repeat until nothing changes (a folded Reshape shape lets inference see the next Shape).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

log = logging.getLogger(__name__)

# Above this many elements a constant float computation is left to TVM's FoldConstant: this
# pass is for shapes and small index tensors, not for rewriting weights.
_MAX_FOLDED_FLOAT_ELEMENTS = 65536
_NONDETERMINISTIC = frozenset(
    {
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
    }
)
_MAX_ROUNDS = 8


@dataclass(frozen=True)
class FoldReport:
    nodes_folded: int
    shape_nodes_folded: int
    nodes_removed_dead: int
    rounds: int


def fold_shape_subgraphs(model: onnx.ModelProto, opset: int) -> tuple[onnx.ModelProto, FoldReport]:
    """Return a copy of `model` (inputs already static) with its constant subgraphs folded."""
    model = _copy(model)
    total = shape_total = dead_total = 0
    rounds = 0
    while rounds < _MAX_ROUNDS:
        rounds += 1
        shapes = _infer_static_shapes(model)
        folded, shape_folded = _fold_once(model, shapes, opset)
        dead = _remove_dead_nodes(model)
        total += folded
        shape_total += shape_folded
        dead_total += dead
        if folded == 0:
            break
    _refresh_value_info(model)
    report = FoldReport(total, shape_total, dead_total, rounds)
    log.info("folded %d constant nodes (%d Shape/Size) in %d rounds", total, shape_total, rounds)
    return model, report


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _clear_symbolic_value_info(model: onnx.ModelProto) -> None:
    """Drop stale shape annotations: exporters annotate intermediates with symbolic dims
    (s0, batch, ...) that contradict the now fixed inputs and would confuse inference."""
    del model.graph.value_info[:]
    for output in model.graph.output:
        tensor_type = output.type.tensor_type
        if tensor_type.HasField("shape") and any(
            not d.HasField("dim_value") for d in tensor_type.shape.dim
        ):
            tensor_type.ClearField("shape")


def _infer_static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    _clear_symbolic_value_info(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # inference is advisory here; folding goes as far as it can
        log.warning("ONNX shape inference failed (%s); folding with declared shapes only", exc)
        inferred = model
    shapes: dict[str, tuple[int, ...]] = {}
    graph = inferred.graph
    for value in list(graph.input) + list(graph.value_info) + list(graph.output):
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type") or not tensor_type.HasField("shape"):
            continue
        dims = tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(d.dim_value for d in dims)
    for tensor in graph.initializer:
        shapes[tensor.name] = tuple(tensor.dims)
    return shapes


def _constant_node_value(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
    try:
        return ReferenceEvaluator(node).run(None, {})[0]
    except Exception:
        return None


def _fold_once(
    model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], opset: int
) -> tuple[int, int]:
    graph = model.graph
    consts: dict[str, np.ndarray] = {}
    for tensor in graph.initializer:
        # Only small initializers take part: a node reading a weight is not shape arithmetic.
        if int(np.prod(tensor.dims)) <= _MAX_FOLDED_FLOAT_ELEMENTS:
            consts[tensor.name] = numpy_helper.to_array(tensor)
    folded_nodes: list[onnx.NodeProto] = []
    inlined: dict[int, list[onnx.NodeProto]] = {}
    folded = shape_folded = 0
    for node in graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type in _NONDETERMINISTIC:
            continue
        if node.op_type == "If" and node.input[0] in consts:
            inlined[id(node)] = _inline_if(node, bool(consts[node.input[0]]), graph)
            folded += 1
            continue
        values = _evaluate(node, consts, shapes, opset)
        if values is None:
            continue
        for name, value in zip(node.output, values, strict=True):
            consts[name] = value
        folded_nodes.append(node)
        if node.op_type in ("Shape", "Size"):
            shape_folded += 1
        if node.op_type != "Constant":
            folded += 1
    if not folded_nodes and not inlined:
        return 0, 0
    # Replace folded nodes by initializers for the outputs somebody still reads.
    folded_names = {id(n) for n in folded_nodes}
    keep = []
    for node in graph.node:
        if id(node) in inlined:
            keep.extend(inlined[id(node)])
        elif id(node) not in folded_names:
            keep.append(node)
    read = {i for n in keep for i in n.input} | {o.name for o in graph.output}
    existing = {t.name for t in graph.initializer}
    for node in folded_nodes:
        for name in node.output:
            if name in read and name not in existing:
                graph.initializer.append(numpy_helper.from_array(np.asarray(consts[name]), name))
                existing.add(name)
    del graph.node[:]
    graph.node.extend(keep)
    return folded, shape_folded


def _inline_if(node: onnx.NodeProto, cond: bool, graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    """The nodes of the branch a constant condition selects, its outputs renamed to the If's.

    Exporters emit `If` for shape tests (batch == 1, ...) that are constant once shapes are
    fixed; TVM's importer cannot partition a function with control flow.
    """
    branch = next(
        a.g for a in node.attribute if a.name == ("then_branch" if cond else "else_branch")
    )
    graph.initializer.extend(branch.initializer)
    nodes = list(branch.node)
    for inner, outer in zip(branch.output, node.output, strict=True):
        nodes.append(onnx.helper.make_node("Identity", [inner.name], [outer], name=f"{outer}_if"))
    return nodes


def _evaluate(
    node: onnx.NodeProto,
    consts: dict[str, np.ndarray],
    shapes: dict[str, tuple[int, ...]],
    opset: int,
) -> list[np.ndarray] | None:
    if node.op_type == "Constant":
        value = _constant_node_value(node)
        return None if value is None else [value]
    if node.op_type in ("Shape", "Size"):
        shape = shapes.get(node.input[0])
        if shape is None:
            return None
        if node.op_type == "Size":
            return [np.array(int(np.prod(shape)), dtype=np.int64)]
        attrs = {a.name: a.i for a in node.attribute}
        start, end = attrs.get("start", 0), attrs.get("end", len(shape))
        return [np.array(shape[start:end], dtype=np.int64)]
    inputs = [i for i in node.input if i]
    if not inputs or any(i not in consts for i in inputs):
        return None
    try:
        values = ReferenceEvaluator(node, opsets={"": opset}).run(
            None, {i: consts[i] for i in inputs}
        )
    except Exception as exc:  # an op the reference evaluator lacks: leave it to TVM
        log.debug("not folding %s (%s): %s", node.name, node.op_type, exc)
        return None
    values = [np.asarray(v) for v in values]
    for v in values:
        if v.dtype.kind == "f" and v.size > _MAX_FOLDED_FLOAT_ELEMENTS:
            return None
    return values


def _remove_dead_nodes(model: onnx.ModelProto) -> int:
    """Remove nodes and initializers that no graph output depends on."""
    graph = model.graph
    needed = {o.name for o in graph.output}
    live = []
    for node in reversed(graph.node):
        if any(o in needed for o in node.output):
            live.append(node)
            needed.update(i for i in node.input if i)
            for attr in node.attribute:  # subgraphs (If/Loop) read outer names
                if attr.type == onnx.AttributeProto.GRAPH:
                    needed.update(_outer_names(attr.g))
    removed = len(graph.node) - len(live)
    if removed:
        live.reverse()
        del graph.node[:]
        graph.node.extend(live)
    unused = [t for t in graph.initializer if t.name not in needed]
    for tensor in unused:
        graph.initializer.remove(tensor)
    # Old exporters also list initializers as graph inputs; a dropped weight is no input.
    unused_names = {t.name for t in unused}
    for value in [i for i in graph.input if i.name in unused_names]:
        graph.input.remove(value)
    return removed


def _outer_names(graph: onnx.GraphProto) -> set[str]:
    names = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                names.update(_outer_names(attr.g))
    return names


def _refresh_value_info(model: onnx.ModelProto) -> None:
    """Leave the model with consistent static annotations for the importer and for ORT."""
    _clear_symbolic_value_info(model)
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:
        log.warning("ONNX shape inference failed after folding: %s", exc)
        return
    model.graph.value_info.extend(inferred.graph.value_info)
    for output, inferred_output in zip(model.graph.output, inferred.graph.output, strict=True):
        if not output.type.tensor_type.HasField("shape"):
            output.type.CopyFrom(inferred_output.type)
