"""Tests of ago_search.partition's Partition: moves keep the quotient acyclic, refusals are right.

Property tests run random sequences of moves (legal or not) on random DAGs and compare every
outcome with a brute-force networkx check of the partition the move would have produced.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import networkx as nx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from ago_search.partition import (
    GroupStats,
    Illegal,
    Partition,
    convexity_witness,
    from_assignment,
    graph_index,
    host_cache_bytes,
    parse_cache_size,
    quotient_cycle,
    singletons,
)
from ago_search.partition.cache import DEFAULT_CACHE_BYTES

MAPPINGS = ("one-to-one", "one-to-many", "many-to-many", "reorganize", "shuffle")
PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# --------------------------------------------------------------------------------------------
# random graphs and brute-force checks


@st.composite
def dags(draw, min_nodes: int = 5, max_nodes: int = 60) -> nx.DiGraph:
    """A DAG with OpGraph-like attributes; nodes inserted in a shuffled order, edges mostly
    between nearby nodes (as in real models) plus a few long ones."""
    n = draw(st.integers(min_nodes, max_nodes))
    near = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(1, 4)), max_size=2 * n))
    far = draw(st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)), max_size=n // 2))
    kinds = draw(st.lists(st.sampled_from(MAPPINGS), min_size=n, max_size=n))
    insertion = draw(st.permutations(range(n)))
    edges = {(i, i + d) for i, d in near if i + d < n}
    edges |= {(min(i, j), max(i, j)) for i, j in far if i != j}
    g = nx.DiGraph()
    for i in insertion:
        kind = kinds[i]
        is_complex = kind == "many-to-many" and i % 2 == 0
        g.add_node(
            f"v{i}",
            mapping=kind,
            complex=is_complex,
            flops=10 * (i + 1),
            bytes=100 + i,
            params=64 * (i % 3) if is_complex else 0,
            out_shape=(1 + i % 7, 8),
            dtype="float32",
        )
    for i, j in sorted(edges):
        g.add_edge(f"v{i}", f"v{j}", bytes=4 * 8 * (1 + i % 7))
    return g


def brute_quotient(graph: nx.DiGraph, assign: Mapping) -> nx.DiGraph:
    q = nx.DiGraph()
    q.add_nodes_from(set(assign.values()))
    q.add_edges_from((assign[u], assign[v]) for u, v in graph.edges if assign[u] != assign[v])
    return q


def brute_is_acyclic(graph: nx.DiGraph, assign: Mapping) -> bool:
    return nx.is_directed_acyclic_graph(brute_quotient(graph, assign))


class Closure:
    """Descendants and ancestors of every node, for brute-force convexity checks."""

    def __init__(self, graph: nx.DiGraph):
        self.desc = {n: nx.descendants(graph, n) for n in graph}
        self.anc = {n: nx.ancestors(graph, n) for n in graph}

    def is_convex(self, nodes: frozenset) -> bool:
        below = set().union(*(self.desc[n] for n in nodes))
        above = set().union(*(self.anc[n] for n in nodes))
        return not ((below & above) - nodes)


def check_invariants(p: Partition, graph: nx.DiGraph, closure: Closure) -> None:
    assign = p.assignment()
    assert set(assign) == set(graph.nodes)
    groups = p.groups
    assert sorted(n for members in groups.values() for n in members) == sorted(graph.nodes)
    assert all(assign[n] == g for g, members in groups.items() for n in members)
    assert set(groups) == set(p.group_ids)

    q = brute_quotient(graph, assign)
    assert nx.is_directed_acyclic_graph(q)
    assert set(q.edges) == set(p.quotient.edges)
    position = {g: i for i, g in enumerate(p.group_ids)}
    assert all(position[a] < position[b] for a, b in q.edges), "group order is not topological"
    for g in p.group_ids:
        assert p.successors(g) == frozenset(q.successors(g))
        assert p.predecessors(g) == frozenset(q.predecessors(g))
        assert closure.is_convex(groups[g]), f"g{g} is not convex"


def merged_assignment(assign: Mapping, groups: set, keep) -> dict:
    return {n: keep if g in groups else g for n, g in assign.items()}


# --------------------------------------------------------------------------------------------
# interpreting random move sequences


MOVE = st.tuples(
    st.sampled_from(
        ["merge", "merge_near", "merge_2hop", "merge_many", "split", "move", "move_far"]
    ),
    st.integers(0, 2**62),
    st.integers(0, 2**62),
)


def note(what: str) -> None:
    """A hypothesis event (shown by --hypothesis-show-statistics) when inside a property test."""
    if currently_in_test_context():
        event(what)


def pick(items, k: int):
    items = list(items)
    return items[k % len(items)]


def apply_and_check(p: Partition, move: tuple, graph: nx.DiGraph, closure: Closure) -> Partition:
    """Apply one random move; check a refusal against brute force; return the new partition."""
    kind, x, y = move
    assign = p.assignment()
    ids = p.group_ids
    if kind in ("merge", "merge_near", "merge_2hop"):
        a = pick(ids, x)
        near = sorted(p.neighbours(a))
        two_hops = sorted({c for s in p.successors(a) for c in p.successors(s)})
        if kind == "merge_near" and near:
            b = pick(near, y)
        elif kind == "merge_2hop" and two_hops:
            b = pick(two_hops, y)
        else:
            b = pick(ids, y)
        result = p.merge(a, b)
        if a == b:
            assert isinstance(result, Illegal)
            return p
        expected = merged_assignment(assign, {a, b}, min(a, b))
        assert p.merge_is_acyclic(a, b) == brute_is_acyclic(graph, expected)
    elif kind == "merge_many":
        chosen = {pick(ids, x >> (8 * k)) for k in range(1 + x % 3)} | {pick(ids, y)}
        result = p.merge_many(chosen)
        if len(chosen) < 2:
            assert isinstance(result, Illegal)
            return p
        expected = merged_assignment(assign, chosen, min(chosen))
    elif kind == "split":
        g = pick(ids, x)
        nodes = p.nodes_of(g)
        part = {n for k, n in enumerate(nodes) if (y >> k) & 1}
        result = p.split(g, part)
        if not part or len(part) == len(nodes):
            assert isinstance(result, Illegal)
            return p
        new_id = max(ids) + 1
        expected = {n: (new_id if n in part else gid) for n, gid in assign.items()}
    else:
        node = pick(sorted(graph.nodes), x)
        adjacent = sorted(
            {assign[m] for m in (*graph.successors(node), *graph.predecessors(node))}
            - {assign[node]}
        )
        to_group = pick(ids, y) if kind == "move_far" or not adjacent else pick(adjacent, y)
        result = p.move(node, to_group)
        if to_group not in adjacent:
            assert isinstance(result, Illegal)
            return p
        expected = {**assign, node: to_group}

    if brute_is_acyclic(graph, expected):
        note(f"{kind}: legal")
        assert isinstance(result, Partition), f"{kind} refused a legal move: {result}"
        assert result.assignment() == expected, "the move did not give the expected groups"
        check_invariants(result, graph, closure)
        return result
    note(f"{kind}: refused, cycle")
    assert isinstance(result, Illegal), f"{kind} allowed a move that makes a cycle"
    assert "cycle" in result.reason
    return p


def interval_partition(graph: nx.DiGraph, cuts: list[int]) -> Partition:
    """Contiguous blocks of a topological order: always a valid partition."""
    order = list(nx.topological_sort(graph))
    bounds = sorted({c % len(order) for c in cuts} | {0})
    label = {}
    for block, start in enumerate(bounds):
        end = bounds[block + 1] if block + 1 < len(bounds) else len(order)
        for n in order[start:end]:
            label[n] = block
    return from_assignment(graph, label)


# --------------------------------------------------------------------------------------------
# property tests


@PROPERTY_SETTINGS
@given(
    graph=dags(),
    cuts=st.lists(st.integers(0, 1000), max_size=8),
    from_blocks=st.booleans(),
    moves=st.lists(MOVE, min_size=10, max_size=60),
)
def test_random_moves_keep_the_quotient_acyclic(graph, cuts, from_blocks, moves):
    closure = Closure(graph)
    p = interval_partition(graph, cuts) if from_blocks else singletons(graph)
    check_invariants(p, graph, closure)
    for move in moves:
        p = apply_and_check(p, move, graph, closure)


@settings(max_examples=60, deadline=None)
@given(graph=dags(max_nodes=40), moves=st.lists(MOVE, min_size=5, max_size=40))
def test_merge_is_acyclic_agrees_with_brute_force_on_every_pair(graph, moves):
    closure = Closure(graph)
    p = singletons(graph)
    for move in moves:
        p = apply_and_check(p, move, graph, closure)
    assign = p.assignment()
    ids = p.group_ids
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            expected = brute_is_acyclic(graph, merged_assignment(assign, {a, b}, min(a, b)))
            assert p.merge_is_acyclic(a, b) == expected, (a, b)


@settings(max_examples=60, deadline=None)
@given(graph=dags(), cuts=st.lists(st.integers(0, 1000), max_size=10))
def test_groups_between_is_what_lies_on_paths(graph, cuts):
    p = interval_partition(graph, cuts)
    q = brute_quotient(graph, p.assignment())
    for a in p.group_ids:
        for b in p.group_ids:
            expected = (nx.descendants(q, a) | {a}) & (nx.ancestors(q, b) | {b})
            if b not in nx.descendants(q, a) | {a}:
                expected = set()
            assert p.groups_between(a, b) == expected
            if len(expected) >= 2:
                assert isinstance(p.merge_many(expected), Partition)


@settings(max_examples=80, deadline=None)
@given(
    graph=dags(),
    cuts=st.lists(st.integers(0, 1000), max_size=8),
    shift=st.integers(1, 1000),
    moves=st.lists(MOVE, max_size=10),
)
def test_json_round_trip_and_fingerprint_ignore_numbering(graph, cuts, shift, moves):
    closure = Closure(graph)
    p = interval_partition(graph, cuts)
    for move in moves:
        p = apply_and_check(p, move, graph, closure)
    back = Partition.from_json(graph, json.dumps(json.loads(p.to_json())))
    assert back.assignment() == p.assignment()
    assert back == p and back.fingerprint() == p.fingerprint()

    renumbered = from_assignment(graph, {n: 7 * g + shift for n, g in p.assignment().items()})
    assert renumbered == p
    assert renumbered.fingerprint() == p.fingerprint()
    assert hash(renumbered) == hash(p)
    assert p.canonical() == p
    if p.num_groups > 1:
        assert (
            singletons(graph).fingerprint()
            != from_assignment(graph, dict.fromkeys(graph.nodes, 0)).fingerprint()
        )


# --------------------------------------------------------------------------------------------
# worked examples


def chain(*names: str) -> nx.DiGraph:
    g = nx.DiGraph()
    g.add_nodes_from(names)
    g.add_edges_from(zip(names, names[1:], strict=False))
    return g


def test_merge_through_a_third_group_is_refused_with_the_path():
    g = chain("a", "b", "c")
    p = singletons(g)
    result = p.merge(0, 2)
    assert result == Illegal("merging g0 and g2 would create a cycle through g1 (g0 -> g1 -> g2)")
    assert not result
    assert not p.merge_is_acyclic(0, 2)
    assert p.merge_is_acyclic(0, 1)
    merged = p.merge(0, 1)
    assert isinstance(merged, Partition)
    assert merged.groups == {0: frozenset({"a", "b"}), 2: frozenset({"c"})}


def test_split_and_move_refusals_say_why():
    g = chain("a", "b", "c")
    whole = from_assignment(g, {"a": 0, "b": 0, "c": 0})
    split = whole.split(0, {"a", "c"})
    assert isinstance(split, Illegal)
    assert "'a' -> 'b'" in split.reason and "'b' -> 'c'" in split.reason
    assert isinstance(whole.split(0, set()), Illegal)
    assert isinstance(whole.split(0, {"a", "b", "c"}), Illegal)
    assert isinstance(whole.split(0, {"zz"}), Illegal)
    halves = whole.split(0, {"c"})
    assert isinstance(halves, Partition)
    assert halves.groups == {0: frozenset({"a", "b"}), 1: frozenset({"c"})}

    p = from_assignment(g, {"a": 0, "b": 1, "c": 1})
    moved = p.move("b", 0)
    assert isinstance(moved, Partition) and moved.groups == {
        0: frozenset({"a", "b"}),
        1: frozenset({"c"}),
    }
    q = from_assignment(chain("a", "b", "c", "d"), {"a": 0, "b": 0, "c": 0, "d": 1})
    refused = q.move("b", 1)
    assert isinstance(refused, Illegal) and "no edge" in refused.reason
    assert isinstance(q.move("c", 1), Partition)
    refused = q.move("a", 0)
    assert isinstance(refused, Illegal) and "already" in refused.reason
    # b sits between a and c inside one group: it cannot leave it for d's group
    h = chain("a", "b", "c")
    h.add_edge("b", "d")
    r = from_assignment(h, {"a": 0, "b": 0, "c": 0, "d": 1})
    refused = r.move("b", 1)
    assert isinstance(refused, Illegal) and "cycle between the two halves" in refused.reason


def test_move_into_a_group_across_a_path_is_refused():
    # a -> b -> c and a -> c; groups {a}, {b}, {c}: moving c into {a} leaves b between them
    g = chain("a", "b", "c")
    g.add_edge("a", "c")
    p = singletons(g)
    result = p.move("c", 0)
    assert isinstance(result, Illegal)
    assert result.reason == (
        "moving 'c' from g2 to g0 would create a cycle through g1 (g0 -> g1 -> g2)"
    )


def test_from_assignment_validates():
    g = chain("a", "b", "c")
    with pytest.raises(ValueError, match="cycle"):
        from_assignment(g, {"a": 0, "b": 1, "c": 0})
    with pytest.raises(ValueError, match="no group"):
        from_assignment(g, {"a": 0, "b": 1})
    with pytest.raises(ValueError, match="not in the graph"):
        from_assignment(g, {"a": 0, "b": 1, "c": 2, "d": 3})
    named = from_assignment(g, {"a": "x", "b": "x", "c": "y"})
    assert named.groups == {0: frozenset({"a", "b"}), 1: frozenset({"c"})}
    with pytest.raises(ValueError, match="two groups"):
        Partition.from_dict(
            g,
            {
                "kind": "ago-search.partition",
                "version": 1,
                "groups": [{"id": 0, "nodes": ["a", "b"]}, {"id": 1, "nodes": ["b", "c"]}],
            },
        )
    with pytest.raises(ValueError, match="cycle"):
        graph_index(nx.DiGraph([("a", "b"), ("b", "a")]))


def test_partition_is_immutable():
    p = singletons(chain("a", "b"))
    with pytest.raises(AttributeError):
        p._assign = (0, 0)
    with pytest.raises(TypeError):
        Partition()
    merged = p.merge(0, 1)
    assert p.num_groups == 2 and merged.num_groups == 1


def test_group_stats_count_borders_weights_and_buffers():
    # x -> conv -> relu -> out, conv also feeds y outside
    g = nx.DiGraph()
    g.add_node("x", mapping="one-to-one", out_shape=(10,), dtype="float32", flops=10)
    g.add_node(
        "conv",
        mapping="many-to-many",
        complex=True,
        params=100,
        out_shape=(20,),
        dtype="float32",
        flops=1000,
    )
    g.add_node("relu", mapping="one-to-one", out_shape=(20,), dtype="float32", flops=20)
    g.add_node("mm", mapping="many-to-many", complex=True, out_shape=(5,), dtype="float32")
    g.add_node("y", mapping="one-to-one", out_shape=(20,), dtype="float32")
    g.add_edge("x", "conv", bytes=40)
    g.add_edge("conv", "relu", bytes=80)
    g.add_edge("relu", "mm", bytes=80)
    g.add_edge("conv", "y", bytes=80)
    p = from_assignment(g, {"x": 0, "conv": 1, "relu": 1, "mm": 1, "y": 2})
    s = p.group_stats(1)
    assert s == GroupStats(
        nodes=3,
        flops=1020,
        bytes=0,
        complex_ops=2,
        param_bytes=400,
        input_bytes=40,
        output_bytes=80 + 20,  # conv's output leaves to y; mm is a model output (no successor)
        internal_bytes=80,  # relu's output
        materialized_bytes=0,  # relu is one-to-one: inlined into mm
    )
    assert s.working_set_bytes == 400 + 40 + 100
    assert p.group_stats(0, 1).input_bytes == 0
    assert p.neighbours(1) == {0, 2}


def test_host_cache_bytes_reads_l2(tmp_path):
    for i, (level, kind, size) in enumerate(
        [
            (1, "Data", "32K"),
            (1, "Instruction", "32K"),
            (2, "Unified", "1024K"),
            (3, "Unified", "32M"),
        ]
    ):
        d = tmp_path / f"index{i}"
        d.mkdir()
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    assert host_cache_bytes(tmp_path) == 1024 * 1024
    assert host_cache_bytes(tmp_path, level=3) == 32 * 1024 * 1024
    assert host_cache_bytes(tmp_path / "missing") == DEFAULT_CACHE_BYTES
    assert host_cache_bytes() > 0
    assert parse_cache_size("512K") == 512 * 1024
    assert parse_cache_size("nonsense") is None


def test_long_random_walks():
    """Many moves in a row on a few fixed random DAGs (volume the property tests lack)."""
    import random

    for seed in range(3):
        rng = random.Random(seed)
        n = 40
        graph = nx.DiGraph()
        graph.add_nodes_from(f"v{i}" for i in range(n))
        for j in range(n):
            for i in range(max(0, j - 5), j):
                if rng.random() < 0.35:
                    graph.add_edge(f"v{i}", f"v{j}", bytes=4)
        closure = Closure(graph)
        p = singletons(graph)
        kinds = ["merge", "merge_near", "merge_2hop", "merge_many", "split", "move", "move_far"]
        for _ in range(400):
            move = (rng.choice(kinds), rng.getrandbits(62), rng.getrandbits(62))
            p = apply_and_check(p, move, graph, closure)


def test_pickle_and_copy_keep_the_partition():
    import copy
    import pickle

    g = chain("a", "b", "c", "d")
    p = singletons(g).merge(1, 2)
    q, r = pickle.loads(pickle.dumps((p, p.split(1, {"c"}))))
    assert q == p and q.group_ids == p.group_ids and q.assignment() == p.assignment()
    assert r.index is q.index
    assert isinstance(q.merge(0, 1), Partition)
    assert copy.deepcopy(p) == p


@PROPERTY_SETTINGS
@given(graph=dags(max_nodes=30), data=st.data())
def test_acyclicity_checks_agree_with_brute_force(graph, data):
    """The checks plans use: a node set's convexity witness and an assignment's quotient cycle."""
    closure = Closure(graph)
    nodes = sorted(graph.nodes)
    members = frozenset(data.draw(st.lists(st.sampled_from(nodes), min_size=1, max_size=8)))
    witness = convexity_witness(graph, members)
    assert (witness is None) == closure.is_convex(members)
    if witness is not None:
        a, x, b = witness
        assert a in members and b in members and x not in members
        assert graph.has_edge(a, x) and nx.has_path(graph, x, b)
    labels = data.draw(st.lists(st.integers(0, 3), min_size=len(nodes), max_size=len(nodes)))
    assign = dict(zip(nodes, labels, strict=True))
    cycle = quotient_cycle(graph, assign)
    assert (cycle is None) == brute_is_acyclic(graph, assign)
    if cycle is not None:
        q = brute_quotient(graph, assign)
        assert all(q.has_edge(u, v) for u, v in zip(cycle, [*cycle[1:], cycle[0]], strict=True))
