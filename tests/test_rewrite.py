"""Tests of ago_search.rewrite: every rule fires where it should, removes what it says, keeps
outputs equal (compiled with TVM's default build; floating-point reassociation allowed up to
1e-4 * max|reference| + 1e-5), and leaves the graph alone where its precondition fails.

Graphs are built with relax.BlockBuilder (exact control over the pattern) or with onnx.helper
and imported like a user's model (the patterns real exporters produce).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from make_zoo import ZOO_MODELS
from model_builders import make_model, weight
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from ago_search.build import build_default, run_executable
from ago_search.frontend import import_onnx, random_inputs
from ago_search.graph import build_opgraph
from ago_search.rewrite import (
    RULES,
    RewriteReport,
    count_ops,
    describe_rules,
    op_histogram,
    rewrite,
)

TARGET = tvm.target.Target({"kind": "llvm", "num-cores": 2})
F32 = "float32"

pytestmark = pytest.mark.filterwarnings("ignore:Field 'shape' of 'type' is required")


# ---------------------------------------------------------------------------------------------
# helpers


def _const(shape: Sequence[int], seed: int, low: float = -1.0, high: float = 1.0) -> relax.Expr:
    rng = np.random.default_rng(seed)
    return relax.const(rng.uniform(low, high, shape).astype(F32), F32)


def _module(
    inputs: dict[str, Sequence[int]], body: Callable[..., relax.Expr | Sequence[relax.Expr]]
) -> tvm.IRModule:
    """main(inputs...) whose dataflow block is what `body(bb, *params)` emits."""
    bb = relax.BlockBuilder()
    params = [relax.Var(name, relax.TensorType(list(shape), F32)) for name, shape in inputs.items()]
    with bb.function("main", params):
        with bb.dataflow():
            out = body(bb, *params)
            if isinstance(out, list | tuple):
                gv = bb.emit_output(relax.Tuple(list(out)))
            else:
                gv = bb.emit_output(out)
        bb.emit_func_output(gv)
    return bb.get()


def _inputs(mod: tvm.IRModule, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for p in mod["main"].params:
        shape = [int(d) for d in p.ty.shape.values]
        arrays.append(rng.uniform(-1.0, 1.0, shape).astype(str(p.ty.dtype)))
    return arrays


def _run(mod: tvm.IRModule, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    return run_executable(build_default(mod, TARGET), inputs)


def _assert_close(actual: Sequence[np.ndarray], reference: Sequence[np.ndarray]) -> None:
    assert len(actual) == len(reference)
    for a, r in zip(actual, reference, strict=True):
        assert a.shape == r.shape and a.dtype == r.dtype
        err = float(np.max(np.abs(a.astype(np.float64) - r))) if r.size else 0.0
        bound = 1e-4 * float(np.max(np.abs(r))) + 1e-5
        assert err <= bound, f"max abs error {err:.3g} > {bound:.3g}"


def _check_fires(
    mod: tvm.IRModule,
    rule: str,
    rules: Sequence[str] | None = None,
    min_removed: int = 1,
) -> tuple[tvm.IRModule, RewriteReport]:
    """Rewrite with `rules` (default: only `rule`); `rule` fired and removed >= min_removed
    operators, the count went down by at least that, and the outputs are unchanged."""
    new, report = rewrite(mod, [rule] if rules is None else rules)
    assert report.fired(rule) >= 1, report
    assert report.removed_by(rule) >= min_removed, report
    assert count_ops(new) <= count_ops(mod) - min_removed
    assert report.ops_after == count_ops(new)
    inputs = _inputs(mod)
    _assert_close(_run(new, inputs), _run(mod, inputs))
    return new, report


def _check_silent(mod: tvm.IRModule, rule: str) -> None:
    new, report = rewrite(mod, [rule])
    assert report.fired(rule) == 0, report
    assert count_ops(new) == count_ops(mod)


def _ops(mod: tvm.IRModule) -> dict[str, int]:
    return op_histogram(mod)


def _conv(bb: relax.BlockBuilder, x: relax.Expr, cout: int, cin: int, seed: int) -> relax.Var:
    w = _const((cout, cin, 3, 3), seed, -0.5, 0.5)
    return bb.emit(relax.op.nn.conv2d(x, w, padding=[1, 1]))


def _save(model: onnx.ModelProto, tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def _vi(name: str, shape: Sequence[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _ort_check(path: Path, shapes: dict[str, tuple[int, ...]], rules=None) -> RewriteReport:
    """Import, rewrite, compile; outputs equal ONNX Runtime's on the same inputs."""
    imported = import_onnx(path, shapes)
    new, report = rewrite(imported.mod, rules)
    feeds = random_inputs(imported.inputs, seed=0)
    args = [feeds[s.name] for s in imported.inputs]
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
    _assert_close(_run(new, args), reference)
    return report


