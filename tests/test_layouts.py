"""Layouts per group (issue 15): every operator kind in NHWC and blocked layouts equals ONNX
Runtime, transforms are placed only where layouts meet, and plans keep their layouts.

The models are made here with onnx.helper: one CNN with every conv kind (normal, strided,
padded, depthwise, grouped, 1x1), max/average/global pooling, resize and concat, and channel
counts that divide by 4, 8 and 16 (the blocked layouts of NEON, AVX2 and AVX-512) except the
RGB input's 3.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
import tvm
from model_builders import conv as _conv
from model_builders import make_model, weight
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from ago_search.build import compile_plan, run_executable
from ago_search.frontend import import_onnx, random_inputs
from ago_search.graph import build_opgraph, legalize, tvm_default_groups
from ago_search.layout import (
    LayoutError,
    layout_choices,
    parse_layout,
    stored_shape,
    vector_lanes,
)
from ago_search.measure.compare import compare_outputs
from ago_search.plan import Plan, PlanError, apply_plan

TARGET = tvm.target.Target({"kind": "llvm", "num-cores": 2})

pytestmark = pytest.mark.filterwarnings("ignore:Field 'shape' of 'type' is required")


def every_kind_model(path) -> str:
    """x (1, 3, 32, 32) -> every conv kind, pooling, resize, concat -> (1, 64) and a map."""
    nodes, inits = [], []

    def add(node_and_weights):
        node, ws = node_and_weights
        nodes.append(node)
        inits.extend(ws)

    add(_conv("c1", "x", 3, 16, 3, pad=1, seed=1))  # padded, RGB in (3 channels: no block)
    nodes.append(helper.make_node("Relu", ["c1"], ["r1"]))
    add(_conv("c2", "r1", 16, 32, 3, stride=2, pad=1, seed=2))  # strided
    nodes.append(helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"]))
    add(_conv("dw", "r2", 32, 32, 3, pad=1, group=32, seed=3))  # depthwise
    add(_conv("gc", "dw", 32, 32, 3, pad=1, group=4, seed=4))  # grouped
    add(_conv("pw", "gc", 32, 32, 1, seed=5))  # 1x1
    nodes.append(helper.make_node("Add", ["pw", "r2"], ["res"]))  # residual
    nodes.append(helper.make_node("Mul", ["res", "scale"], ["scaled"]))  # per-channel broadcast
    nodes.append(
        helper.make_node(
            "MaxPool", ["scaled"], ["mp"], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]
        )
    )
    nodes.append(
        helper.make_node(
            "AveragePool",
            ["mp"],
            ["ap"],
            kernel_shape=[2, 2],
            strides=[1, 1],
            pads=[0, 0, 1, 1],
            count_include_pad=0,
        )
    )
    nodes.append(helper.make_node("Resize", ["ap", "", "scales"], ["up"], mode="nearest"))
    nodes.append(helper.make_node("Concat", ["up", "scaled"], ["cat"], axis=1))  # 64 channels
    add(_conv("head", "cat", 64, 16, 1, seed=6))
    nodes.append(helper.make_node("Sigmoid", ["head"], ["map"]))
    nodes.append(helper.make_node("GlobalAveragePool", ["cat"], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["flat"]))
    inits += [
        numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(6.0, np.float32), "hi"),
        numpy_helper.from_array(
            np.random.default_rng(7).uniform(0.5, 1.5, (1, 32, 1, 1)).astype(np.float32), "scale"
        ),
        numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [
            helper.make_tensor_value_info("flat", TensorProto.FLOAT, [1, 64]),
            helper.make_tensor_value_info("map", TensorProto.FLOAT, [1, 16, 16, 16]),
        ],
        inits,
    )
    file = path / "every_kind.onnx"
    file.write_bytes(model.SerializeToString())
    return str(file)


@pytest.fixture(scope="module")
def every_kind(tmp_path_factory):
    path = every_kind_model(tmp_path_factory.mktemp("layouts"))
    imported = import_onnx(path)
    legalized = legalize(imported.mod, TARGET)
    graph = build_opgraph(imported.mod, target=TARGET, legalized=legalized)
    feeds = random_inputs(imported.inputs, seed=3)
    reference = ort.InferenceSession(path).run(None, feeds)
    default = tvm_default_groups(imported.mod, TARGET, graph, legalized)
    plan = Plan.from_assignment(graph, default.node_group)
    return imported, legalized, graph, feeds, reference, plan


def _with_layouts(plan: Plan, layouts) -> Plan:
    groups = tuple(replace(g, layout=lay) for g, lay in zip(plan.groups, layouts, strict=True))
    return replace(plan, groups=groups)


def _check(every_kind, plan: Plan):
    imported, legalized, graph, feeds, reference, _ = every_kind
    executable = compile_plan(legalized, graph, plan, TARGET)
    actual = run_executable(executable, [feeds[s.name] for s in imported.inputs])
    checks = compare_outputs(actual, reference, imported.output_names)
    assert all(c.ok for c in checks), checks


def _transforms(fused: tvm.IRModule) -> list[str]:
    """The call_tir targets in main that are layout transforms, in order."""
    names: list[str] = []

    def visit(expr):
        if (
            isinstance(expr, relax.Call)
            and isinstance(expr.op, tvm.ir.Op)
            and expr.op.name == "relax.call_tir"
            and "layout_transform" in expr.args[0].name_hint
        ):
            names.append(expr.args[0].name_hint)

    relax.analysis.post_order_visit(fused["main"], visit)
    return names


# ---------------------------------------------------------------------------------------------
# the layouts themselves


def test_layout_names_and_the_vector_width_come_from_the_target():
    assert parse_layout(None).is_default and parse_layout("NCHW").is_default
    assert parse_layout("NHWC").block is None
    assert parse_layout("NCHW16c").block == 16
    for bad in ("NCWH", "NCHW1c", "nhwc", "NCHWc"):
        with pytest.raises(LayoutError, match="NCHW<x>c"):
            parse_layout(bad)
    avx512 = tvm.target.Target({"kind": "llvm", "mcpu": "skylake-avx512"})
    avx2 = tvm.target.Target({"kind": "llvm", "mcpu": "haswell"})
    neon = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    assert (vector_lanes(avx512), vector_lanes(avx2), vector_lanes(neon)) == (16, 8, 4)
    assert layout_choices(avx2) == ("NCHW", "NHWC", "NCHW8c")


@pytest.mark.parametrize("name", ["NHWC", "NCHW4c", "NCHW16c"])
def test_numpy_transforms_agree_with_the_index_maps(name):
    layout = parse_layout(name)
    rng = np.random.default_rng(0)
    act = rng.standard_normal((2, 32, 5, 7)).astype(np.float32)
    stored = layout.act_to(act)
    assert stored.shape == stored_shape(layout, "act", act.shape)
    fn = layout.act_map()
    for idx in [(0, 0, 0, 0), (1, 17, 3, 6), (1, 31, 4, 2)]:
        assert stored[tuple(fn(*idx))] == act[idx]
    np.testing.assert_array_equal(layout.act_from(stored), act)
    for wshape in [(32, 16, 3, 3), (32, 1, 3, 3), (32, 3, 1, 1)]:  # normal, depthwise, RGB in
        w = rng.standard_normal(wshape).astype(np.float32)
        sw = layout.weight_to(w)
        assert sw.shape == stored_shape(layout, "weight", wshape)
        wfn = layout.weight_map(wshape)
        for idx in itertools.product(*[{0, d - 1, d // 2} for d in wshape]):
            assert sw[tuple(wfn(*idx))] == w[idx]


# ---------------------------------------------------------------------------------------------
# plans in layouts, against ONNX Runtime


@pytest.mark.parametrize("name", ["NHWC", "NCHW4c", "NCHW8c", "NCHW16c"])
def test_every_operator_in_a_layout_equals_ort(every_kind, name):
    plan = every_kind[5]
    laid = _with_layouts(plan, [name] * len(plan.groups))
    fused = apply_plan(every_kind[1], every_kind[2], laid, TARGET)
    # one plan-wide layout: the only transforms are at the model's input and outputs
    assert 1 <= len(_transforms(fused)) <= 3
    _check(every_kind, laid)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixed_layouts_equal_ort_with_transforms_only_where_layouts_meet(every_kind, seed):
    imported, legalized, graph, feeds, reference, plan = every_kind
    rng = random.Random(seed)
    names = [rng.choice(["NCHW", "NHWC", "NCHW8c", "NCHW16c", None]) for _ in plan.groups]
    laid = _with_layouts(plan, names)
    fused = apply_plan(legalized, graph, laid, TARGET)
    _check(every_kind, laid)
    # no transform reads the result of another transform (inverse pairs cancel, and a change
    # of layout is one transform read from the stored result, never NCHW in between)
    main = fused["main"]
    made_by = {}
    for block in main.body.blocks:
        for b in block.bindings:
            made_by[b.var] = b.value
    for value in made_by.values():
        if _is_transform(value):
            source = value.args[1].fields[0]
            assert not _is_transform(made_by.get(source)), "two transforms back to back"


def _is_transform(value) -> bool:
    return (
        isinstance(value, relax.Call)
        and isinstance(value.op, tvm.ir.Op)
        and value.op.name == "relax.call_tir"
        and "layout_transform" in value.args[0].name_hint
    )


def test_a_plan_keeps_its_layouts_through_json_and_its_hash(every_kind, tmp_path):
    plan = every_kind[5]
    names = ["NHWC" if i % 2 else "NCHW16c" for i in range(len(plan.groups))]
    laid = _with_layouts(plan, names)
    path = tmp_path / "plan.json"
    laid.save(path)
    again = Plan.load(path)
    assert again == laid
    assert [g.layout for g in again.groups] == names
    assert again.plan_hash() == laid.plan_hash() != plan.plan_hash()


def test_an_unknown_layout_in_a_plan_is_a_plan_error(every_kind):
    plan = every_kind[5]
    bad = _with_layouts(plan, ["NHCW"] + [None] * (len(plan.groups) - 1))
    with pytest.raises(PlanError, match="unknown layout 'NHCW'"):
        apply_plan(every_kind[1], every_kind[2], bad, TARGET)


def test_a_layout_changes_the_task_of_a_conv_group(every_kind):
    from ago_search.schedule.tasks import extract_tasks

    _, legalized, graph, _, _, plan = every_kind
    base = {t.key for t in extract_tasks(apply_plan(legalized, graph, plan, TARGET), TARGET)}
    laid = _with_layouts(plan, ["NHWC"] * len(plan.groups))
    tasks = extract_tasks(apply_plan(legalized, graph, laid, TARGET), TARGET, laid, graph)
    assert {t.key for t in tasks if t.complex_ops}.isdisjoint(base)
    assert any("layout_transform" in t.name for t in tasks)  # transforms are tasks too


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_the_borders_read_off_the_graph_are_the_transforms_the_plan_places(every_kind, seed):
    """What the search scores (`plan_borders`, `border_module`, `fuse_groups` in layouts) is
    what the plan runs: the same transforms and the same group kernels, as tasks."""
    from ago_search.plan import border_module, fuse_groups, plan_borders
    from ago_search.schedule.tasks import extract_tasks

    _, legalized, graph, _, _, plan = every_kind
    rng = random.Random(seed)
    names = [rng.choice(["NCHW", "NHWC", "NCHW8c", "NCHW16c"]) for _ in plan.groups]
    laid = _with_layouts(plan, names)
    tasks = extract_tasks(apply_plan(legalized, graph, laid, TARGET), TARGET, laid, graph)
    placed = {t.key: t.weight for t in tasks if "layout_transform" in t.name}

    groups = [g.nodes for g in laid.groups]
    borders = plan_borders(graph, groups, names)
    counted: dict[str, int] = {}
    for t in extract_tasks(border_module(borders, TARGET)[0], TARGET):
        counted[t.key] = counted.get(t.key, 0) + t.weight
    assert counted == placed

    mod, fused_names = fuse_groups(legalized, graph, groups, TARGET, names)
    alone = {t.key for t in extract_tasks(mod, TARGET)}
    assert alone == {t.key for t in tasks if "layout_transform" not in t.name}


def test_inspect_shows_each_groups_layout_and_the_transforms_placed(every_kind, tmp_path):
    import json
    import subprocess
    import sys

    from ago_search.devices import host_target
    from ago_search.pipeline import prepare_model, seed_plan

    imported = every_kind[0]
    plan = seed_plan(prepare_model(imported, host_target()), "tvm")  # what inspect prepares
    names = ["NHWC" if i < 3 else "NCHW16c" for i in range(len(plan.groups))]
    path = tmp_path / "plan.json"
    _with_layouts(plan, names).save(path)
    out = tmp_path / "inspect.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ago_search.cli",
            "inspect",
            imported.path,
            "--plan",
            str(path),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(out.read_text())["plan"]
    assert [g["layout"] for g in report["groups"]] == names
    transforms = report["transforms"]
    # the image into NHWC; NHWC -> NCHW16c where the two meet; back to NCHW at the outputs
    assert {
        "tensor": "input:x",
        "shape": [1, 3, 32, 32],
        "from": "NCHW",
        "to": "NHWC",
    } in transforms
    assert any(t["from"] == "NHWC" and t["to"] == "NCHW16c" for t in transforms)
    assert f"layout transforms placed: {len(transforms)}" in result.stdout
    assert "NCHW16c" in result.stdout


def test_cancelled_transforms_are_counted_where_same_layout_groups_meet(every_kind):
    from ago_search.plan import cancelled_borders, plan_borders

    _, _, graph, _, _, plan = every_kind
    groups = [g.nodes for g in plan.groups]
    assert cancelled_borders(graph, groups, [None] * len(groups)) == 0
    nhwc = ["NHWC"] * len(groups)
    # every tensor passed between two groups is read in NHWC as stored: none placed there
    assert cancelled_borders(graph, groups, nhwc) >= len(groups) - 2
    assert len(plan_borders(graph, groups, nhwc)) <= 3


def test_a_seed_in_a_layout_is_a_plan_name(every_kind):
    from ago_search.devices import host_target
    from ago_search.errors import AgoSearchError
    from ago_search.pipeline import prepare_model, resolve_plan

    prepared = prepare_model(every_kind[0], host_target())
    plan, name = resolve_plan(prepared, "tvm/NHWC")
    assert name == "tvm/NHWC"
    base, _ = resolve_plan(prepared, "tvm")
    assert [g.nodes for g in plan.groups] == [g.nodes for g in base.groups]
    assert {g.layout for g in plan.groups} == {"NHWC"}  # every group here holds an activation
    with pytest.raises(AgoSearchError, match="seed plan 'tvm/NHCW': unknown layout"):
        resolve_plan(prepared, "tvm/NHCW")


def patch_attention_model(path) -> str:
    """A ViT in small: x (1, 3, 16, 16) -> a 4x4 patch conv -> 16 tokens of 16 features ->
    one attention of 2 heads, whose (batch, heads, tokens, features) tensors are rank 4 too."""
    conv, ws = _conv("patch", "x", 3, 16, 4, stride=4, seed=8)
    nodes = [
        conv,
        helper.make_node("Reshape", ["patch", "tokens_shape"], ["flat"]),  # (1, 16, 16)
        helper.make_node("Transpose", ["flat"], ["tokens"], perm=[0, 2, 1]),
        helper.make_node("MatMul", ["tokens", "wq"], ["q"]),
        helper.make_node("Reshape", ["q", "heads_shape"], ["qh"]),  # (1, 16, 2, 8)
        helper.make_node("Transpose", ["qh"], ["q4"], perm=[0, 2, 1, 3]),  # (1, 2, 16, 8)
        helper.make_node("Transpose", ["q4"], ["k4"], perm=[0, 1, 3, 2]),  # (1, 2, 8, 16)
        helper.make_node("MatMul", ["q4", "k4"], ["scores"]),  # (1, 2, 16, 16)
        helper.make_node("Softmax", ["scores"], ["attn"], axis=-1),
        helper.make_node("MatMul", ["attn", "q4"], ["mixed"]),  # (1, 2, 16, 8)
        helper.make_node("Transpose", ["mixed"], ["back"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["back", "out_shape"], ["out"]),  # (1, 16, 16)
    ]
    inits = [
        *ws,
        weight("wq", (16, 16), 9),
        numpy_helper.from_array(np.array([1, 16, 16], np.int64), "tokens_shape"),
        numpy_helper.from_array(np.array([1, 16, 2, 8], np.int64), "heads_shape"),
        numpy_helper.from_array(np.array([1, 16, 16], np.int64), "out_shape"),
    ]
    model = make_model(
        nodes,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 16, 16])],
        inits,
    )
    file = path / "patch_attention.onnx"
    file.write_bytes(model.SerializeToString())
    return str(file)


def test_attention_tensors_are_no_images_and_keep_their_layout(tmp_path):
    """Only images take a layout: the patch conv's tensors, not attention's rank-4
    (batch, heads, tokens, features) ones, and a plan all in NHWC equals ORT with transforms
    on images only."""
    from ago_search.layout import image_nodes, touches_activation
    from ago_search.plan import plan_borders

    path = patch_attention_model(tmp_path)
    imported = import_onnx(path)
    legalized = legalize(imported.mod, TARGET)
    graph = build_opgraph(imported.mod, target=TARGET, legalized=legalized)
    images = image_nodes(graph)
    ops = {n: str(graph.node(n)["op"]) for n in graph.order}
    rank4 = {
        n
        for n in graph.order
        if len(graph.node(n)["out_shape"]) == 4
        or any(len(s) == 4 for s in graph.node(n)["in_shapes"])
    }
    conv = next(n for n in graph.order if "conv2d" in ops[n])
    assert conv in images
    # the reshape that reads the conv's image is in; everything after it is not
    assert {n for n in graph.order if conv in graph.node(n)["inputs"]} <= images
    attention = rank4 - images
    assert any("matmul" in ops[n] for n in attention)
    assert any("softmax" in ops[n] for n in attention)
    assert not any(touches_activation(graph, n) for n in attention)

    feeds = random_inputs(imported.inputs, seed=4)
    reference = ort.InferenceSession(path).run(None, feeds)
    default = tvm_default_groups(imported.mod, TARGET, graph, legalized)
    plan = Plan.from_assignment(graph, default.node_group)
    laid = _with_layouts(plan, ["NHWC"] * len(plan.groups))
    executable = compile_plan(legalized, graph, laid, TARGET)
    actual = run_executable(executable, [feeds[s.name] for s in imported.inputs])
    checks = compare_outputs(actual, reference, imported.output_names)
    assert all(c.ok for c in checks), checks
    borders = plan_borders(graph, [g.nodes for g in laid.groups], ["NHWC"] * len(plan.groups))
    assert all(b.tensor in images or b.tensor.startswith("input:") for b in borders)
