"""Frontend: every bad input gets one clear ModelError; exporter shape chains import."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from model_builders import const, conv_relu, exporter_shape_chain, make_model, weight
from onnx import TensorProto, helper

from ago_search.errors import ModelError, UnsupportedOperatorsError
from ago_search.frontend import import_onnx, parse_input_shapes, random_inputs


def _save(model: onnx.ModelProto, tmp_path, name="m.onnx", **kwargs) -> str:
    path = tmp_path / name
    onnx.save(model, str(path), **kwargs)
    return str(path)


def _run_tvm(imported, feeds):
    import tvm
    from tvm import relax

    target = tvm.target.Target("llvm")
    ex = tvm.compile(imported.mod, target, relax_pipeline=relax.get_default_pipeline(target))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](*[tvm.runtime.tensor(feeds[s.name]) for s in imported.inputs])
    return out.numpy()


def test_missing_file(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        import_onnx(tmp_path / "nope.onnx")


def test_damaged_file(tmp_path):
    good = conv_relu().SerializeToString()
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(b"\x08\x07garbage" + good[: len(good) // 3])
    with pytest.raises(ModelError, match="damaged") as info:
        import_onnx(damaged, {"x": (1, 3, 8, 8)})
    assert str(damaged) in str(info.value)
    text_file = tmp_path / "notes.onnx"
    text_file.write_text("this is not a model\n" * 10)
    with pytest.raises(ModelError, match="damaged|no ONNX graph|not a valid"):
        import_onnx(text_file)


def test_empty_graph(tmp_path):
    graph = helper.make_graph(
        [],
        "empty",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(ModelError, match="empty graph"):
        import_onnx(_save(model, tmp_path))


def test_wrong_input_name_lists_real_inputs(tmp_path):
    path = _save(conv_relu(), tmp_path)
    with pytest.raises(ModelError) as info:
        import_onnx(path, parse_input_shapes(["image=1x3x8x8"]))
    message = str(info.value)
    assert "'image'" in message and "'x'" in message and "float32[N, 3, 8, 8]" in message


def test_bad_input_shape_flags(tmp_path):
    path = _save(conv_relu(), tmp_path)
    with pytest.raises(ModelError, match="NAME=D1xD2"):
        parse_input_shapes(["x:1x3x8x8"])
    with pytest.raises(ModelError, match="twice"):
        parse_input_shapes(["x=1x3x8x8", "x=2x3x8x8"])
    with pytest.raises(ModelError, match="rank 3"):
        import_onnx(path, parse_input_shapes(["x=1x3x8"]))
    with pytest.raises(ModelError, match="fixed to 8"):
        import_onnx(path, parse_input_shapes(["x=1x3x8x9"]))


def test_symbolic_dims_listed_all_at_once(tmp_path):
    model = make_model(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", "seq", 16]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 1, 16]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 16])],
    )
    path = _save(model, tmp_path)
    with pytest.raises(ModelError) as info:
        import_onnx(path)
    message = str(info.value)
    for part in ["'a'", "dim 0 ('batch')", "dim 1 ('seq')", "'b'", "--input-shape a=NxNx16"]:
        assert part in message, message
    imported = import_onnx(path, parse_input_shapes(["a=2x5x16", "b=2x1x16"]))
    assert [s.shape for s in imported.inputs] == [(2, 5, 16), (2, 1, 16)]


@pytest.mark.parametrize("kind", ["int", "float16", "quantized"])
def test_non_float_model(tmp_path, kind):
    if kind == "int":
        model = make_model(
            [helper.make_node("Add", ["a", "b"], ["y"])],
            [
                helper.make_tensor_value_info("a", TensorProto.INT32, [4]),
                helper.make_tensor_value_info("b", TensorProto.INT32, [4]),
            ],
            [helper.make_tensor_value_info("y", TensorProto.INT32, [4])],
        )
        expected = "integer model"
    elif kind == "float16":
        model = make_model(
            [helper.make_node("Relu", ["a"], ["y"])],
            [helper.make_tensor_value_info("a", TensorProto.FLOAT16, [4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [4])],
        )
        expected = "float16"
    else:
        model = make_model(
            [
                const("scale", np.array(0.1, dtype=np.float32)),
                const("zero", np.array(0, dtype=np.uint8)),
                helper.make_node("QuantizeLinear", ["a", "scale", "zero"], ["q"]),
                helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"]),
            ],
            [helper.make_tensor_value_info("a", TensorProto.FLOAT, [4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        )
        expected = "quantized"
    path = _save(model, tmp_path)
    with pytest.raises(ModelError, match=expected) as info:
        import_onnx(path)
    assert "float32" in str(info.value)


def test_unsupported_ops_reported_all_at_once(tmp_path):
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("MyFancyOp", ["r"], ["f1"], domain="com.example", name="fancy_1"),
        helper.make_node("MyFancyOp", ["f1"], ["f2"], domain="com.example", name="fancy_2"),
        helper.make_node("Add", ["f2", "r"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    # Also a standard op that TVM has no converter for, next to the custom one.
    graph.node.insert(
        1,
        helper.make_node(
            "StringNormalizer", ["s_in"], ["s_out"], name="norm", case_change_action="LOWER"
        ),
    )
    graph.input.append(helper.make_tensor_value_info("s_in", TensorProto.STRING, [2]))
    graph.output.append(helper.make_tensor_value_info("s_out", TensorProto.STRING, [2]))
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)],
        ir_version=8,
    )
    path = _save(model, tmp_path)
    with pytest.raises(UnsupportedOperatorsError) as info:
        import_onnx(path)
    error = info.value
    assert set(error.unsupported) == {"com.example.MyFancyOp", "StringNormalizer"}
    assert error.unsupported["com.example.MyFancyOp"] == ["fancy_1", "fancy_2"]
    assert "x2" in str(error) and "norm" in str(error)


def test_shape_chain_folds_where_tvm_alone_fails(tmp_path):
    from tvm.relax.frontend.onnx import from_onnx

    model = exporter_shape_chain()
    with pytest.raises(Exception):  # noqa: B017 - any failure of TVM's importer will do
        from_onnx(model, shape_dict={"x": [1, 3, 8, 8]})

    path = _save(model, tmp_path)
    imported = import_onnx(path, parse_input_shapes(["x=1x3x8x8"]))
    assert imported.fold.shape_nodes_folded >= 2
    assert not any(n.op_type == "Shape" for n in imported.onnx_model.graph.node)
    feeds = random_inputs(imported.inputs, seed=3)
    reference = ort.InferenceSession(path).run(None, feeds)[0]
    np.testing.assert_allclose(_run_tvm(imported, feeds), reference, rtol=1e-5, atol=1e-5)


def test_old_opset_is_normalised(tmp_path):
    """Resize at opset 13 predates TVM's only Resize converter (v18): convert, then import."""
    model = make_model(
        [helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="nearest")],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 8, 8])],
        [onnx.numpy_helper.from_array(np.array([1, 1, 2, 2], dtype=np.float32), "scales")],
        opset=13,
    )
    path = _save(model, tmp_path)
    imported = import_onnx(path)
    assert imported.original_opset == 13 and imported.opset == 18
    feeds = random_inputs(imported.inputs)
    reference = ort.InferenceSession(path).run(None, feeds)[0]
    np.testing.assert_allclose(_run_tvm(imported, feeds), reference, rtol=1e-6)