# ---------------------------------------------------------------------------------------------
# the registry and the report


def test_registry_documents_every_rule():
    assert len(RULES) >= 8
    properties = set()
    for name, rule in RULES.items():
        assert rule.name == name
        assert rule.property and rule.formula and len(rule.precondition) > 20
        properties.add(rule.property)
    assert {
        "constant folding",
        "identity",
        "associativity",
        "distributivity",
        "linearity",
    } <= properties
    described = describe_rules()
    assert [d["name"] for d in described] == list(RULES)
    json.dumps(described)


def test_unknown_rule_is_an_error():
    mod = _module({"x": (4,)}, lambda bb, x: bb.emit(relax.op.nn.relu(x)))
    with pytest.raises(KeyError, match="no_such_rule"):
        rewrite(mod, ["no_such_rule"])


def test_report_round_trips_and_input_is_not_modified():
    def body(bb, x):
        a = bb.emit(relax.op.add(x, _const((8,), 1)))
        return bb.emit(relax.op.add(a, _const((8,), 2)))

    mod = _module({"x": (2, 8)}, body)
    before = mod["main"].script()
    new, report = rewrite(mod)
    assert mod["main"].script() == before
    assert report.converged and report.rounds >= 2  # the last round found nothing
    assert report.ops_before == 2 and report.ops_after == 1 == count_ops(new)
    assert sum(s.ops_removed for s in report.rules) == report.ops_removed
    data = json.loads(json.dumps(report.to_json()))
    assert RewriteReport.from_json(data) == report


def test_disabled_rules_do_not_run():
    def body(bb, x):
        return bb.emit(relax.op.multiply(x, relax.const(1.0, F32)))

    mod = _module({"x": (4,)}, body)
    new, report = rewrite(mod, [])
    assert report.rules == () and count_ops(new) == 1
    new, report = rewrite(mod, [r for r in RULES if r != "eliminate_identity"])
    assert count_ops(new) == 1
    new, report = rewrite(mod)
    assert report.removed_by("eliminate_identity") == 1 and count_ops(new) == 0


# ---------------------------------------------------------------------------------------------
# fold_constants


def test_fold_constants_folds_weight_preprocessing():
    def body(bb, x):
        # the bias reshape and Gemm weight transpose exporters emit, plus a NaN guard
        bias = bb.emit(relax.op.reshape(_const((16,), 3), [1, 16]))
        w_t = bb.emit(relax.op.permute_dims(_const((16, 8), 4), [1, 0]))
        guard = bb.emit(relax.op.isnan(relax.const(0.5, F32)))
        lo = bb.emit(relax.op.where(guard, relax.const(-math.inf, F32), relax.const(0.5, F32)))
        y = bb.emit(relax.op.matmul(x, w_t))
        y = bb.emit(relax.op.add(y, bias))
        return bb.emit(relax.op.maximum(y, lo))

    mod = _module({"x": (2, 8)}, body)
    new, report = _check_fires(mod, "fold_constants", min_removed=4)
    assert _ops(new) == {"relax.add": 1, "relax.matmul": 1, "relax.maximum": 1}


