"""Tests of ago_search.graph: OpGraph nodes, FLOPs, mapping types, edges, TVM's default groups.

Models are built here with onnx.helper and imported with TVM's ONNX frontend directly.
"""

from __future__ import annotations

import json
import logging

import networkx as nx
import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax
from tvm.relax.frontend.onnx import from_onnx
from tvm.s_tir.analysis import estimate_tir_flops

from ago_search.graph import (
    MappingType,
    OpGraph,
    build_opgraph,
    legalize,
    mapping_counts,
    opgraph_from_dict,
    opgraph_to_dict,
    ops_by_type,
    summarize,
    tensor_bytes,
    tvm_default_groups,
)
from ago_search.graph import mapping as mapping_module

TARGET = tvm.target.Target({"kind": "llvm", "num-cores": 2})

# our test graphs declare outputs without shapes; the importer infers them and says so
pytestmark = pytest.mark.filterwarnings("ignore:Field 'shape' of 'type' is required")


# --------------------------------------------------------------------------------------------
# model helpers


def _weight(name: str, shape: tuple[int, ...], seed: int = 0) -> onnx.TensorProto:
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.uniform(-0.5, 0.5, shape).astype(np.float32), name)


def _ints(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _floats(name: str, values: list[float]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.float32), name)


def _import(nodes, inputs: dict[str, list[int]], inits=(), opset: int = 17) -> tvm.IRModule:
    graph = helper.make_graph(
        list(nodes),
        "g",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info(nodes[-1].output[0], TensorProto.FLOAT, None)],
        list(inits),
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return from_onnx(model, shape_dict=inputs)


def _graph(nodes, inputs, inits=(), opset: int = 17) -> tuple[tvm.IRModule, OpGraph]:
    mod = _import(nodes, inputs, inits, opset)
    return mod, build_opgraph(mod, target=TARGET)


def _by_op(g: OpGraph, op: str) -> list[dict]:
    return [dict(g.node(n)) for n in g.order if g.node(n)["op"] == op]


def _one(g: OpGraph, op: str) -> dict:
    nodes = _by_op(g, op)
    assert len(nodes) == 1, f"expected one {op}, got {[n['var'] for n in nodes]}"
    return nodes[0]


def _tvm_estimate(mod: tvm.IRModule, primfunc: str) -> int:
    legal = legalize(mod, TARGET)
    return int(estimate_tir_flops(tvm.IRModule({"main": legal[primfunc]})))


# --------------------------------------------------------------------------------------------
# FLOPs against hand counts


def test_conv_3x3_stride2_padded_flops():
    mod, g = _graph(
        [helper.make_node("Conv", ["x", "W"], ["y"], strides=[2, 2], pads=[1, 1, 1, 1])],
        {"x": [1, 3, 16, 16]},
        [_weight("W", (8, 3, 3, 3))],
    )
    conv = _one(g, "relax.nn.conv2d")
    assert conv["out_shape"] == (1, 8, 8, 8)
    assert conv["flops"] == 2 * 1 * 8 * 8 * 8 * 3 * 3 * 3
    assert conv["attrs"]["strides"] == (2, 2)
    assert conv["attrs"]["padding"] == (1, 1, 1, 1)
    assert conv["params"] == 8 * 3 * 3 * 3
    assert conv["bytes"] == 4 * (3 * 16 * 16 + 8 * 3 * 3 * 3 + 8 * 8 * 8)
    # TVM counts a multiply-add as 2 FLOPs too
    assert conv["flops"] == _tvm_estimate(mod, conv["primfunc"])


def test_depthwise_conv_flops():
    mod, g = _graph(
        [helper.make_node("Conv", ["x", "W"], ["y"], group=8, pads=[1, 1, 1, 1])],
        {"x": [1, 8, 16, 16]},
        [_weight("W", (8, 1, 3, 3))],
    )
    conv = _one(g, "relax.nn.conv2d")
    assert conv["attrs"]["groups"] == 8
    assert conv["flops"] == 2 * 8 * 16 * 16 * 1 * 3 * 3
    assert conv["flops"] == _tvm_estimate(mod, conv["primfunc"])


