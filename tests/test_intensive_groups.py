"""Intensive fusion (AGO): groups holding several complex ops compile to ONE PrimFunc and
compute what ONNX Runtime computes.

Each model is small, built with onnx.helper, and planned as one group of all its nodes.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from model_builders import make_model, weight
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from ago_search.build import compile_plan, run_executable
from ago_search.frontend import import_onnx, random_inputs
from ago_search.graph import build_opgraph, legalize
from ago_search.measure.compare import compare_outputs
from ago_search.plan import Plan, apply_plan
from ago_search.schedule import count_complex_blocks, extract_tasks

TARGET = tvm.target.Target({"kind": "llvm", "num-cores": 2})

# our builders declare outputs without shapes; the importer infers them and says so
pytestmark = pytest.mark.filterwarnings("ignore:Field 'shape' of 'type' is required")


def _ints(name: str, values: list[int]) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


def _scalar(name: str, value: float) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value, dtype=np.float32), name)


def _info(name: str, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def conv_conv() -> onnx.ModelProto:
    """Conv 3x3 (8 -> 16) + Relu -> Conv 1x1 (16 -> 8) + Relu."""
    return make_model(
        [
            helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"]),
            helper.make_node("Relu", ["c2"], ["y"]),
        ],
        [_info("x", [1, 8, 16, 16])],
        [_info("y", [1, 8, 16, 16])],
        [
            weight("W1", (16, 8, 3, 3), 1),
            weight("B1", (16,), 2),
            weight("W2", (8, 16, 1, 1), 3),
            weight("B2", (8,), 4),
        ],
    )


def depthwise_pointwise_residual() -> onnx.ModelProto:
    """Depthwise Conv 3x3 -> Relu -> pointwise Conv 1x1 -> Add the block's input."""
    return make_model(
        [
            helper.make_node("Conv", ["x", "Wd", "Bd"], ["d"], pads=[1, 1, 1, 1], group=16),
            helper.make_node("Relu", ["d"], ["r"]),
            helper.make_node("Conv", ["r", "Wp", "Bp"], ["p"]),
            helper.make_node("Add", ["p", "x"], ["y"]),
        ],
        [_info("x", [1, 16, 12, 12])],
        [_info("y", [1, 16, 12, 12])],
        [
            weight("Wd", (16, 1, 3, 3), 1),
            weight("Bd", (16,), 2),
            weight("Wp", (16, 16, 1, 1), 3),
            weight("Bp", (16,), 4),
        ],
    )


