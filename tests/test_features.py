"""Cost-model features: store nodes follow MetaSchedule's feature rows, edges run producer ->
consumer, op nodes join when given, padding keeps graphs apart and changes no prediction."""

from __future__ import annotations

import dataclasses

import networkx as nx
import numpy as np
import pytest

from cost_model.features import (
    GLOBAL_DIM,
    NODE_DIM,
    OP_DIM,
    STORE_DIM,
    CandidateGraph,
    FeatureStats,
    OpInfo,
    bucket_size,
    candidate_graph,
    op_infos_from_opgraph,
    pad_batch,
)

TARGET = {"kind": "llvm", "mcpu": "znver3", "num-cores": 1}


@pytest.fixture(scope="module")
def featurizer():
    from cost_model.features import Featurizer

    return Featurizer(TARGET)


@pytest.fixture(scope="module")
def dense_relu():
    from ago_search.schedule.tasks import workload_module
    from cost_model.smoke_data import _dense_bias_relu

    return workload_module(_dense_bias_relu(16, 32, 8))


def _random_graph(rng: np.random.Generator, n_store: int, n_edge: int) -> CandidateGraph:
    edges = [tuple(rng.integers(0, n_store, 2)) for _ in range(n_edge)]
    return candidate_graph(
        rng.standard_normal((n_store, STORE_DIM)).astype(np.float32),
        edges,
        workload_features=rng.standard_normal(8),
    )


def test_unscheduled_function_one_node_per_stored_buffer(featurizer, dense_relu) -> None:
    (graph,) = featurizer.from_traces(dense_relu, [[[], []]])  # the empty trace
    assert graph is not None
    assert graph.n_store == graph.n_node == 3  # D (matmul), E (bias add), F (relu)
    assert graph.node_features.shape == (3, NODE_DIM)
    assert graph.globals.shape == (GLOBAL_DIM,)
    # rows in program order: the matmul multiplies, the bias add adds, the relu compares
    store = graph.node_features[:, 2 : 2 + STORE_DIM]
    float_addsub, float_mul, float_cmp = 1, 2, 4
    assert store[0, float_mul] > 0 and store[1, float_mul] == 0 and store[2, float_mul] == 0
    assert store[1, float_addsub] > 0 and store[2, float_cmp] > 0
    assert sorted(zip(graph.senders.tolist(), graph.receivers.tolist(), strict=True)) == [
        (0, 1),
        (1, 2),
    ]
    assert np.all(graph.node_features[:, 0] == 1) and np.all(graph.node_features[:, 1] == 0)


def test_scheduled_candidate_replays_and_links_stores(featurizer, dense_relu) -> None:
    from tvm import s_tir

    from ago_search.database import trace_to_json

    sch = s_tir.Schedule(dense_relu)
    sch.compute_inline(sch.get_sblock("E"))
    i, j = sch.get_loops(sch.get_sblock("F"))
    sch.parallel(i)
    (graph,) = featurizer.from_traces(dense_relu, [trace_to_json(sch.trace)])
    assert graph.n_store == 2  # E inlined into F
    assert list(zip(graph.senders.tolist(), graph.receivers.tolist(), strict=True)) == [(0, 1)]
    parallel = graph.node_features[:, 2 : 2 + STORE_DIM]
    assert np.isfinite(parallel).all() and np.abs(parallel).max() < 64  # log-scaled
    # a trace that does not replay is None, not an error
    bad = [[["GetSBlock", [], ["nope", "main"], ["b0"]]], []]
    assert featurizer.from_traces(dense_relu, [bad]) == [None]


def test_op_nodes_join_the_graph() -> None:
    g = nx.DiGraph()
    g.add_node(
        "mm",
        op="relax.matmul",
        flops=2 * 16 * 32 * 8,
        bytes=4096,
        mapping="many-to-many",
        complex=True,
        out_shape=(16, 32),
        params=256,
    )
    g.add_node(
        "add",
        op="relax.add",
        flops=512,
        bytes=4096,
        mapping="one-to-one",
        complex=False,
        out_shape=(16, 32),
        params=32,
    )
    g.add_node("other", op="relax.exp")
    g.add_edge("mm", "add")
    g.add_edge("add", "other")

    class _Graph:
        graph = g

        def node(self, node_id):
            return g.nodes[node_id]

    ops, op_edges = op_infos_from_opgraph(_Graph(), ["mm", "add"])
    assert [o.op for o in ops] == ["relax.matmul", "relax.add"] and op_edges == [(0, 1)]
    assert OpInfo.from_json(ops[0].to_json()) == ops[0]
    store = np.ones((2, STORE_DIM), np.float32)
    graph = candidate_graph(store, [(0, 1)], ops, op_edges)
    assert graph.n_node == 4 and graph.n_store == 2
    assert graph.node_features[2:, 1].tolist() == [1.0, 1.0]
    op_part = graph.node_features[2, 2 + STORE_DIM :]
    assert op_part.shape == (OP_DIM,) and op_part[2] == 1.0  # many-to-many
    edges = set(zip(graph.senders.tolist(), graph.receivers.tolist(), strict=True))
    assert edges == {(0, 1), (2, 3), (2, 0), (2, 1), (3, 0), (3, 1)}
    without = candidate_graph(store, [(0, 1)])
    assert without.n_node == 2 and without.globals[-1] == 0.0 and graph.globals[-1] > 0


