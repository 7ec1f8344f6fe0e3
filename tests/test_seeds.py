"""Tests of ago_search.partition.seeds: TVM, DNNFusion and intensive (AGO) seed partitions.

Zoo models check the seeds on real graphs; random DAGs check the invariants the DNNFusion table
implies and the cache budget of the intensive seed.
"""

from __future__ import annotations

import networkx as nx
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from ago_search.devices import host_target
from ago_search.frontend import import_onnx
from ago_search.graph import OpGraph, build_opgraph, legalize, tvm_default_groups
from ago_search.partition import (
    DNNFUSION_TABLE,
    FusionDecision,
    Partition,
    SeedResult,
    SeedStats,
    dnnfusion_seed,
    fusion_decision,
    host_cache_bytes,
    intensive_seed,
    seed_stats,
    seed_stats_table,
    singletons,
    tvm_seed,
)

# mobilenetv2's graph alone takes ~20 s to build on 2 cores
ZOO_SEED_MODELS = [
    "resnet18",
    pytest.param("mobilenetv2", marks=pytest.mark.slow),
    "bert_tiny",
    "vit_tiny",
    "dbnet",
    "shufflenet",
]
GENEROUS_CACHE = 256 * 1024 * 1024
TINY_CACHE = 16 * 1024
M2M, O2M = "many-to-many", "one-to-many"

_GRAPHS: dict[str, tuple[OpGraph, object]] = {}


@pytest.fixture
def zoo_graph(zoo, request) -> tuple[OpGraph, object]:
    """(OpGraph, TVM default groups) of a zoo model, built once per test session."""
    name = request.param
    if name not in _GRAPHS:
        entry = zoo[name]
        mod = import_onnx(entry["path"], {k: tuple(v) for k, v in entry["inputs"].items()}).mod
        target = host_target()
        legalized = legalize(mod, target)
        graph = build_opgraph(mod, target=target, legalized=legalized)
        _GRAPHS[name] = (graph, tvm_default_groups(mod, target, graph=graph, legalized=legalized))
    return _GRAPHS[name]


def assert_valid_partition(p: Partition, graph: OpGraph | nx.DiGraph) -> None:
    """Every node in exactly one group, acyclic quotient (brute force), convex groups."""
    digraph = graph.graph if isinstance(graph, OpGraph) else graph
    members = [n for nodes in p.groups.values() for n in nodes]
    assert sorted(members) == sorted(digraph.nodes)
    assert len(members) == len(set(members))
    assign = p.assignment()
    q = nx.DiGraph()
    q.add_nodes_from(p.group_ids)
    q.add_edges_from((assign[u], assign[v]) for u, v in digraph.edges if assign[u] != assign[v])
    assert nx.is_directed_acyclic_graph(q)
    for nodes in p.groups.values():
        below = set().union(*(nx.descendants(digraph, n) for n in nodes))
        above = set().union(*(nx.ancestors(digraph, n) for n in nodes))
        assert not (below & above) - nodes


def complex_count(p: Partition, group: int) -> int:
    return p.group_stats(group).complex_ops


def mappings_of(p: Partition, group: int) -> list[str]:
    graph = p.graph
    return [graph.nodes[n]["mapping"] for n in p.nodes_of(group)]


# --------------------------------------------------------------------------------------------
# zoo models


@pytest.mark.parametrize("zoo_graph", ZOO_SEED_MODELS, indirect=True)
def test_every_seed_covers_every_node_once_and_is_acyclic(zoo_graph):
    graph, default_groups = zoo_graph
    tvm = tvm_seed(graph, default_groups)
    seeds = [
        tvm,
        dnnfusion_seed(graph),
        dnnfusion_seed(graph, predecessors_first=True),
        intensive_seed(graph, host_cache_bytes()),
        intensive_seed(graph, GENEROUS_CACHE),
        intensive_seed(graph, host_cache_bytes(), base=tvm),
    ]
    for seed in seeds:
        assert isinstance(seed, SeedResult) and seed.notes
        assert_valid_partition(seed.partition, graph)
        assert seed.partition.num_groups < len(graph)

    assert tvm.partition.num_groups == len(default_groups.groups)
    assert all(complex_count(tvm.partition, g) <= 1 for g in tvm.partition.group_ids)