def attention(seq: int = 16, hidden: int = 32, heads: int = 2) -> onnx.ModelProto:
    """Multi-head self-attention: Q, K, V projections of one input, scaled scores, softmax,
    attention @ V, heads merged, output projection with bias."""
    head = hidden // heads
    nodes = []
    for p in ("q", "k", "v"):
        nodes += [
            helper.make_node("MatMul", ["x", f"W{p}"], [f"{p}_proj"]),
            helper.make_node("Reshape", [f"{p}_proj", "split_heads"], [f"{p}_heads"]),
        ]
    nodes += [
        helper.make_node("Transpose", ["q_heads"], ["q"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["k_heads"], ["kt"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["v_heads"], ["v"], perm=[0, 2, 1, 3]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"]),
        helper.make_node("Mul", ["scores", "scale"], ["scaled"]),
        helper.make_node("Softmax", ["scaled"], ["attn"], axis=-1),
        helper.make_node("MatMul", ["attn", "v"], ["ctx"]),
        helper.make_node("Transpose", ["ctx"], ["ctx_t"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["ctx_t", "merge_heads"], ["merged"]),
        helper.make_node("MatMul", ["merged", "Wo"], ["out"]),
        helper.make_node("Add", ["out", "bo"], ["y"]),
    ]
    inits = [
        weight("Wq", (hidden, hidden), 1),
        weight("Wk", (hidden, hidden), 2),
        weight("Wv", (hidden, hidden), 3),
        weight("Wo", (hidden, hidden), 4),
        weight("bo", (hidden,), 5),
        _ints("split_heads", [1, seq, heads, head]),
        _ints("merge_heads", [1, seq, hidden]),
        _scalar("scale", 1.0 / float(np.sqrt(head))),
    ]
    return make_model(nodes, [_info("x", [1, seq, hidden])], [_info("y", [1, seq, hidden])], inits)


def ffn(seq: int = 16, hidden: int = 32, inner: int = 64) -> onnx.ModelProto:
    """MatMul -> Add bias -> Erf-GELU -> MatMul -> Add bias."""
    return make_model(
        [
            helper.make_node("MatMul", ["x", "W1"], ["h"]),
            helper.make_node("Add", ["h", "b1"], ["hb"]),
            helper.make_node("Div", ["hb", "sqrt2"], ["hs"]),
            helper.make_node("Erf", ["hs"], ["he"]),
            helper.make_node("Add", ["he", "one"], ["h1"]),
            helper.make_node("Mul", ["hb", "h1"], ["hm"]),
            helper.make_node("Mul", ["hm", "half"], ["g"]),
            helper.make_node("MatMul", ["g", "W2"], ["o"]),
            helper.make_node("Add", ["o", "b2"], ["y"]),
        ],
        [_info("x", [1, seq, hidden])],
        [_info("y", [1, seq, hidden])],
        [
            weight("W1", (hidden, inner), 1),
            weight("b1", (inner,), 2),
            weight("W2", (inner, hidden), 3),
            weight("b2", (hidden,), 4),
            _scalar("sqrt2", float(np.sqrt(2.0))),
            _scalar("one", 1.0),
            _scalar("half", 0.5),
        ],
    )


CASES = {
    # name: (builder, complex ops the group must hold)
    "conv_conv": (conv_conv, 2),
    "depthwise_pointwise_residual": (depthwise_pointwise_residual, 2),
    "attention": (attention, 6),  # Q, K, V, Q @ K^T, attn @ V, output projection
    "ffn": (ffn, 2),
}


def _call_tir_targets(mod: tvm.IRModule) -> list[str]:
    return [
        b.value.args[0].name_hint
        for block in mod["main"].body.blocks
        for b in block.bindings
        if isinstance(b.value, relax.Call)
        and isinstance(b.value.op, tvm.ir.Op)
        and b.value.op.name == "relax.call_tir"
    ]


@pytest.mark.parametrize("case", sorted(CASES))
def test_intensive_group_is_one_primfunc_and_matches_ort(case, tmp_path):
    builder, complex_ops = CASES[case]
    path = tmp_path / f"{case}.onnx"
    onnx.save(builder(), str(path))
    imported = import_onnx(path)
    legalized = legalize(imported.mod, TARGET)
    graph = build_opgraph(imported.mod, target=TARGET, legalized=legalized)
    assert sum(1 for n in graph.order if graph.node(n)["complex"]) == complex_ops

    plan = Plan.from_groups(graph, [graph.order])  # the whole block: one intensive group
    fused = apply_plan(legalized, graph, plan, TARGET)
    calls = _call_tir_targets(fused)
    assert len(calls) == 1, calls
    prim_func = fused[calls[0]]
    assert count_complex_blocks(prim_func) == complex_ops
    (task,) = extract_tasks(fused, TARGET, plan, graph)
    assert task.complex_ops == complex_ops and task.weight == 1
    assert task.nodes == (plan.groups[0].nodes,)

    feeds = random_inputs(imported.inputs, seed=3)
    executable = compile_plan(legalized, graph, plan, TARGET)
    actual = run_executable(executable, [feeds[s.name] for s in imported.inputs])
    reference = ort.InferenceSession(str(path)).run(None, feeds)
    checks = compare_outputs(actual, reference, imported.output_names)
    assert all(c.ok for c in checks), checks


def test_complex_blocks_ignore_single_operand_reductions(tmp_path):
    """Softmax, pooling-like means and norms reduce over one buffer: not complex."""
    model = make_model(
        [
            helper.make_node("Softmax", ["x"], ["s"], axis=-1),
            helper.make_node("ReduceMean", ["s"], ["m"], axes=[-1], keepdims=1),
            helper.make_node("Sub", ["s", "m"], ["y"]),
        ],
        [_info("x", [1, 4, 8])],
        [_info("y", [1, 4, 8])],
    )
    path = tmp_path / "reductions.onnx"
    onnx.save(model, str(path))
    imported = import_onnx(path)
    legalized = legalize(imported.mod, TARGET)
    graph = build_opgraph(imported.mod, target=TARGET, legalized=legalized)
    fused = apply_plan(legalized, graph, Plan.from_groups(graph, [graph.order]), TARGET)
    (call,) = _call_tir_targets(fused)
    assert count_complex_blocks(fused[call]) == 0
