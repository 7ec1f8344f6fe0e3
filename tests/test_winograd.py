"""Winograd convs (F(2x2, 3x3) and F(4x4, 3x3)): the filter transform, which convs it applies to,
and models whose 3x3 convs it computes equal ONNX Runtime in every layout and grouping."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from model_builders import conv as _conv
from model_builders import make_model
from onnx import TensorProto, helper
from tvm import relax

from ago_search.build import compile_plan, run_executable
from ago_search.frontend import import_onnx, random_inputs
from ago_search.graph import build_opgraph, legalize, tvm_default_groups
from ago_search.graph.winograd import TILES, transform_weight
from ago_search.layout import layout_choices
from ago_search.measure.compare import compare_outputs
from ago_search.plan import Plan, apply_plan

TARGET = tvm.target.Target({"kind": "llvm", "num-cores": 2})

pytestmark = pytest.mark.filterwarnings("ignore:Field 'shape' of 'type' is required")


def residual_model(path, size=13) -> str:
    """x (1, 16, size, size) -> a residual block of two 3x3 convs (odd size: partial tiles),
    an asymmetric-padded 3x3 conv, a strided one and a depthwise one (neither Winograd's)."""
    nodes, inits = [], []

    def add(node_and_weights):
        node, ws = node_and_weights
        nodes.append(node)
        inits.extend(ws)

    add(_conv("c1", "x", 16, 32, 3, pad=1, seed=1))
    nodes.append(helper.make_node("Relu", ["c1"], ["r1"]))
    add(_conv("c2", "r1", 32, 32, 3, pad=1, seed=2))
    nodes.append(helper.make_node("Relu", ["c2"], ["r2"]))
    add(_conv("c3", "r2", 32, 32, 3, pad=1, seed=3))
    nodes.append(helper.make_node("Add", ["c3", "r1"], ["res"]))
    nodes.append(helper.make_node("Relu", ["res"], ["r3"]))
    add(_conv("c4", "r3", 32, 16, 3, pad=(0, 1, 2, 1), seed=4))  # asymmetric padding
    add(_conv("c5", "c4", 16, 16, 3, stride=2, pad=1, seed=5))  # strided: direct
    add(_conv("dw", "c5", 16, 16, 3, group=16, pad=1, seed=6))  # depthwise: direct
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, size, size])],
        [helper.make_tensor_value_info("dw", TensorProto.FLOAT, [1, 16, 7, 7])],
        inits,
    )
    file = path / "residual.onnx"
    file.write_bytes(model.SerializeToString())
    return str(file)


@pytest.fixture(scope="module")
def residual(tmp_path_factory):
    path = residual_model(tmp_path_factory.mktemp("winograd"))
    imported = import_onnx(path)
    feeds = random_inputs(imported.inputs, seed=3)
    reference = ort.InferenceSession(path).run(None, feeds)
    return imported, feeds, reference


def _winograd_kernels(mod: tvm.IRModule) -> list[str]:
    return [gv.name_hint for gv in mod.get_global_vars() if "winograd" in gv.name_hint]


def _winograd_calls(mod: tvm.IRModule) -> int:
    """call_tir bindings of `main` that call a Winograd kernel."""
    calls = []

    def visit(expr):
        if (
            isinstance(expr, relax.Call)
            and isinstance(expr.op, tvm.ir.Op)
            and expr.op.name == "relax.call_tir"
            and "winograd" in expr.args[0].name_hint
        ):
            calls.append(expr)

    relax.analysis.post_order_visit(mod["main"], visit)
    return len(calls)


def test_the_filter_transform_gives_the_direct_conv():
    """Y = A^T [U * (B^T d B)] A with U = transform_weight(g) equals the 3x3 correlation of a
    tile, for both tiles (numpy, float64)."""
    from ago_search.graph.winograd import _matrices

    rng = np.random.default_rng(0)
    g = rng.standard_normal((1, 1, 3, 3))
    for tile in TILES:
        a, b, _ = _matrices(tile)
        alpha = tile + 2
        d = rng.standard_normal((alpha, alpha))
        u = transform_weight(g, tile).reshape(alpha, alpha)
        y = a.T @ (u * (b.T @ d @ b)) @ a
        direct = np.array(
            [[np.sum(d[i : i + 3, j : j + 3] * g[0, 0]) for j in range(tile)] for i in range(tile)]
        )
        np.testing.assert_allclose(y, direct, rtol=1e-9, atol=1e-9)


def test_only_the_convs_winograd_computes_are_legalized_as_winograd(residual):
    imported, _, _ = residual
    plain = legalize(imported.mod, TARGET)
    assert not _winograd_kernels(plain)
    winograd = legalize(imported.mod, TARGET, winograd=4)
    # c1, c2, c3, c4 (the strided conv and the depthwise one stay direct); c2 and c3 share one
    assert _winograd_calls(winograd) == 4 and len(_winograd_kernels(winograd)) == 3
    direct = [
        gv.name_hint
        for gv in winograd.get_global_vars()
        if gv.name_hint.startswith("conv2d") and "winograd" not in gv.name_hint
    ]
    assert len(direct) == 2, direct
    with pytest.raises(ValueError, match="Winograd tile 3"):
        legalize(imported.mod, TARGET, winograd=3)