@pytest.mark.parametrize("zoo_graph", ZOO_SEED_MODELS, indirect=True)
def test_dnnfusion_seed_follows_its_table(zoo_graph):
    graph, _ = zoo_graph
    for seed in (dnnfusion_seed(graph), dnnfusion_seed(graph, predecessors_first=True)):
        p = seed.partition
        assert p.num_groups < singletons(graph).num_groups
        for g in p.group_ids:
            kinds = mappings_of(p, g)
            # many-to-many after many-to-many is a "profile" cell: the seed never fuses it
            assert kinds.count(M2M) <= 1, p.nodes_of(g)
            # one-to-many followed by many-to-many is "break"
            assert not (M2M in kinds and O2M in kinds), p.nodes_of(g)
        for edge in seed.profile_edges:
            assert p.group_of(edge.producer) != p.group_of(edge.consumer)
            assert graph.graph.has_edge(edge.producer, edge.consumer)
            assert fusion_decision(edge.first, edge.second)[0] is FusionDecision.PROFILE


def is_depthwise_conv(attrs: dict) -> bool:
    return attrs["op"] == "relax.nn.conv2d" and attrs["attrs"]["groups"] > 1


def is_pointwise_conv(attrs: dict) -> bool:
    return (
        attrs["op"] == "relax.nn.conv2d"
        and attrs["attrs"]["groups"] == 1
        and tuple(attrs["in_shapes"][1][2:]) == (1, 1)
    )


def is_matmul(attrs: dict) -> bool:
    return attrs["op"] == "relax.matmul"


@pytest.mark.parametrize(
    ("zoo_graph", "first", "second"),
    [
        pytest.param(  # depthwise -> pointwise
            "mobilenetv2", is_depthwise_conv, is_pointwise_conv, marks=pytest.mark.slow
        ),
        ("bert_tiny", is_matmul, is_matmul),  # attention or FFN
    ],
    indirect=["zoo_graph"],
)
def test_intensive_seed_fuses_complex_ops_within_the_budget(zoo_graph, first, second):
    graph, _ = zoo_graph
    generous = intensive_seed(graph, GENEROUS_CACHE)
    tiny = intensive_seed(graph, TINY_CACHE)
    p = generous.partition
    multi = [g for g in p.group_ids if complex_count(p, g) >= 2]
    assert multi
    tiny_multi = [g for g in tiny.partition.group_ids if complex_count(tiny.partition, g) >= 2]
    assert len(tiny_multi) < len(multi)
    for seed, budget in ((generous, GENEROUS_CACHE), (tiny, TINY_CACHE)):
        for g in seed.partition.group_ids:
            stats = seed.partition.group_stats(g)
            if stats.complex_ops >= 2:
                assert stats.working_set_bytes <= budget
                assert stats.complex_ops <= 6

    ops = graph.graph.nodes

    def joins_both(g: int) -> bool:
        nodes = p.nodes_of(g)
        firsts = [n for n in nodes if first(ops[n])]
        seconds = [n for n in nodes if second(ops[n]) and n not in firsts[:1]]
        return bool(firsts) and bool(seconds)

    assert any(joins_both(g) for g in multi)


@pytest.mark.parametrize("zoo_graph", ["bert_tiny"], indirect=True)
def test_seed_stats_and_table(zoo_graph):
    graph, default_groups = zoo_graph
    tvm = seed_stats(tvm_seed(graph, default_groups))
    assert tvm.nodes == len(graph)
    assert tvm.groups == len(default_groups.groups)
    assert tvm.multi_complex_groups == 0 and tvm.most_complex_ops == 1
    intensive = seed_stats(intensive_seed(graph, GENEROUS_CACHE))
    assert intensive.multi_complex_groups >= 1
    table = seed_stats_table({"bert_tiny": {"tvm": tvm, "intensive": intensive}})
    assert f"| bert_tiny | {len(graph)} |" in table
    assert f"{tvm.groups} / 0 / {tvm.largest_group}" in table