# ---------------------------------------------------------------------------------------------
# eliminate_identity


def test_eliminate_identity_removes_no_ops():
    def body(bb, x):
        y = bb.emit(relax.op.add(x, relax.const(np.zeros((8,), F32))))
        y = bb.emit(relax.op.multiply(relax.const(1.0, F32), y))
        y = bb.emit(relax.op.divide(y, relax.const(1.0, F32)))
        y = bb.emit(relax.op.permute_dims(y, [0, 1]))
        y = bb.emit(relax.op.reshape(y, [2, 8]))
        y = bb.emit(relax.op.astype(y, F32))
        y = bb.emit(relax.op.concat([y], axis=0))
        y = bb.emit(relax.op.strided_slice(y, [1], [0], [8]))
        y = bb.emit(relax.TupleGetItem(bb.emit(relax.op.nn.dropout(y, 0.1)), 0))
        y = bb.emit(relax.op.nn.relu(y))
        y = bb.emit(relax.op.nn.relu(y))
        return bb.emit(relax.op.subtract(y, relax.const(0.0, F32)))

    mod = _module({"x": (2, 8)}, body)
    new, _ = _check_fires(mod, "eliminate_identity", min_removed=11)
    assert _ops(new) == {"relax.nn.relu": 1}


def test_eliminate_identity_keeps_a_broadcasting_zero():
    # x + zeros((3, 8)) turns a (1, 8) tensor into (3, 8): not an identity
    def body(bb, x):
        return bb.emit(relax.op.add(x, relax.const(np.zeros((3, 8), F32))))

    _check_silent(_module({"x": (1, 8)}, body), "eliminate_identity")


# ---------------------------------------------------------------------------------------------
# clip_from_min_max


def test_clip_from_min_max_high_level():
    def body(bb, x):
        y = bb.emit(relax.op.maximum(x, relax.const(-0.25, F32)))
        return bb.emit(relax.op.minimum(y, relax.const(0.5, F32)))

    new, _ = _check_fires(_module({"x": (4, 8)}, body), "clip_from_min_max")
    assert _ops(new) == {"relax.clip": 1}


def test_clip_from_min_max_on_onnx_clip(tmp_path):
    """ONNX Clip(min, max inputs) as TVM imports it: NaN guards + call_tir(maximum/minimum)."""
    model = make_model(
        [
            helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Clip", ["c", "lo", "hi"], ["y"]),
        ],
        [_vi("x", (1, 3, 8, 8))],
        [_vi("y", (1, 4, 8, 8))],
        [
            weight("W", (4, 3, 3, 3)),
            weight("B", (4,), 1),
            numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
            numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
        ],
    )
    path = _save(model, tmp_path, "clip")
    imported = import_onnx(path, {"x": (1, 3, 8, 8)})
    assert _ops(imported.mod).get("call_tir:maximum") == 1
    report = _ort_check(path, {"x": (1, 3, 8, 8)})
    assert report.fired("fold_constants") >= 4  # isnan, where (x2), reshape of the bias
    assert report.removed_by("clip_from_min_max") == 1
    new, _ = rewrite(imported.mod)
    assert _ops(new) == {"relax.add": 1, "relax.clip": 1, "relax.nn.conv2d": 1}


def test_clip_from_min_max_needs_ordered_bounds():
    # min(max(x, 1), -1) is -1 everywhere; clip(x, 1, -1) would be 1
    def body(bb, x):
        y = bb.emit(relax.op.maximum(x, relax.const(1.0, F32)))
        return bb.emit(relax.op.minimum(y, relax.const(-1.0, F32)))

    _check_silent(_module({"x": (4,)}, body), "clip_from_min_max")


# ---------------------------------------------------------------------------------------------
# combine_layout_ops