def test_external_data_model_loads(tmp_path):
    model = conv_relu(batch=1)
    path = _save(
        model,
        tmp_path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert (tmp_path / "weights.bin").stat().st_size > 0
    imported = import_onnx(path)
    feeds = random_inputs(imported.inputs)
    reference = ort.InferenceSession(path).run(None, feeds)[0]
    np.testing.assert_allclose(_run_tvm(imported, feeds), reference, rtol=1e-5, atol=1e-6)

    (tmp_path / "weights.bin").unlink()
    with pytest.raises(ModelError, match="weights.bin"):
        import_onnx(path)


def test_constant_if_is_inlined(tmp_path):
    """Exporters emit `If (batch == 1)`; with shapes fixed the branch is known."""
    then_graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)],
    )
    model = make_model(
        [
            helper.make_node("Shape", ["x"], ["s"]),
            helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
            helper.make_node("Equal", ["n", "one"], ["cond"]),
            helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [
            onnx.numpy_helper.from_array(np.array(0, dtype=np.int64), "zero"),
            onnx.numpy_helper.from_array(np.array(1, dtype=np.int64), "one"),
        ],
    )
    path = _save(model, tmp_path)
    for batch in (1, 3):
        imported = import_onnx(path, {"x": (batch, 4)})
        assert not any(n.op_type == "If" for n in imported.onnx_model.graph.node)
        feeds = random_inputs(imported.inputs, seed=batch)
        reference = ort.InferenceSession(path).run(None, feeds)[0]
        np.testing.assert_allclose(_run_tvm(imported, feeds), reference)


def test_initializers_listed_as_inputs_are_not_inputs(tmp_path):
    """Old exporters list every weight in graph.input too."""
    model = conv_relu(batch=1)
    for tensor in model.graph.initializer:
        model.graph.input.append(
            helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims))
        )
    imported = import_onnx(_save(model, tmp_path))
    assert [s.name for s in imported.inputs] == ["x"]


def test_int64_inputs_keep_their_dtype(tmp_path):
    model = make_model(
        [helper.make_node("Gather", ["table", "ids"], ["y"], axis=0)],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 8])],
        [weight("table", (10, 8))],
    )
    path = _save(model, tmp_path)
    imported = import_onnx(path)
    assert imported.inputs[0].dtype == "int64"
    feeds = random_inputs(imported.inputs)
    reference = ort.InferenceSession(path).run(None, feeds)[0]
    np.testing.assert_allclose(_run_tvm(imported, feeds), reference)