def test_pad_batch_shapes_and_offsets() -> None:
    rng = np.random.default_rng(0)
    graphs = [_random_graph(rng, n, e) for n, e in [(3, 2), (1, 0), (5, 7)]]
    batch = pad_batch(graphs, 16, 16, 4)
    assert batch.nodes.shape == (16, NODE_DIM) and batch.senders.shape == (16,)
    assert batch.n_node.tolist() == [3, 1, 5, 7] and batch.n_edge.tolist() == [2, 0, 7, 7]
    assert batch.node_mask.sum() == 9 and batch.graph_mask.tolist() == [1, 1, 1, 0]
    assert batch.node_graph.tolist() == [0] * 3 + [1] + [2] * 5 + [3] * 7
    # edges of graph 2 point into graph 2's nodes; padding edges at the padding graph
    assert np.all(batch.senders[2:9] >= 4) and np.all(batch.senders[2:9] < 9)
    assert np.all(batch.senders[9:] == 9)
    np.testing.assert_array_equal(batch.nodes[4:9], graphs[2].node_features)
    with pytest.raises(ValueError, match="too small"):
        pad_batch(graphs, 9, 16, 4)
    default = pad_batch(graphs)
    assert default.nodes.shape[0] == bucket_size(10) and default.n_node.shape[0] == 4
    assert bucket_size(17) == 32 and bucket_size(3) == 16


@pytest.mark.slow
def test_padding_does_not_change_predictions() -> None:
    from cost_model.configs.default import Config
    from cost_model.train import create_model

    rng = np.random.default_rng(1)
    graphs = [_random_graph(rng, n, e) for n, e in [(3, 2), (2, 1), (6, 9), (1, 0)]]
    model = create_model(Config(hidden=16, num_layers=2))
    tight = np.asarray(model(pad_batch(graphs, 13, 12, 5)))[:4]
    loose = np.asarray(model(pad_batch(graphs, 64, 128, 16)))[:4]
    alone = [float(model(pad_batch([g], 16, 16, 2))[0]) for g in graphs]
    np.testing.assert_allclose(tight, loose, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tight, alone, rtol=1e-5, atol=1e-5)


def test_feature_stats_standardise_and_round_trip() -> None:
    rng = np.random.default_rng(2)
    graphs = [_random_graph(rng, 4, 3) for _ in range(20)]
    stats = FeatureStats.fit(graphs)
    normed = np.concatenate([stats.apply(g).node_features for g in graphs])
    varying = np.concatenate([g.node_features for g in graphs]).std(0) > 1e-6
    varying[:2] = False
    np.testing.assert_allclose(normed[:, varying].mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(normed[:, varying].std(0), 1, atol=1e-3)
    again = FeatureStats.from_json(stats.to_json())
    np.testing.assert_allclose(again.node_std, stats.node_std)
    assert FeatureStats.identity().apply(graphs[0]).node_features.tolist() == (
        graphs[0].node_features.tolist()
    )


def test_feature_squash_bounds_outliers_keeps_order_and_round_trips() -> None:
    rng = np.random.default_rng(3)
    graphs = [_random_graph(rng, 4, 3) for _ in range(20)]
    plain, squashed = FeatureStats.fit(graphs), FeatureStats.fit(graphs, squash=4.0)
    # a held-out graph far outside the training range (a nearly constant column's jump)
    far = dataclasses.replace(graphs[0], node_features=graphs[0].node_features * 1000.0)
    z, s = plain.apply(far).node_features, squashed.apply(far).node_features
    assert np.abs(z[:, 2:]).max() > 100
    assert np.abs(s[:, 2:]).max() <= 4.0
    np.testing.assert_array_equal(s[:, :2], z[:, :2])  # the node-kind one-hots stay
    # monotone: in-range values keep their order, far ones saturate towards +-4
    zs = np.concatenate([plain.apply(g).node_features[:, 2:] for g in (graphs[1], far)]).ravel()
    ss = np.concatenate([squashed.apply(g).node_features[:, 2:] for g in (graphs[1], far)])
    assert np.all(np.diff(ss.ravel()[np.argsort(zs)]) >= 0)
    assert np.abs(squashed.apply(far).globals).max() <= 4.0
    again = FeatureStats.from_json(squashed.to_json())
    assert again.squash == 4.0
    np.testing.assert_allclose(again.apply(far).node_features, s)
    legacy = {k: v for k, v in squashed.to_json().items() if k != "squash"}
    assert FeatureStats.from_json(legacy).squash == 0.0