def test_grouped_dilated_conv_flops():
    mod, g = _graph(
        [helper.make_node("Conv", ["x", "W"], ["y"], group=4, dilations=[2, 2], pads=[2, 2, 2, 2])],
        {"x": [1, 8, 10, 10]},
        [_weight("W", (16, 2, 3, 3))],
    )
    conv = _one(g, "relax.nn.conv2d")
    assert conv["out_shape"] == (1, 16, 10, 10)
    assert conv["flops"] == 2 * 16 * 10 * 10 * (8 // 4) * 3 * 3
    assert conv["flops"] == _tvm_estimate(mod, conv["primfunc"])


def test_batched_matmul_flops():
    _, g = _graph(
        [
            helper.make_node("MatMul", ["a", "b"], ["c"]),
            helper.make_node("MatMul", ["c", "W"], ["y"]),  # broadcast of a 2-d weight
        ],
        {"a": [2, 3, 4, 5], "b": [2, 3, 5, 6]},
        [_weight("W", (6, 7))],
    )
    first, second = _by_op(g, "relax.matmul")
    assert first["out_shape"] == (2, 3, 4, 6)
    assert first["flops"] == 2 * (2 * 3 * 4 * 6) * 5
    assert first["params"] == 0 and first["complex"]
    assert second["out_shape"] == (2, 3, 4, 7)
    assert second["flops"] == 2 * (2 * 3 * 4 * 7) * 6
    assert second["params"] == 6 * 7


def test_gemm_is_matmul_plus_bias_and_weight_transpose_folds():
    _, g = _graph(
        [helper.make_node("Gemm", ["x", "W", "B"], ["y"], transB=1)],
        {"x": [4, 16]},
        [_weight("W", (8, 16)), _weight("B", (8,), 1)],
    )
    # the transpose of the constant weight is folded away: no node for it
    assert not _by_op(g, "relax.permute_dims")
    mm = _one(g, "relax.matmul")
    assert mm["flops"] == 2 * 4 * 8 * 16
    assert mm["params"] == 8 * 16
    bias = _one(g, "relax.add")
    assert bias["flops"] == 4 * 8 and bias["params"] == 8
    assert g.param_count == 8 * 16 + 8


def test_avgpool_flops():
    _, g = _graph(
        [
            helper.make_node("AveragePool", ["x"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
            helper.make_node("AveragePool", ["p"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        ],
        {"x": [1, 4, 8, 8]},
    )
    first, second = _by_op(g, "relax.nn.avg_pool2d")
    assert first["out_shape"] == (1, 4, 4, 4)
    assert first["flops"] == 4 * 4 * 4 * (2 * 2)
    assert second["out_shape"] == (1, 4, 4, 4)
    assert second["flops"] == 4 * 4 * 4 * (3 * 3)
    assert first["mapping"] == MappingType.MANY_TO_MANY
    assert not first["complex"]


def test_conv_transpose_flops():
    _, g = _graph(
        [helper.make_node("ConvTranspose", ["x", "W"], ["y"], strides=[2, 2])],
        {"x": [1, 4, 5, 5]},
        [_weight("W", (4, 2, 3, 3))],
    )
    deconv = _one(g, "relax.nn.conv2d_transpose")
    assert deconv["out_shape"] == (1, 2, 11, 11)
    # every input element is scattered over a 3x3 window of each of the 2 output channels
    assert deconv["flops"] == 2 * (1 * 4 * 5 * 5) * 2 * 3 * 3
    assert deconv["complex"] and deconv["mapping"] == MappingType.MANY_TO_MANY


# --------------------------------------------------------------------------------------------
# mapping types, complex flag, edges


def _mixed_graph() -> tuple[tvm.IRModule, OpGraph]:
    return _graph(
        [
            helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("Add", ["r", "x"], ["a"]),
            helper.make_node("Resize", ["a", "", "scales"], ["u"], mode="nearest"),
            helper.make_node("Concat", ["u", "u"], ["cc"], axis=1),
            helper.make_node("Reshape", ["cc", "shape"], ["rs"]),
            helper.make_node("Transpose", ["rs"], ["t"], perm=[0, 2, 1]),
            helper.make_node("Softmax", ["t"], ["y"], axis=-1),
        ],
        {"x": [1, 4, 8, 8]},
        [_weight("W", (4, 4, 3, 3)), _floats("scales", [1, 1, 2, 2]), _ints("shape", [1, 8, 256])],
    )


def test_mapping_types_of_a_mixed_graph():
    _, g = _mixed_graph()
    got = {g.node(n)["op"]: g.node(n)["mapping"] for n in g.order}
    assert got == {
        "relax.nn.conv2d": "many-to-many",
        "relax.nn.relu": "one-to-one",
        "relax.add": "one-to-one",
        "relax.image.resize2d": "one-to-many",
        "relax.concat": "reorganize",
        "relax.reshape": "reorganize",
        "relax.permute_dims": "shuffle",
        "relax.nn.softmax": "many-to-many",
    }
    assert [n for n in g.order if g.node(n)["complex"]] == [_one(g, "relax.nn.conv2d")["var"]]
    assert _one(g, "relax.image.resize2d")["flops"] == 0  # nearest: no arithmetic
    assert _one(g, "relax.nn.softmax")["flops"] == 5 * 8 * 256
    assert _one(g, "relax.nn.relu")["flops"] == 4 * 8 * 8


def test_unknown_op_falls_back_to_tvm_op_pattern(monkeypatch, caplog):
    monkeypatch.delitem(mapping_module.OP_MAPPING, "relax.nn.relu")
    with caplog.at_level(logging.WARNING, logger="ago_search.graph"):
        _, g = _mixed_graph()
    relu = _one(g, "relax.nn.relu")
    assert relu["mapping"] == "one-to-one"  # TVM's kElemWise
    assert "relax.nn.relu" in caplog.text


def _assert_edges_follow_data_flow(g: OpGraph) -> None:
    assert nx.is_directed_acyclic_graph(g.graph)
    assert set(g.graph.nodes) == set(g.order)
    position = {n: i for i, n in enumerate(g.order)}
    for n in g.order:
        attrs = g.node(n)
        produced_by = {ref for ref in attrs["inputs"] if ref in g.graph}
        assert set(g.graph.predecessors(n)) == produced_by
        for p in produced_by:
            assert position[p] < position[n]
    for u, _, data in g.graph.edges(data=True):
        producer = g.node(u)
        if len(producer["out_shapes"]) == 1:
            assert data["bytes"] == tensor_bytes(producer["out_shape"], producer["dtype"])
        else:  # a tuple producer: the consumer reads some of its fields
            sizes = [tensor_bytes(s, producer["dtype"]) for s in producer["out_shapes"]]
            assert data["bytes"] in {sum(sizes), *sizes}


def test_edges_follow_data_flow():
    _, g = _mixed_graph()
    _assert_edges_follow_data_flow(g)
    chain = [g.node(n)["op"] for n in g.order]
    assert chain[0] == "relax.nn.conv2d" and chain[-1] == "relax.nn.softmax"
    conv, add = _one(g, "relax.nn.conv2d")["var"], _one(g, "relax.add")["var"]
    assert "input:x" in g.node(conv)["inputs"] and "input:x" in g.node(add)["inputs"]
    assert g.outputs == (g.order[-1],)
    assert g.inputs[0].name == "x" and g.inputs[0].shape == (1, 4, 8, 8)


def test_tuple_outputs_are_one_node_and_get_items_are_no_nodes():
    mod, g = _graph(
        [
            helper.make_node("Split", ["x"], ["s1", "s2"], axis=1, num_outputs=2),
            helper.make_node("Relu", ["s2"], ["r"]),
            helper.make_node("Concat", ["r", "s1"], ["y"], axis=1),
        ],
        {"x": [1, 8, 4, 4]},
        opset=18,
    )
    split = _one(g, "relax.split")
    assert split["out_shapes"] == [(1, 4, 4, 4), (1, 4, 4, 4)]
    assert [g.node(n)["op"] for n in g.order] == ["relax.split", "relax.nn.relu", "relax.concat"]
    # each consumer reads one field: the edge carries that field's bytes
    for consumer in g.graph.successors(split["var"]):
        assert g.graph.edges[split["var"], consumer]["bytes"] == 4 * 4 * 4 * 4
    _assert_edges_follow_data_flow(g)


def test_each_node_is_one_call_tir_binding_of_the_legalized_module():
    mod, g = _conv_bn_relu_add()
    legal = legalize(mod, TARGET)
    bindings = [b for block in legal["main"].body.blocks for b in block.bindings]
    calls = [b for b in bindings if isinstance(b.value, relax.Call)]
    assert len(calls) == len(g)
    for n in g.order:
        attrs = g.node(n)
        binding = bindings[attrs["index"]]
        assert binding.var.name == attrs["var"] == n
        assert binding.value.op.name == "relax.call_tir"
        assert binding.value.args[0].name_hint == attrs["primfunc"]


def test_json_round_trip_and_summary():
    _, g = _mixed_graph()
    back = opgraph_from_dict(json.loads(json.dumps(opgraph_to_dict(g))))
    assert back.order == g.order and back.inputs == g.inputs and back.outputs == g.outputs
    for n in g.order:
        assert dict(back.node(n)) == dict(g.node(n))
    assert sorted(back.graph.edges(data=True)) == sorted(g.graph.edges(data=True))

    summary = summarize(g)
    assert summary.nodes == len(g) == sum(r.count for r in ops_by_type(g))
    assert summary.flops == sum(r.flops for r in summary.ops) > 0
    assert summary.params == 4 * 4 * 3 * 3
    assert summary.complex_ops == 1
    assert sum(mapping_counts(g).values()) == len(g)
    assert set(mapping_counts(g)) == {m.value for m in MappingType}
    assert summary.ops[0].op == "relax.nn.conv2d"  # most FLOPs first
    json.dumps(summary.to_dict())


# --------------------------------------------------------------------------------------------
# TVM's default fusion


def _conv_bn_relu_add() -> tuple[tvm.IRModule, OpGraph]:
    return _graph(
        [
            helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("Conv", ["r", "W2"], ["c2"], pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", ["c2", "g", "b", "m", "v"], ["bn"]),
            helper.make_node("Add", ["bn", "x"], ["a"]),
            helper.make_node("Relu", ["a"], ["y"]),
        ],
        {"x": [1, 4, 8, 8]},
        [_weight("W", (4, 4, 3, 3)), _weight("B", (4,), 1), _weight("W2", (4, 4, 3, 3), 2)]
        + [_weight(n, (4,), 3 + i) for i, n in enumerate("gbm")]
        + [_floats("v", [1.0, 2.0, 0.5, 1.5])],
    )


def _assert_groups_cover_each_node_once(g: OpGraph, groups) -> None:
    seen = [n for group in groups.groups for n in group.nodes]
    assert sorted(seen) == sorted(g.order)  # every node, none twice
    assert set(groups.node_group) == set(g.order)
    for i, group in enumerate(groups.groups):
        assert all(groups.node_group[n] == i for n in group.nodes)
        assert group.complex_ops == sum(1 for n in group.nodes if g.node(n)["complex"])


def test_default_groups_conv_bias_relu_in_one_group():
    mod, g = _conv_bn_relu_add()
    groups = tvm_default_groups(mod, TARGET, graph=g)
    _assert_groups_cover_each_node_once(g, groups)
    first_conv = g.order[0]
    group = groups.groups[groups.node_group[first_conv]]
    ops = [g.node(n)["op"] for n in group.nodes]
    assert ops == ["relax.nn.conv2d", "relax.add", "relax.nn.relu"]
    assert group.complex_ops == 1 and group.fused
    assert group.name == "fused_conv2d_add_relu"


def test_default_groups_attention_like_matmuls():
    mod, g = _graph(
        [
            helper.make_node("MatMul", ["x", "Wq"], ["q"]),
            helper.make_node("MatMul", ["x", "Wk"], ["k"]),
            helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1]),
            helper.make_node("MatMul", ["q", "kt"], ["s"]),
            helper.make_node("Div", ["s", "scale"], ["sd"]),
            helper.make_node("Softmax", ["sd"], ["p"], axis=-1),
            helper.make_node("MatMul", ["p", "x"], ["y"]),
        ],
        {"x": [2, 8, 16]},
        [_weight("Wq", (16, 16)), _weight("Wk", (16, 16), 1), _floats("scale", [4.0])],
    )
    groups = tvm_default_groups(mod, TARGET, graph=g)
    _assert_groups_cover_each_node_once(g, groups)
    assert sum(grp.complex_ops for grp in groups.groups) == 4
    # TVM's default rule: a matmul takes the elementwise op after it, never a second matmul
    assert all(grp.complex_ops <= 1 for grp in groups.groups)
    scores = _one(g, "relax.nn.softmax")["var"]
    assert g.node(scores)["mapping"] == "many-to-many"


@pytest.mark.parametrize("model", ["mixed", "conv_bn"])
def test_default_groups_without_a_graph_match_with_one(model):
    mod, g = _mixed_graph() if model == "mixed" else _conv_bn_relu_add()
    assert tvm_default_groups(mod, TARGET) == tvm_default_groups(mod, TARGET, graph=g)