@pytest.mark.parametrize("tile", TILES)
def test_winograd_models_equal_ort_in_every_layout(residual, tile):
    imported, feeds, reference = residual
    legalized = legalize(imported.mod, TARGET, winograd=tile)
    graph = build_opgraph(imported.mod, target=TARGET, legalized=legalized)
    default = tvm_default_groups(imported.mod, TARGET, graph, legalized)
    plan = Plan.from_assignment(graph, default.node_group)
    singletons = Plan.from_assignment(graph, {n: k for k, n in enumerate(graph.order)})
    args = [feeds[s.name] for s in imported.inputs]
    for base in (plan, singletons):
        for layout in layout_choices(TARGET):
            laid = replace(base, groups=tuple(replace(g, layout=layout) for g in base.groups))
            fused = apply_plan(legalized, graph, laid)
            kernels = [f for f in fused.functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
            assert any('"bgemm"' in f.script() for f in kernels), "no Winograd kernel planned"
            executable = compile_plan(legalized, graph, laid, TARGET)
            actual = run_executable(executable, args)
            checks = compare_outputs(actual, reference, imported.output_names)
            assert all(c.ok for c in checks), (tile, layout, checks)


def test_tvm_fusion_fuses_the_epilogue_into_a_winograd_conv(residual):
    """The relu after a Winograd conv joins its group in TVM's own fusion, as it would join
    a direct conv's."""
    imported, _, _ = residual
    legalized = legalize(imported.mod, TARGET, winograd=4)
    graph = build_opgraph(imported.mod, target=TARGET, legalized=legalized)
    default = tvm_default_groups(imported.mod, TARGET, graph, legalized)
    by_group: dict[int, list[str]] = {}
    for node, group in default.node_group.items():
        by_group.setdefault(group, []).append(str(graph.node(node)["op"]))
    conv_groups = [ops for ops in by_group.values() if "relax.nn.conv2d" in ops]
    assert any("relax.nn.relu" in ops for ops in conv_groups), conv_groups


def test_the_transform_tiles_keep_their_layout_in_every_layout(residual):
    """Stored in NHWC or blocked, a Winograd conv's input and output are stored in the layout
    (and its padded input with them), but its transform tiles keep (m+2, m+2, tiles,
    channels): MetaSchedule's Winograd rules find their loops by position (tiles stored like
    an image had them unroll a 784-iteration loop: builds over 60 s)."""
    from ago_search.layout import ACT, parse_layout, transform_primfunc

    imported, _, _ = residual
    # c1: 16 -> 32 channels, 13x13, F(4x4, 3x3): 4x4 tiles of 6x6, input padded to 18x18
    func = legalize(imported.mod, TARGET, winograd=4)["conv2d_winograd"]
    for name, stored in (("NHWC", (1, 18, 18, 16)), ("NCHW4c", (1, 4, 18, 18, 4))):
        text = transform_primfunc(func, [ACT, None, ACT], parse_layout(name)).script()
        text = re.sub(r"T\.int64\((\d+)\)", r"\1", text)
        assert f"data_pad = T.sblock_alloc_buffer({stored})" in text, text[:3000]
        for tiles, shape in (("input_tile", 16), ("data_pack", 16), ("bgemm", 32)):
            assert f"{tiles} = T.sblock_alloc_buffer((6, 6, 16, {shape}))" in text, text[:3000]
        assert "inverse = T.sblock_alloc_buffer((4, 4, 16, 32))" in text


def test_a_winograd_conv_counts_as_one_complex_op():
    """Its transforms multiply by constant matrices: only the batched GEMM contracts two
    tensors (a task of several complex ops is tuned with other rules first)."""
    from tvm import te

    from ago_search.graph.winograd import winograd_conv2d
    from ago_search.schedule.tasks import count_complex_blocks

    data = te.placeholder((1, 32, 14, 14), name="data")
    kernel_pack = te.placeholder((16, 32, 32), name="kernel_pack")
    func = te.create_prim_func([data, kernel_pack, winograd_conv2d(data, kernel_pack, 2, (1,) * 4)])
    assert count_complex_blocks(func) == 1


def test_a_plan_file_keeps_the_models_winograd_choice(residual, tmp_path):
    """A plan made on the Winograd model records its tile in plan.json; loading the file
    prepares the model with it, and applying it to the model with direct convs is refused
    with a message naming both."""
    from ago_search.errors import AgoSearchError
    from ago_search.pipeline import load_planned, plan_model, prepare_model

    imported, _, _ = residual
    seeded = load_planned(imported, plan="tvm/NHWC", winograd=4)
    assert seeded.plan.winograd == 4 and seeded.prepared.winograd == 4
    path = seeded.plan.save(tmp_path / "plan.json")
    again = load_planned(imported, plan=path)
    assert again.prepared.winograd == 4 and again.plan.plan_hash() == seeded.plan.plan_hash()
    direct = prepare_model(imported, TARGET)
    with pytest.raises(AgoSearchError, match="Winograd F\\(4x4, 3x3\\) convs, not with direct"):
        plan_model(direct, path)
    assert load_planned(imported, plan="tvm").plan.winograd is None