def test_combine_layout_ops():
    def body(bb, x):
        a = bb.emit(relax.op.permute_dims(x, [0, 2, 1, 3]))
        a = bb.emit(relax.op.permute_dims(a, [0, 2, 1, 3]))  # cancels the first
        b = bb.emit(relax.op.permute_dims(a, [1, 0, 2, 3]))
        b = bb.emit(relax.op.permute_dims(b, [0, 1, 3, 2]))  # composes into one
        c = bb.emit(relax.op.reshape(b, [3, 2, 20]))
        c = bb.emit(relax.op.reshape(c, [6, 20]))  # one reshape
        d = bb.emit(relax.op.strided_slice(x, [0], [1], [2]))
        d = bb.emit(relax.op.squeeze(d, [0]))  # take(x, 1, axis=0)
        return c, d

    new, _ = _check_fires(_module({"x": (2, 3, 4, 5)}, body), "combine_layout_ops", min_removed=5)
    assert _ops(new) == {"relax.permute_dims": 1, "relax.reshape": 1, "relax.take": 1}


def test_combine_layout_ops_keeps_a_shared_transpose():
    # the inner permute is read twice: composing would compute two transposes instead of one
    def body(bb, x):
        a = bb.emit(relax.op.permute_dims(x, [1, 0, 2]))
        b = bb.emit(relax.op.permute_dims(a, [0, 2, 1]))
        return a, b

    _check_silent(_module({"x": (2, 3, 4)}, body), "combine_layout_ops")


# ---------------------------------------------------------------------------------------------
# recognize_layer_norm (the decomposed LayerNorm of legacy exporters, as in bert_tiny)


