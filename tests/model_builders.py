"""Small ONNX models made with onnx.helper, for tests (no torch, no files from elsewhere)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# onnxruntime reads IR versions up to 10 on every release we support; onnx.helper would
# otherwise stamp its newest IR version.
IR_VERSION = 8


def const(name: str, value) -> onnx.NodeProto:
    return helper.make_node(
        "Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name + "_v")
    )


def make_model(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers))
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=IR_VERSION
    )
    onnx.checker.check_model(model)
    return model


def weight(name: str, shape, seed=0) -> onnx.TensorProto:
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.uniform(-0.5, 0.5, shape).astype(np.float32), name)


def conv(name, x, cin, cout, k, *, stride=1, pad=0, group=1, seed=0):
    """A Conv node `name` reading `x` with its weight and bias initializers: (node, [w, b]).
    `pad`: one padding for every side, or (top, left, bottom, right)."""
    pads = [pad] * 4 if isinstance(pad, int) else list(pad)
    return (
        helper.make_node(
            "Conv",
            [x, f"{name}_w", f"{name}_b"],
            [name],
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=pads,
            group=group,
        ),
        [weight(f"{name}_w", (cout, cin // group, k, k), seed), weight(f"{name}_b", (cout,), seed)],
    )


def conv_relu(batch="N", channels=3, size=8, opset=17) -> onnx.ModelProto:
    """x -> Conv 3x3 -> Relu, batch dim symbolic by default."""
    return make_model(
        [
            helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, channels, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 4, size, size])],
        [weight("W", (4, channels, 3, 3)), weight("B", (4,), 1)],
        opset=opset,
    )


def exporter_shape_chain() -> onnx.ModelProto:
    """The shape arithmetic exporters emit for `F.interpolate(x, scale_factor=2)` with dynamic
    H, W: Shape -> Gather -> Cast -> Mul -> Floor -> Cast -> Unsqueeze -> Concat -> Resize
    sizes, plus a Shape -> Slice -> Concat -> Reshape flatten. TVM's importer alone fails on it.
    """
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Shape", ["c"], ["s"]),
        const("i2", np.array(2, dtype=np.int64)),
        const("ax", np.array([0], dtype=np.int64)),
        helper.make_node("Gather", ["s", "i2"], ["h"], axis=0),
        helper.make_node("Cast", ["h"], ["hf"], to=TensorProto.FLOAT),
        const("two", np.array(2.0, dtype=np.float32)),
        helper.make_node("Mul", ["hf", "two"], ["h2"]),
        helper.make_node("Floor", ["h2"], ["h2f"]),
        helper.make_node("Cast", ["h2f"], ["h2i"], to=TensorProto.INT64),
        helper.make_node("Unsqueeze", ["h2i", "ax"], ["hu"]),
        helper.make_node("Concat", ["hu", "hu"], ["hw"], axis=0),
        helper.make_node("Slice", ["s", "z0", "z2"], ["nc"]),
        helper.make_node("Concat", ["nc", "hw"], ["sizes"], axis=0),
        helper.make_node("Resize", ["c", "", "", "sizes"], ["r"], mode="nearest"),
        helper.make_node("Shape", ["r"], ["rs"]),
        helper.make_node("Slice", ["rs", "z0", "z1"], ["n"]),
        const("m1", np.array([-1], dtype=np.int64)),
        helper.make_node("Concat", ["n", "m1"], ["flat"], axis=0),
        helper.make_node("Reshape", ["r", "flat"], ["y"]),
    ]
    inits = [
        weight("W", (4, 3, 3, 3)),
        numpy_helper.from_array(np.array([0], dtype=np.int64), "z0"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "z1"),
        numpy_helper.from_array(np.array([2], dtype=np.int64), "z2"),
    ]
    return make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", "F"])],
        inits,
    )


def conv_matmul() -> onnx.ModelProto:
    """x[1,3,8,8] -> Conv 3x3 + bias -> Relu -> Flatten -> MatMul + bias: three kernels."""
    return make_model(
        [
            helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("Flatten", ["r"], ["f"]),
            helper.make_node("MatMul", ["f", "M"], ["m"]),
            helper.make_node("Add", ["m", "C"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [weight("W", (8, 3, 3, 3)), weight("B", (8,), 1), weight("M", (512, 10), 2)]
        + [weight("C", (10,), 3)],
    )


def residual_block() -> onnx.ModelProto:
    """x -> conv 3x3 -> relu -> conv 3x3 -> add x -> relu: a residual block, two convs to fuse
    or not (8 channels, 16x16)."""
    return make_model(
        [
            helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], pads=[1, 1, 1, 1]),
            helper.make_node("Add", ["c2", "x"], ["s"]),
            helper.make_node("Relu", ["s"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 16, 16])],
        [
            weight("W1", (8, 8, 3, 3)),
            weight("B1", (8,), 1),
            weight("W2", (8, 8, 3, 3), 2),
            weight("B2", (8,), 3),
        ],
    )


def two_conv_sizes() -> onnx.ModelProto:
    """x -> conv 8->16 3x3 -> relu -> conv 16->16 3x3 -> relu: one conv at two sizes (16x16)."""
    return make_model(
        [
            helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c2"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 16, 16])],
        [
            weight("W1", (16, 8, 3, 3)),
            weight("B1", (16,), 1),
            weight("W2", (16, 16, 3, 3), 2),
            weight("B2", (16,), 3),
        ],
    )
