"""Tests of ago_search.plan: Plan data, validation, apply_plan and compile_plan.

Partitions compiled here are checked end to end against ONNX Runtime; random ones are built by
merging random neighbour groups while the group graph (networkx) stays acyclic.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, replace

import networkx as nx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import tvm
import tvm_ffi
from hypothesis import given, settings
from hypothesis import strategies as st
from model_builders import make_model, weight
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from ago_search.build import compile_plan, run_executable
from ago_search.errors import AgoSearchError
from ago_search.frontend import ImportedModel, import_onnx, random_inputs
from ago_search.graph import (
    OpGraph,
    build_opgraph,
    legalize,
    opgraph_from_dict,
    opgraph_to_dict,
    tvm_default_groups,
)
from ago_search.measure.compare import compare_outputs
from ago_search.partition import quotient_graph
from ago_search.plan import (
    GroupPlan,
    Plan,
    PlanError,
    apply_plan,
    graph_fingerprint,
    group_bindings,
    group_function_names,
    validate_plan,
)
from ago_search.plan import apply as plan_module
from ago_search.plan.apply import LAYOUT_FREE_ATTR

TARGET = tvm.target.Target({"kind": "llvm", "num-cores": 2})

pytestmark = pytest.mark.filterwarnings("ignore:Field 'shape' of 'type' is required")


@dataclass(frozen=True)
class Model:
    path: str
    imported: ImportedModel
    legalized: tvm.IRModule
    graph: OpGraph
    feeds: dict
    reference: list


def _load(path: str, shapes: dict | None = None) -> Model:
    imported = import_onnx(path, shapes)
    legalized = legalize(imported.mod, TARGET)
    graph = build_opgraph(imported.mod, target=TARGET, legalized=legalized)
    feeds = random_inputs(imported.inputs, seed=11)
    reference = ort.InferenceSession(path).run(None, feeds)
    return Model(path, imported, legalized, graph, feeds, reference)


def _zoo_model(zoo, name: str) -> Model:
    entry = zoo[name]
    return _load(entry["path"], {k: tuple(v) for k, v in entry["inputs"].items()})


@pytest.fixture(scope="module")
def load_zoo(zoo) -> Callable[[str], Model]:
    """Zoo models by name, each loaded once (mobilenetv2's FoldConstant alone takes ~6 s)."""
    cache: dict[str, Model] = {}

    def load(name: str) -> Model:
        if name not in cache:
            cache[name] = _zoo_model(zoo, name)
        return cache[name]

    return load


def _call_tir_targets(mod: tvm.IRModule) -> list[str]:
    return [
        b.value.args[0].name_hint
        for block in mod["main"].body.blocks
        for b in block.bindings
        if isinstance(b.value, relax.Call)
        and isinstance(b.value.op, tvm.ir.Op)
        and b.value.op.name == "relax.call_tir"
    ]


def _check_against_ort(model: Model, plan: Plan) -> None:
    executable = compile_plan(model.legalized, model.graph, plan, TARGET)
    inputs = [model.feeds[s.name] for s in model.imported.inputs]
    actual = run_executable(executable, inputs)
    checks = compare_outputs(actual, model.reference, model.imported.output_names)
    assert all(c.ok for c in checks), checks


def random_partition(graph: OpGraph, seed: int, merges: int) -> dict[str, int]:
    """Singletons, then up to `merges` merges of a node's group into a neighbour's group,
    each kept only when the group graph stays acyclic (checked with networkx)."""
    rng = random.Random(seed)
    group = {n: i for i, n in enumerate(graph.order)}
    quotient = quotient_graph(graph, group)
    edges = sorted(graph.graph.edges)
    done = 0
    for _ in range(merges * 20):
        if done == merges:
            break
        u, v = rng.choice(edges)
        a, b = group[u], group[v]
        if a == b:
            continue
        merged = nx.contracted_nodes(quotient, a, b, self_loops=False)
        if not nx.is_directed_acyclic_graph(merged):
            continue
        quotient = merged
        for n, g in group.items():
            if g == b:
                group[n] = a
        done += 1
    return group


# ---------------------------------------------------------------------------------------------
# small models


def _branches(tmp_path) -> Model:
    """x -> relu (a) -> exp (b); x -> sigmoid (c) -> tanh (d); add(b, d) (e)."""
    model = make_model(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Exp", ["a"], ["b"]),
            helper.make_node("Sigmoid", ["x"], ["c"]),
            helper.make_node("Tanh", ["c"], ["d"]),
            helper.make_node("Add", ["b", "d"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8])],
    )
    path = tmp_path / "branches.onnx"
    onnx.save(model, str(path))
    return _load(str(path))