def _decomposed_layer_norm(extra_reader: bool = False) -> onnx.ModelProto:
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[-1]),
        helper.make_node("Sub", ["x", "m"], ["d"]),
        helper.make_node("Pow", ["d", "two"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["v"], axes=[-1]),
        helper.make_node("Add", ["v", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["s"]),
        helper.make_node("Div", ["d", "s"], ["n"]),
        helper.make_node("Mul", ["n", "gamma"], ["g"]),
        helper.make_node("Add", ["g", "beta"], ["y"]),
    ]
    outputs = [_vi("y", (2, 5, 16))]
    if extra_reader:
        nodes.append(helper.make_node("Relu", ["d"], ["r"]))
        outputs.append(_vi("r", (2, 5, 16)))
    return make_model(
        nodes,
        [_vi("x", (2, 5, 16))],
        outputs,
        [
            numpy_helper.from_array(np.array(2.0, np.float32), "two"),
            numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
            weight("gamma", (16,), 3),
            weight("beta", (16,), 4),
        ],
        opset=13,
    )


def test_recognize_layer_norm(tmp_path):
    path = _save(_decomposed_layer_norm(), tmp_path, "ln")
    imported = import_onnx(path, {"x": (2, 5, 16)})
    new, _ = _check_fires(imported.mod, "recognize_layer_norm", min_removed=6)
    assert _ops(new).get("relax.nn.layer_norm") == 1
    # with the rest of the rules, gamma and beta move into the layer_norm: one op in all
    report = _ort_check(path, {"x": (2, 5, 16)})
    assert report.ops_after == 1
    assert report.removed_by("fold_scale_into_linear") == 1
    assert report.removed_by("combine_constant_chain") == 1


def test_recognize_layer_norm_needs_private_intermediates(tmp_path):
    path = _save(_decomposed_layer_norm(extra_reader=True), tmp_path, "ln_shared")
    _check_silent(import_onnx(path, {"x": (2, 5, 16)}).mod, "recognize_layer_norm")


# ---------------------------------------------------------------------------------------------
# recognize_gelu


def test_recognize_gelu(tmp_path):
    # the erf form torch's legacy exporter writes for nn.GELU (bert_tiny)
    model = make_model(
        [
            helper.make_node("Div", ["x", "sqrt2"], ["u"]),
            helper.make_node("Erf", ["u"], ["e"]),
            helper.make_node("Add", ["e", "one"], ["e1"]),
            helper.make_node("Mul", ["x", "e1"], ["p"]),
            helper.make_node("Mul", ["p", "half"], ["y"]),
        ],
        [_vi("x", (2, 32))],
        [_vi("y", (2, 32))],
        [
            numpy_helper.from_array(np.array(math.sqrt(2.0), np.float32), "sqrt2"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        ],
    )
    path = _save(model, tmp_path, "gelu")
    new, _ = _check_fires(import_onnx(path, {"x": (2, 32)}).mod, "recognize_gelu", min_removed=4)
    assert _ops(new) == {"relax.nn.gelu": 1}
    _ort_check(path, {"x": (2, 32)})


def test_recognize_gelu_needs_the_same_x():
    # x * (erf(z / sqrt 2) + 1) * 0.5 with z != x is no GELU
    def body(bb, x, z):
        u = bb.emit(relax.op.multiply(z, relax.const(1 / math.sqrt(2.0), F32)))
        e = bb.emit(relax.op.add(bb.emit(relax.op.erf(u)), relax.const(1.0, F32)))
        p = bb.emit(relax.op.multiply(x, e))
        return bb.emit(relax.op.multiply(p, relax.const(0.5, F32)))

    _check_silent(_module({"x": (2, 8), "z": (2, 8)}, body), "recognize_gelu")


# ---------------------------------------------------------------------------------------------
# strength_reduction (cheaper operators; removes nothing by itself)


def test_strength_reduction():
    def body(bb, x):
        y = bb.emit(relax.op.divide(x, relax.const(8.0, F32)))
        return bb.emit(relax.op.power(y, relax.const(2.0, F32)))

    mod = _module({"x": (4, 8)}, body)
    new, report = rewrite(mod, ["strength_reduction"])
    assert report.fired("strength_reduction") == 2
    assert report.removed_by("strength_reduction") == 0
    assert _ops(new) == {"relax.multiply": 2}
    inputs = _inputs(mod)
    _assert_close(_run(new, inputs), _run(mod, inputs))

    # x / c then * c2: only after strength reduction is it a multiply chain
    def chain(bb, x):
        y = bb.emit(relax.op.divide(x, relax.const(4.0, F32)))
        return bb.emit(relax.op.multiply(y, relax.const(3.0, F32)))

    _check_fires(
        _module({"x": (4, 8)}, chain),
        "combine_constant_chain",
        ["strength_reduction", "combine_constant_chain"],
    )


def test_strength_reduction_keeps_division_by_zero():
    def body(bb, x):
        return bb.emit(relax.op.divide(x, relax.const(np.array([1.0, 0.0], F32))))

    _check_silent(_module({"x": (3, 2)}, body), "strength_reduction")


# ---------------------------------------------------------------------------------------------
# fold_batch_norm


def _bn_params(channels: int, seed: int) -> list[relax.Expr]:
    rng = np.random.default_rng(seed)
    gamma = rng.uniform(0.5, 1.5, channels).astype(F32)
    beta = rng.uniform(-0.5, 0.5, channels).astype(F32)
    mean = rng.uniform(-0.5, 0.5, channels).astype(F32)
    var = rng.uniform(0.5, 2.0, channels).astype(F32)
    return [relax.const(v, F32) for v in (gamma, beta, mean, var)]


def _conv_bn(share_conv: bool = False, training: bool = False) -> tvm.IRModule:
    def body(bb, x):
        c = _conv(bb, x, 8, 3, 5)
        bn = bb.emit(relax.op.nn.batch_norm(c, *_bn_params(8, 6), axis=1, training=training))
        y = bb.emit(relax.op.nn.relu(bb.emit(relax.TupleGetItem(bn, 0))))
        if share_conv:
            return y, bb.emit(relax.op.nn.relu(c))
        return y

    return _module({"x": (1, 3, 8, 8)}, body)


def test_fold_batch_norm_into_conv():
    # a conv without bias: batch_norm becomes the bias add (Relax's conv2d has no bias
    # operand), so the op count stays; the work of the normalization is gone
    new, _ = _check_fires(_conv_bn(), "fold_batch_norm", min_removed=0)
    assert _ops(new) == {"relax.add": 1, "relax.nn.conv2d": 1, "relax.nn.relu": 1}


def test_fold_batch_norm_into_conv_transpose_with_bias():
    # dbnet's head: conv_transpose (IOHW weights) + bias + BatchNormalization
    def body(bb, x):
        w = _const((8, 4, 2, 2), 7, -0.5, 0.5)
        c = bb.emit(relax.op.nn.conv2d_transpose(x, w, strides=[2, 2]))
        c = bb.emit(relax.op.add(c, _const((1, 4, 1, 1), 8)))
        bn = bb.emit(relax.op.nn.batch_norm(c, *_bn_params(4, 9), axis=1, training=False))
        return bb.emit(relax.TupleGetItem(bn, 0))

    new, _ = _check_fires(_module({"x": (1, 8, 6, 6)}, body), "fold_batch_norm")
    assert _ops(new) == {"relax.add": 1, "relax.nn.conv2d_transpose": 1}


def test_fold_batch_norm_onnx(tmp_path):
    model = make_model(
        [
            helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["y"]),
        ],
        [_vi("x", (1, 3, 8, 8))],
        [_vi("y", (1, 4, 8, 8))],
        [
            weight("W", (4, 3, 3, 3)),
            weight("B", (4,), 5),
            numpy_helper.from_array(np.linspace(0.5, 1.5, 4).astype(np.float32), "g"),
            weight("b", (4,), 1),
            weight("m", (4,), 2),
            numpy_helper.from_array(np.linspace(0.5, 2.0, 4).astype(np.float32), "v"),
        ],
    )
    # with a conv bias (exported without BN folding): the BN shift joins the bias
    report = _ort_check(_save(model, tmp_path, "conv_bn"), {"x": (1, 3, 8, 8)})
    assert report.removed_by("fold_batch_norm") == 1
    assert report.ops_after == 2  # conv2d + add


def test_fold_batch_norm_not_when_the_conv_has_another_reader():
    _check_silent(_conv_bn(share_conv=True), "fold_batch_norm")


def test_fold_batch_norm_not_in_training_mode():
    _check_silent(_conv_bn(training=True), "fold_batch_norm")


# ---------------------------------------------------------------------------------------------
# fold_scale_into_linear


def test_fold_scale_into_conv_and_bias():
    # the decomposed BN form: conv -> add bias -> multiply per-channel -> add per-channel
    def body(bb, x):
        c = _conv(bb, x, 8, 3, 10)
        c = bb.emit(relax.op.add(c, _const((8, 1, 1), 11)))
        c = bb.emit(relax.op.multiply(c, _const((1, 8, 1, 1), 12, 0.5, 1.5)))
        return bb.emit(relax.op.add(c, _const((8, 1, 1), 13)))

    mod = _module({"x": (1, 3, 8, 8)}, body)
    new, report = _check_fires(
        mod, "fold_scale_into_linear", ["fold_scale_into_linear", "combine_constant_chain"]
    )
    assert report.removed_by("combine_constant_chain") == 1
    assert _ops(new) == {"relax.add": 1, "relax.nn.conv2d": 1}


def test_fold_scale_into_matmul_weights():
    def body(bb, x):
        y = bb.emit(relax.op.matmul(x, _const((16, 8), 14)))
        return bb.emit(relax.op.multiply(y, _const((8,), 15)))

    new, _ = _check_fires(_module({"x": (2, 4, 16)}, body), "fold_scale_into_linear")
    assert _ops(new) == {"relax.matmul": 1}


def test_fold_scalar_through_attention_layout():
    # bert_tiny's attention: (q @ k^T) / 8 with q = permute(reshape(x @ Wq + bq))
    def body(bb, x, k):
        q = bb.emit(relax.op.matmul(x, _const((16, 16), 16)))
        q = bb.emit(relax.op.add(_const((16,), 17), q))
        q = bb.emit(relax.op.reshape(q, [1, 6, 2, 8]))
        q = bb.emit(relax.op.permute_dims(q, [0, 2, 1, 3]))
        s = bb.emit(relax.op.matmul(q, k))
        return bb.emit(relax.op.multiply(s, relax.const(0.125, F32)))

    new, _ = _check_fires(
        _module({"x": (1, 6, 16), "k": (1, 2, 8, 6)}, body), "fold_scale_into_linear"
    )
    assert "relax.multiply" not in _ops(new)


def test_fold_scale_not_along_a_spatial_axis():
    # a scale that varies over W is not a per-output-channel scale of the weights
    def body(bb, x):
        c = _conv(bb, x, 4, 3, 18)
        return bb.emit(relax.op.multiply(c, _const((1, 1, 1, 8), 19)))

    _check_silent(_module({"x": (1, 3, 8, 8)}, body), "fold_scale_into_linear")


# ---------------------------------------------------------------------------------------------
# combine_constant_chain


def test_combine_constant_chain():
    def body(bb, x):
        a = bb.emit(relax.op.add(x, _const((8,), 20)))
        a = bb.emit(relax.op.subtract(a, _const((1, 8), 21)))
        a = bb.emit(relax.op.add(_const((8,), 22), a))
        m = bb.emit(relax.op.multiply(a, _const((8,), 23)))
        m = bb.emit(relax.op.divide(m, relax.const(4.0, F32)))
        m = bb.emit(relax.op.add(m, _const((8,), 24)))
        return bb.emit(relax.op.multiply(m, relax.const(3.0, F32)))  # (x*c1 + c2) * c3

    new, _ = _check_fires(_module({"x": (2, 8)}, body), "combine_constant_chain", min_removed=4)
    assert _ops(new) == {"relax.add": 2, "relax.multiply": 1}


def test_combine_constant_chain_keeps_a_shared_intermediate():
    def body(bb, x):
        a = bb.emit(relax.op.add(x, _const((8,), 25)))
        b = bb.emit(relax.op.add(a, _const((8,), 26)))
        return a, b

    _check_silent(_module({"x": (2, 8)}, body), "combine_constant_chain")


def test_combine_constant_chain_does_not_grow_constants():
    # (x + c1[8,1]) + c2[1,8] would need a combined [8, 8] constant
    def body(bb, x):
        a = bb.emit(relax.op.add(x, _const((8, 1), 27)))
        return bb.emit(relax.op.add(a, _const((1, 8), 28)))

    _check_silent(_module({"x": (8, 8)}, body), "combine_constant_chain")


# ---------------------------------------------------------------------------------------------
# distribute_common_factor


def test_distribute_common_factor_elementwise():
    def body(bb, a, b, c):
        p = bb.emit(relax.op.multiply(a, b))
        q = bb.emit(relax.op.multiply(c, a))  # a on the other side: commutativity
        return bb.emit(relax.op.add(p, q))

    new, _ = _check_fires(
        _module({"a": (4, 8), "b": (4, 8), "c": (8,)}, body), "distribute_common_factor"
    )
    assert _ops(new) == {"relax.add": 1, "relax.multiply": 1}


def test_distribute_common_factor_matmul_and_conv():
    def body(bb, x, img):
        p = bb.emit(relax.op.matmul(x, _const((16, 8), 29)))
        q = bb.emit(relax.op.matmul(x, _const((16, 8), 30)))
        y = bb.emit(relax.op.add(p, q))
        c1 = _conv(bb, img, 4, 3, 31)
        c2 = _conv(bb, img, 4, 3, 32)
        z = bb.emit(relax.op.subtract(c1, c2))
        return y, z

    new, _ = _check_fires(
        _module({"x": (2, 16), "img": (1, 3, 6, 6)}, body),
        "distribute_common_factor",
        min_removed=4,
    )
    assert _ops(new) == {"relax.matmul": 1, "relax.nn.conv2d": 1}


def test_distribute_common_factor_needs_a_common_factor():
    def body(bb, a, b, c, d):
        p = bb.emit(relax.op.multiply(a, b))
        q = bb.emit(relax.op.multiply(c, d))
        return bb.emit(relax.op.add(p, q))

    shapes = {"a": (4,), "b": (4,), "c": (4,), "d": (4,)}
    _check_silent(_module(shapes, body), "distribute_common_factor")


# ---------------------------------------------------------------------------------------------
# property: any chain of elementwise ops with constants keeps its value


_STEP = st.tuples(
    st.sampled_from(["add", "subtract", "multiply", "divide"]),
    st.sampled_from(["scalar", "row", "zero", "one"]),  # the constant's shape / value
    st.booleans(),  # constant on the left
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(_STEP, min_size=2, max_size=6), seed=st.integers(0, 1000))
def test_elementwise_chains_keep_their_value(steps, seed):
    rng = np.random.default_rng(seed)

    def constant(kind: str) -> relax.Expr:
        if kind == "zero":
            return relax.const(0.0, F32)
        if kind == "one":
            return relax.const(1.0, F32)
        shape = () if kind == "scalar" else (6,)
        # away from zero, so that divisions stay well conditioned
        magnitude = rng.uniform(0.5, 2.0, shape) * rng.choice([-1.0, 1.0], shape)
        return relax.const(np.asarray(magnitude, F32), F32)

    def body(bb, x):
        y = x
        for op, kind, left in steps:
            c = constant(kind)
            if op == "divide" and left:
                left = False  # c / y would divide by values near zero
            if op == "divide" and kind == "zero":
                kind, c = "one", constant("one")
            args = (c, y) if left else (y, c)
            y = bb.emit(getattr(relax.op, op)(*args))
        return y

    mod = _module({"x": (3, 6)}, body)
    new, report = rewrite(mod)
    assert report.converged
    assert count_ops(new) <= count_ops(mod)
    inputs = _inputs(mod, seed)
    _assert_close(_run(new, inputs), _run(mod, inputs))


# ---------------------------------------------------------------------------------------------
# the zoo


def test_zoo_rules_that_fire(zoo):
    """Which rules find work on the zoo (cheap: no compilation). The torch exporters fold BN
    into Conv already; dbnet's BN after a ConvTranspose is the one left."""
    fired: dict[str, int] = {}
    for name, entry in zoo.items():
        imported = import_onnx(entry["path"], {k: tuple(v) for k, v in entry["inputs"].items()})
        new, report = rewrite(imported.mod)
        assert report.converged, name
        assert report.ops_after <= report.ops_before, name
        assert len(build_opgraph(new)) == report.ops_after, name
        _, second = rewrite(new)  # a fixpoint: nothing left to do
        assert second.ops_removed == 0 and not any(s.fired for s in second.rules), name
        for stats in report.rules:
            fired[stats.rule] = fired.get(stats.rule, 0) + stats.fired
    for rule in (
        "fold_constants",
        "clip_from_min_max",
        "combine_layout_ops",
        "recognize_layer_norm",
        "recognize_gelu",
        "fold_batch_norm",
        "fold_scale_into_linear",
        "eliminate_identity",
    ):
        assert fired[rule] > 0, rule


# The three largest zoo models take 7-30 s each here on 2 cores: `slow`, so that
# `-m "not slow"` keeps the small ones and CI runs them all.
ZOO_CASES = [
    pytest.param(name, marks=pytest.mark.slow)
    if name in {"mobilenetv2", "resnet18", "dbnet"}
    else name
    for name in ZOO_MODELS
]


@pytest.mark.parametrize("name", ZOO_CASES)
def test_zoo_outputs_equal_onnxruntime(zoo, name):
    entry = zoo[name]
    shapes = {k: tuple(v) for k, v in entry["inputs"].items()}
    report = _ort_check(Path(entry["path"]), shapes)
    assert report.ops_after <= report.ops_before