# --------------------------------------------------------------------------------------------
# random DAGs

MAPPINGS = ("one-to-one", "one-to-many", "many-to-many", "reorganize", "shuffle")


@st.composite
def op_dags(draw) -> nx.DiGraph:
    n = draw(st.integers(5, 60))
    near = draw(
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 4)), min_size=n, max_size=2 * n)
    )
    kinds = draw(st.lists(st.sampled_from(MAPPINGS), min_size=n, max_size=n))
    sizes = draw(st.lists(st.integers(1, 64), min_size=n, max_size=n))
    g = nx.DiGraph()
    for i in range(n):
        is_complex = kinds[i] == M2M
        g.add_node(
            f"v{i}",
            mapping=kinds[i],
            complex=is_complex,
            params=256 * sizes[i] if is_complex else 0,
            out_shape=(sizes[i], 16),
            dtype="float32",
        )
    for i, d in near:
        if i + d < n:
            g.add_edge(f"v{i}", f"v{i + d}", bytes=64 * sizes[i])
    return g


@settings(max_examples=100, deadline=None)
@given(graph=op_dags(), budget=st.integers(1 << 10, 1 << 22))
def test_seeds_on_random_dags(graph, budget):
    for predecessors_first in (False, True):
        seed = dnnfusion_seed(graph, predecessors_first=predecessors_first)
        assert_valid_partition(seed.partition, graph)
        for g in seed.partition.group_ids:
            kinds = mappings_of(seed.partition, g)
            assert kinds.count(M2M) <= 1
            assert not (M2M in kinds and O2M in kinds)

    base = dnnfusion_seed(graph, predecessors_first=True)
    seed = intensive_seed(graph, budget, base=base)
    assert_valid_partition(seed.partition, graph)
    for g in seed.partition.group_ids:
        stats = seed.partition.group_stats(g)
        if stats.complex_ops >= 2:
            assert stats.working_set_bytes <= budget
    assert seed.partition.num_groups <= base.partition.num_groups
    event(f"intensive merges: {base.partition.num_groups > seed.partition.num_groups}")
    event(f"profile edges: {bool(dnnfusion_seed(graph).profile_edges)}")


def test_dnnfusion_table_is_complete_and_one_to_one_always_fuses():
    assert len(DNNFUSION_TABLE) == len(MAPPINGS) ** 2
    for other in MAPPINGS:
        assert fusion_decision("one-to-one", other) == (FusionDecision.FUSE, other)
        assert fusion_decision(other, "one-to-one") == (FusionDecision.FUSE, other)
    assert fusion_decision(M2M, M2M)[0] is FusionDecision.PROFILE
    assert fusion_decision(O2M, M2M)[0] is FusionDecision.BREAK
    for a in ("reorganize", "shuffle"):
        for b in ("reorganize", "shuffle", M2M):
            assert fusion_decision(a, b)[0] is FusionDecision.FUSE


def test_dnnfusion_seed_starts_at_the_smallest_one_to_one_op():
    # conv1 -> add -> relu -> conv2: the add and relu join conv2 (one-to-one then
    # many-to-many: fuse); conv1 -> (group of type many-to-many) is a profile edge
    g = nx.DiGraph()
    for name, kind, size in [
        ("conv1", M2M, 64),
        ("add", "one-to-one", 8),
        ("relu", "one-to-one", 16),
        ("conv2", M2M, 64),
    ]:
        g.add_node(name, mapping=kind, complex=kind == M2M, out_shape=(size,))
    g.add_edges_from([("conv1", "add"), ("add", "relu"), ("relu", "conv2")])
    seed = dnnfusion_seed(g)
    assert set(seed.partition.groups.values()) == {
        frozenset({"conv1"}),
        frozenset({"add", "relu", "conv2"}),
    }
    assert [(e.producer, e.consumer) for e in seed.profile_edges] == [("conv1", "add")]
    pred_first = dnnfusion_seed(g, predecessors_first=True)
    assert set(pred_first.partition.groups.values()) == {
        frozenset({"conv1", "add", "relu"}),
        frozenset({"conv2"}),
    }
    assert isinstance(seed_stats(seed), SeedStats)