def _split_model(tmp_path) -> Model:
    """Conv -> Split into two halves -> relu / sigmoid -> Concat -> Conv: a tuple producer."""
    model = make_model(
        [
            helper.make_node("Conv", ["x", "W1"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Split", ["c", "halves"], ["s0", "s1"], axis=1),
            helper.make_node("Relu", ["s0"], ["r0"]),
            helper.make_node("Sigmoid", ["s1"], ["r1"]),
            helper.make_node("Concat", ["r0", "r1"], ["cat"], axis=1),
            helper.make_node("Conv", ["cat", "W2"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [
            weight("W1", (8, 4, 3, 3), 1),
            numpy_helper.from_array(np.array([4, 4], dtype=np.int64), "halves"),
            weight("W2", (4, 8, 1, 1), 2),
        ],
    )
    path = tmp_path / "split.onnx"
    onnx.save(model, str(path))
    return _load(str(path))


@pytest.fixture(scope="module")
def branches(tmp_path_factory) -> Model:
    return _branches(tmp_path_factory.mktemp("branches"))


def _node_of(graph: OpGraph, op_suffix: str) -> list[str]:
    return [n for n in graph.order if graph.node(n)["op"].endswith(op_suffix)]


# ---------------------------------------------------------------------------------------------
# data: JSON, hashing


def test_json_round_trip_and_file(branches, tmp_path):
    g = branches.graph
    plan = Plan.from_groups(g, [g.order[:2], g.order[2:]])
    plan = plan.with_groups(
        [replace(plan.groups[0], layout="NHWC", schedule="rec:1"), plan.groups[1]]
    )
    assert Plan.from_json(plan.to_json()) == plan
    path = plan.save(tmp_path / "plan.json")
    loaded = Plan.load(path)
    assert loaded == plan
    assert loaded.plan_hash() == plan.plan_hash()
    assert loaded.groups[0].layout == "NHWC" and loaded.groups[1].schedule is None
    # the model fingerprint survives the OpGraph's own JSON round trip
    again = opgraph_from_dict(json.loads(json.dumps(opgraph_to_dict(g))))
    assert graph_fingerprint(again) == plan.model


def test_plan_hash_ignores_group_numbering_and_order(branches):
    g = branches.graph
    a, b, c, d, e = (_node_of(g, op)[0] for op in ("relu", "exp", "sigmoid", "tanh", "add"))
    p1 = Plan.from_assignment(g, {a: 0, b: 0, c: 1, d: 1, e: 2})
    p2 = Plan.from_assignment(g, {a: "z", b: "z", c: 7, d: 7, e: -1})
    # groups in another order, nodes in another order inside a group
    p3 = Plan(model=p1.model, groups=(GroupPlan((e,)), GroupPlan((d, c)), GroupPlan((b, a))))
    assert p1.groups == p2.groups
    assert p1.plan_hash() == p2.plan_hash() == p3.plan_hash()
    other = Plan.from_assignment(g, {a: 0, b: 1, c: 1, d: 1, e: 2})
    assert other.plan_hash() != p1.plan_hash()
    with_layout = p1.with_groups([replace(p1.groups[0], layout="NHWC"), *p1.groups[1:]])
    assert with_layout.plan_hash() != p1.plan_hash()


def test_damaged_plan_files_raise_plan_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PlanError, match="not valid JSON"):
        Plan.load(bad)
    for text in ('{"format": "something-else"}', "[1, 2]"):
        bad.write_text(text)
        with pytest.raises(PlanError, match="not an ago-search plan"):
            Plan.load(bad)
    bad.write_text('{"format": "ago-search-plan", "version": 1, "groups": []}')
    with pytest.raises(PlanError, match="damaged"):
        Plan.load(bad)
    with pytest.raises(PlanError, match="cannot read"):
        Plan.load(tmp_path / "missing.json")


# ---------------------------------------------------------------------------------------------
# validation


def test_bad_plans_raise_clear_errors(branches, tmp_path):
    g = branches.graph
    a, b, c, d, e = (_node_of(g, op)[0] for op in ("relu", "exp", "sigmoid", "tanh", "add"))
    ok = Plan.from_groups(g, [[a, b], [c, d], [e]])
    validate_plan(g, ok)

    def raises(groups, match):
        plan = replace(ok, groups=tuple(GroupPlan(tuple(x)) for x in groups))
        with pytest.raises(PlanError, match=match):
            validate_plan(g, plan)
        with pytest.raises(AgoSearchError):
            apply_plan(branches.legalized, g, plan, TARGET)

    raises([[a, b], [c, d]], "1 nodes are in no group.*" + e)
    raises([[a, b], [c, d, b], [e]], f"node '{b}' is in groups 0 and 1")
    raises([[a, b, b], [c, d], [e]], "twice in group 0")
    raises([[a, b], [c, d], [e, "nope"]], "does not have")
    raises([[a, b], [c, d], [e], []], "empty")
    # a -> b -> e <- ... : {a, e} leaves through b and comes back
    raises([[a, e], [b], [c, d]], f"group 0 is not convex.*{a} -> {b}")
    # {a, d} and {b, c} are convex, but a -> b and c -> d make the groups a cycle
    raises([[a, d], [b, c], [e]], "cycle")

    with_layout = ok.with_groups([replace(ok.groups[0], layout="NHCW"), *ok.groups[1:]])
    with pytest.raises(PlanError, match="group 0: unknown layout 'NHCW'"):
        validate_plan(g, with_layout)
    with pytest.raises(PlanError, match="layout"):
        apply_plan(branches.legalized, g, with_layout, TARGET)

    other = _split_model(tmp_path)
    with pytest.raises(PlanError, match="another model"):
        apply_plan(branches.legalized, g, Plan.from_groups(other.graph, [other.graph.order]))


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_validate_agrees_with_networkx(branches_graph, data):
    """Legal iff the quotient is a DAG (a non-convex group makes a cycle too)."""
    g = branches_graph
    labels = data.draw(st.lists(st.integers(0, 3), min_size=len(g), max_size=len(g)))
    assignment = dict(zip(g.order, labels, strict=True))
    plan = Plan.from_assignment(g, assignment)
    legal = nx.is_directed_acyclic_graph(quotient_graph(g, assignment))
    try:
        validate_plan(g, plan)
        assert legal
    except PlanError:
        assert not legal


@pytest.fixture(scope="module")
def branches_graph(branches) -> OpGraph:
    return branches.graph


# ---------------------------------------------------------------------------------------------
# applying and compiling


def test_apply_plan_is_deterministic_and_fuseops_leaves_groups_alone(branches, load_zoo):
    for model in (branches, load_zoo("squeezenet")):
        g = model.graph
        plan = Plan.from_assignment(g, random_partition(g, seed=1, merges=len(g) // 2))
        first = apply_plan(model.legalized, g, plan, TARGET)
        second = apply_plan(model.legalized, g, plan, TARGET)
        assert tvm_ffi.structural_equal(first, second)
        assert tvm_ffi.structural_hash(first) == tvm_ffi.structural_hash(second)
        # the group order stored in the plan does not matter
        shuffled = plan.with_groups(list(reversed(plan.groups)))
        assert tvm_ffi.structural_equal(apply_plan(model.legalized, g, shuffled, TARGET), first)
        # FuseOps finds nothing to do once every group is a Primitive function
        grouped = group_bindings(model.legalized, g, plan)
        with TARGET:
            assert tvm_ffi.structural_equal(relax.transform.FuseOps()(grouped), grouped)


def test_fuseops_fuses_unwrapped_singletons_so_every_group_is_wrapped(zoo, monkeypatch):
    """Why singletons are wrapped too: FuseOps never absorbs a call_tir into a Primitive
    function, but fuses neighbouring call_tirs left in main into groups the plan never had."""
    model = _zoo_model(zoo, "mlp")
    g = model.graph
    ops = [g.node(n)["op"] for n in g.order]
    assert ops[:3] == ["relax.matmul", "relax.add", "relax.nn.relu"]
    plan = Plan.from_groups(g, [g.order[:2]] + [[n] for n in g.order[2:]])
    monkeypatch.setattr(plan_module, "_is_groupable", lambda unit: len(unit.bindings) > 1)
    grouped = group_bindings(model.legalized, g, plan)
    with TARGET:
        fused = relax.transform.FuseOps()(grouped)
    called = [
        b.value.op.name_hint if isinstance(b.value.op, tvm.ir.GlobalVar) else b.value.op.name
        for b in fused["main"].body.blocks[0].bindings
    ]
    assert called[0] == "ago_g0_matmul_add"  # left alone, the relu after it not absorbed
    assert called[1] == "relax.call_tir"  # the relu
    assert called[2].startswith("fused_matmul")  # singletons matmul, add, relu fused by TVM
    assert len(called) < len(plan.groups)


def test_group_names_are_deterministic_and_informative(zoo):
    model = _zoo_model(zoo, "mlp")
    g = model.graph
    plan = Plan.from_assignment(
        g, tvm_default_groups(model.imported.mod, TARGET, g, model.legalized).node_group
    )
    names = group_function_names(g, plan)
    assert names == (
        "ago_g0_matmul_add_relu",
        "ago_g1_matmul_add_relu",
        "ago_g2_matmul_add",
        "ago_g3_softmax",
    )
    fused = apply_plan(model.legalized, g, plan, TARGET)
    assert _call_tir_targets(fused) == list(names)


@pytest.mark.parametrize("name", ["bert_tiny", "squeezenet"])
def test_tvm_default_plan_matches_tvm_and_ort(load_zoo, name):
    model = load_zoo(name)
    g = model.graph
    default = tvm_default_groups(model.imported.mod, TARGET, g, model.legalized)
    plan = Plan.from_assignment(g, default.node_group)
    assert len(plan.groups) == len(default.groups)
    fused = apply_plan(model.legalized, g, plan, TARGET)
    ours = _call_tir_targets(fused)
    assert len(ours) == len(plan.groups)

    # the same kernels as TVM's own FuseOps + FuseTIR (+ AttachAttrLayoutFreeBuffers, as its
    # tuning pipeline with weights prepacked runs it); a singleton differs by its op_pattern
    with TARGET:
        tvm_fused = relax.transform.FuseTIR()(relax.transform.FuseOps()(model.legalized))
        tvm_fused = relax.transform.AttachAttrLayoutFreeBuffers()(tvm_fused)
    theirs = _call_tir_targets(tvm_fused)
    assert len(theirs) == len(ours)
    for mine, tvms in zip(ours, theirs, strict=True):
        expected = tvm_fused[tvms]
        if "op_pattern" in expected.attrs:
            expected = expected.without_attr("op_pattern")
        if len(expected.attrs.get(LAYOUT_FREE_ATTR, [1])) == 0:  # we leave empty lists out
            expected = expected.without_attr(LAYOUT_FREE_ATTR)
        assert tvm_ffi.structural_equal(fused[mine], expected), (mine, tvms)
    _check_against_ort(model, plan)


RANDOM_CASES = [
    ("bert_tiny", 0),
    ("bert_tiny", 1),
    ("squeezenet", 0),
    ("squeezenet", 1),
    pytest.param("dbnet", 0, marks=pytest.mark.slow),  # 15-30 s each on 2 cores
    pytest.param("mobilenetv2", 0, marks=pytest.mark.slow),
]


@pytest.mark.parametrize(("name", "seed"), RANDOM_CASES)
def test_random_partitions_compile_and_match_ort(load_zoo, name, seed):
    model = load_zoo(name)
    g = model.graph
    assignment = random_partition(g, seed, merges=int(len(g) * 0.7))
    assert nx.is_directed_acyclic_graph(quotient_graph(g, assignment))
    plan = Plan.from_assignment(g, assignment)
    assert plan.model == graph_fingerprint(g)
    fused = apply_plan(model.legalized, g, plan, TARGET)
    targets = _call_tir_targets(fused)
    assert len(targets) == len(set(targets)) == len(plan.groups)
    assert sorted(targets) == sorted(group_function_names(g, plan))
    assert max(sum(g.node(n)["complex"] for n in grp.nodes) for grp in plan.groups) >= 2
    _check_against_ort(model, plan)


def test_tuple_producer_split_across_groups(tmp_path):
    model = _split_model(tmp_path)
    g = model.graph
    conv1, conv2 = _node_of(g, "conv2d")
    (split,) = _node_of(g, "split")
    (relu,) = _node_of(g, "relu")
    (sigmoid,) = _node_of(g, "sigmoid")
    (concat,) = _node_of(g, "concat")
    partitions = [
        [[conv1, split], [relu], [sigmoid], [concat, conv2]],  # both fields leave the group
        [[conv1, split, relu], [sigmoid, concat, conv2]],  # one field stays, one leaves
        [[conv1], [split, relu, sigmoid, concat], [conv2]],
        [g.order],
    ]
    for groups in partitions:
        plan = Plan.from_groups(g, groups)
        fused = apply_plan(model.legalized, g, plan, TARGET)
        assert len(_call_tir_targets(fused)) == len(groups)
        _check_against_ort(model, plan)


def test_build_takes_the_fused_module_instead_of_fusing_again(branches, monkeypatch):
    from tvm.s_tir import meta_schedule as ms

    from ago_search import build

    g = branches.graph
    plan = Plan.from_assignment(g, random_partition(g, seed=2, merges=len(g) // 2))
    fused = apply_plan(branches.legalized, g, plan, TARGET)

    def no_fusing(*_args, **_kwargs):
        raise AssertionError("apply_plan ran although the fused module was given")

    monkeypatch.setattr(build, "apply_plan", no_fusing)
    executable = compile_plan(branches.legalized, g, plan, TARGET, fused=fused)
    inputs = [branches.feeds[s.name] for s in branches.imported.inputs]
    checks = compare_outputs(
        run_executable(executable, inputs), branches.reference, branches.imported.output_names
    )
    assert all(c.ok for c in checks), checks
    # an empty database: every kernel is built untuned, and says so
    tuned = build.compile_plan_tuned(
        branches.legalized, g, plan, TARGET, ms.database.MemoryDatabase(), fused=fused
    )
    assert tuned.scheduled == ()
    assert tuned.untuned == tuple(sorted(group_function_names(g, plan)))


@pytest.mark.parametrize("name", ["bert_tiny", "squeezenet"])
def test_groups_fused_on_their_own_are_the_plans_tasks(load_zoo, name):
    """fuse_groups gives each group the very PrimFunc (task key) the whole plan gives it, for
    overlapping groups of two different plans at once."""
    from ago_search.plan import fuse_groups
    from ago_search.schedule.tasks import extract_tasks

    model = load_zoo(name)
    g = model.graph
    plans = [
        Plan.from_assignment(g, random_partition(g, seed, merges=int(len(g) * 0.6)))
        for seed in (1, 2)
    ]
    expected: list[str] = []
    groups: list[tuple[str, ...]] = []
    for plan in plans:
        fused = apply_plan(model.legalized, g, plan, TARGET)
        key_of = {n: t.key for t in extract_tasks(fused, TARGET, plan, g) for n in t.groups}
        names = group_function_names(g, plan)
        expected += [key_of[n] for n in names]
        groups += [grp.nodes for grp in plan.groups]
    mod, names = fuse_groups(model.legalized, g, groups, TARGET)
    key_of = {n: t.key for t in extract_tasks(mod, TARGET) for n in t.groups}
    assert None not in names
    assert [key_of[n] for n in names] == expected
