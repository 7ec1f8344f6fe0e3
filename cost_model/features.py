"""Features of a scheduled candidate as a graph, and padded batches of such graphs.

One candidate (a task's workload with one schedule trace applied) becomes a `CandidateGraph`:

- store nodes: one per buffer the scheduled PrimFunc writes, carrying MetaSchedule's
  per-store features (`PerStoreFeature`, 164 floats; its rows follow the buffers in the order
  of their first store, which `store_buffer_order` recomputes so that edges can be attached);
- op nodes (optional): one per operator of the group (OpGraph attributes, `OpInfo`);
- edges producer -> consumer: store -> store where a store's value loads a buffer another
  store wrote; op -> op from the OpGraph; op -> store for every pair (an operator's
  computation is spread over the stores of its group: which store implements which operator
  is not recorded after fusion);
- globals: MetaSchedule's 8 workload features and the node counts.

MetaSchedule's per-store features are already log-scaled where they count (`slog(x) =
sign(x) log2(1 + |x|)`, largest about 40 on real workloads), the rest are one-hots and ratios;
the op attributes are raw counts, so they are `log1p`-ed here. `FeatureStats` then
standardises every column with the training set's mean and standard deviation and squashes
the result softly into (-squash, squash) (`squash * tanh(z / squash)`): a column that is
nearly constant in training (standard deviation 0.01) gives z-scores in the hundreds on
another model's graphs, and the model extrapolated from them; held out on 3 models, squash 4
raised top-1 peak from 0.579 to 0.640.

`pad_batch` packs graphs into one `GraphBatch` of fixed sizes (jraph's padding convention:
the last graph is a padding graph that owns every padding node and edge), so that a jitted
model compiles once per bucket (`bucket_size`).
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

__all__ = [
    "GLOBAL_DIM",
    "NODE_DIM",
    "OP_DIM",
    "STORE_DIM",
    "WORKLOAD_DIM",
    "CandidateGraph",
    "Featurizer",
    "FeatureStats",
    "GraphBatch",
    "OpInfo",
    "StoreParts",
    "bucket_size",
    "candidate_graph",
    "op_infos_from_opgraph",
    "pad_batch",
    "replay_trace",
    "store_buffer_order",
]

log = logging.getLogger(__name__)

STORE_DIM = 164  # PerStoreFeature without the workload part
WORKLOAD_DIM = 8  # PerStoreFeature's workload part (the same on every row)
_MAPPINGS = ("one-to-one", "one-to-many", "many-to-many", "reorganize", "shuffle")
_OP_NAME_BUCKETS = 8
# mapping one-hot, complex, log1p flops, log1p bytes, log1p out elements, out rank,
# log1p params, op-name hash buckets
OP_DIM = len(_MAPPINGS) + 6 + _OP_NAME_BUCKETS
NODE_DIM = 2 + STORE_DIM + OP_DIM  # node kind one-hot (store, op) first
GLOBAL_DIM = WORKLOAD_DIM + 2  # workload features, log1p(#stores), log1p(#ops)


# ------------------------------------------------------------------------ plain data


@dataclass(frozen=True)
class OpInfo:
    """What the graph knows of one operator of the group (OpGraph node attributes)."""

    op: str
    flops: float = 0.0
    bytes: float = 0.0
    mapping: str | None = None
    complex: bool = False
    out_shape: tuple[int, ...] = ()
    params: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "out_shape": list(self.out_shape)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OpInfo:
        return cls(**{**data, "out_shape": tuple(data.get("out_shape", ()))})

    def features(self) -> np.ndarray:
        x = np.zeros(OP_DIM, np.float32)
        if self.mapping in _MAPPINGS:
            x[_MAPPINGS.index(self.mapping)] = 1.0
        i = len(_MAPPINGS)
        numel = float(np.prod(self.out_shape)) if self.out_shape else 0.0
        x[i : i + 6] = (
            float(self.complex),
            math.log1p(max(self.flops, 0.0)),
            math.log1p(max(self.bytes, 0.0)),
            math.log1p(numel),
            float(len(self.out_shape)),
            math.log1p(max(self.params, 0.0)),
        )
        x[i + 6 + zlib.crc32(self.op.encode()) % _OP_NAME_BUCKETS] = 1.0
        return x


@dataclass(frozen=True)
class CandidateGraph:
    """One candidate as a graph: plain arrays, no behaviour.

    node_features: (n_node, NODE_DIM) float32, store nodes first, then op nodes.
    senders, receivers: (n_edge,) int32 node indices, producer -> consumer.
    globals: (GLOBAL_DIM,) float32.
    n_store: how many of the nodes are store nodes.
    """

    node_features: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    globals: np.ndarray
    n_store: int

    @property
    def n_node(self) -> int:
        return int(self.node_features.shape[0])

    @property
    def n_edge(self) -> int:
        return int(self.senders.shape[0])


class GraphBatch(NamedTuple):
    """A padded batch of graphs (jraph `GraphsTuple` layout plus the masks a model needs).

    nodes (N, NODE_DIM), senders/receivers (E,), node_graph (N,) the graph of each node,
    n_node/n_edge (B,), globals (B, GLOBAL_DIM), node_mask (N,), graph_mask (B,). The last
    graph is padding (graph_mask False) and owns all padding nodes and edges.
    """

    nodes: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    node_graph: np.ndarray
    n_node: np.ndarray
    n_edge: np.ndarray
    globals: np.ndarray
    node_mask: np.ndarray
    graph_mask: np.ndarray


@dataclass(frozen=True)
class FeatureStats:
    """Per-column standardisation of node features and globals (fit on training graphs),
    then `squash * tanh(z / squash)` on every column but the node-kind one-hots (squash 0:
    none, as in models saved before it existed)."""

    node_mean: np.ndarray
    node_std: np.ndarray
    global_mean: np.ndarray
    global_std: np.ndarray
    squash: float = 0.0

    @classmethod
    def identity(cls) -> FeatureStats:
        return cls(
            np.zeros(NODE_DIM, np.float32),
            np.ones(NODE_DIM, np.float32),
            np.zeros(GLOBAL_DIM, np.float32),
            np.ones(GLOBAL_DIM, np.float32),
        )

    @classmethod
    def fit(cls, graphs: Sequence[CandidateGraph], squash: float = 0.0) -> FeatureStats:
        nodes = np.concatenate([g.node_features for g in graphs]).astype(np.float64)
        glob = np.stack([g.globals for g in graphs]).astype(np.float64)

        def _std(x: np.ndarray) -> np.ndarray:
            std = x.std(axis=0)
            return np.where(std > 1e-6, std, 1.0)

        # the kind one-hots stay as they are: they tell the model what a node is
        node_mean, node_std = nodes.mean(axis=0), _std(nodes)
        node_mean[:2], node_std[:2] = 0.0, 1.0
        return cls(
            node_mean.astype(np.float32),
            node_std.astype(np.float32),
            glob.mean(axis=0).astype(np.float32),
            _std(glob).astype(np.float32),
            float(squash),
        )

    def apply(self, graph: CandidateGraph) -> CandidateGraph:
        nodes = (graph.node_features - self.node_mean) / self.node_std
        glob = (graph.globals - self.global_mean) / self.global_std
        if self.squash > 0:
            c = self.squash
            nodes[:, 2:] = c * np.tanh(nodes[:, 2:] / c)
            glob = c * np.tanh(glob / c)
        return CandidateGraph(
            node_features=nodes.astype(np.float32),
            senders=graph.senders,
            receivers=graph.receivers,
            globals=glob.astype(np.float32),
            n_store=graph.n_store,
        )

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: [float(v) for v in getattr(self, k)]
            for k in self.__dataclass_fields__
            if k != "squash"
        }
        out["squash"] = self.squash
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureStats:
        arrays = {
            k: np.asarray(data[k], np.float32) for k in cls.__dataclass_fields__ if k != "squash"
        }
        return cls(**arrays, squash=float(data.get("squash", 0.0)))


# ------------------------------------------------------------------------ graphs


def candidate_graph(
    store_features: np.ndarray,
    store_edges: Iterable[tuple[int, int]] = (),
    ops: Sequence[OpInfo] = (),
    op_edges: Iterable[tuple[int, int]] = (),
    workload_features: np.ndarray | None = None,
) -> CandidateGraph:
    """A candidate's graph from its parts: per-store features (n_store, 164), store edges
    (producer, consumer) as store indices, the group's operators and their edges as op indices,
    and the 8 workload features."""
    store_features = np.asarray(store_features, np.float32).reshape(-1, STORE_DIM)
    n_store, n_op = store_features.shape[0], len(ops)
    nodes = np.zeros((n_store + n_op, NODE_DIM), np.float32)
    nodes[:n_store, 0] = 1.0
    nodes[:n_store, 2 : 2 + STORE_DIM] = store_features
    for i, op in enumerate(ops):
        nodes[n_store + i, 1] = 1.0
        nodes[n_store + i, 2 + STORE_DIM :] = op.features()
    edges = [(s, r) for s, r in store_edges]
    edges += [(n_store + s, n_store + r) for s, r in op_edges]
    edges += [(n_store + o, s) for o in range(n_op) for s in range(n_store)]
    senders = np.asarray([e[0] for e in edges], np.int32)
    receivers = np.asarray([e[1] for e in edges], np.int32)
    glob = np.zeros(GLOBAL_DIM, np.float32)
    if workload_features is not None:
        glob[:WORKLOAD_DIM] = np.asarray(workload_features, np.float32)
    glob[WORKLOAD_DIM:] = (math.log1p(n_store), math.log1p(n_op))
    return CandidateGraph(nodes, senders, receivers, glob, n_store)


@dataclass(frozen=True)
class StoreParts:
    """What a candidate's schedule contributes to its graph: MetaSchedule's per-store
    feature rows (n_store, STORE_DIM + WORKLOAD_DIM) and the store edges (n, 2). The group's
    operators are added by `graph`."""

    features: np.ndarray
    edges: np.ndarray

    def graph(
        self, ops: Sequence[OpInfo] = (), op_edges: Iterable[tuple[int, int]] = ()
    ) -> CandidateGraph:
        features = self.features
        workload = features[0, STORE_DIM:] if features.shape[0] else None
        edges = [(int(a), int(b)) for a, b in self.edges]
        return candidate_graph(features[:, :STORE_DIM], edges, ops, op_edges, workload)


def bucket_size(n: int, minimum: int = 16) -> int:
    """The padded size for n: the next power of two (at least `minimum`), so that a stream of
    batches compiles a handful of shapes only."""
    return max(minimum, 1 << max(0, math.ceil(math.log2(max(n, 1)))))


def pad_batch(
    graphs: Sequence[CandidateGraph],
    n_node_pad: int | None = None,
    n_edge_pad: int | None = None,
    n_graph_pad: int | None = None,
) -> GraphBatch:
    """Graphs as one padded `GraphBatch`. Sizes default to buckets (`bucket_size`) of what the
    graphs need; n_node_pad must exceed the real nodes (the padding graph needs one node) and
    n_graph_pad the real graphs."""
    n_real_nodes = sum(g.n_node for g in graphs)
    n_real_edges = sum(g.n_edge for g in graphs)
    n_node_pad = n_node_pad or bucket_size(n_real_nodes + 1)
    n_edge_pad = n_edge_pad or bucket_size(n_real_edges)
    n_graph_pad = n_graph_pad or bucket_size(len(graphs) + 1, minimum=2)
    if n_node_pad <= n_real_nodes or n_edge_pad < n_real_edges or n_graph_pad <= len(graphs):
        raise ValueError(
            f"padding ({n_node_pad} nodes, {n_edge_pad} edges, {n_graph_pad} graphs) too small "
            f"for {len(graphs)} graphs of {n_real_nodes} nodes, {n_real_edges} edges"
        )
    nodes = np.zeros((n_node_pad, NODE_DIM), np.float32)
    senders = np.full(n_edge_pad, n_real_nodes, np.int32)
    receivers = np.full(n_edge_pad, n_real_nodes, np.int32)
    n_node = np.zeros(n_graph_pad, np.int32)
    n_edge = np.zeros(n_graph_pad, np.int32)
    glob = np.zeros((n_graph_pad, GLOBAL_DIM), np.float32)
    node_offset = edge_offset = 0
    for i, g in enumerate(graphs):
        nodes[node_offset : node_offset + g.n_node] = g.node_features
        senders[edge_offset : edge_offset + g.n_edge] = g.senders + node_offset
        receivers[edge_offset : edge_offset + g.n_edge] = g.receivers + node_offset
        n_node[i], n_edge[i], glob[i] = g.n_node, g.n_edge, g.globals
        node_offset += g.n_node
        edge_offset += g.n_edge
    n_node[-1] = n_node_pad - n_real_nodes
    n_edge[-1] = n_edge_pad - n_real_edges
    node_graph = np.repeat(np.arange(n_graph_pad, dtype=np.int32), n_node)
    node_mask = np.arange(n_node_pad) < n_real_nodes
    graph_mask = np.arange(n_graph_pad) < len(graphs)
    return GraphBatch(
        nodes, senders, receivers, node_graph, n_node, n_edge, glob, node_mask, graph_mask
    )


# ------------------------------------------------------------------------ from TVM


def op_infos_from_opgraph(
    graph: Any, node_ids: Sequence[str]
) -> tuple[list[OpInfo], list[tuple[int, int]]]:
    """The operators of one group (OpGraph node ids) and their edges inside the group."""
    index = {node_id: i for i, node_id in enumerate(node_ids)}
    ops = []
    for node_id in node_ids:
        attrs = graph.node(node_id)
        mapping = attrs.get("mapping")
        ops.append(
            OpInfo(
                op=str(attrs.get("op", "")),
                flops=float(attrs.get("flops") or 0.0),
                bytes=float(attrs.get("bytes") or 0.0),
                mapping=str(mapping) if mapping is not None else None,
                complex=bool(attrs.get("complex", False)),
                out_shape=tuple(int(d) for d in (attrs.get("out_shape") or ())),
                params=float(attrs.get("params") or 0.0),
            )
        )
    edges = [(index[s], index[r]) for s, r in graph.graph.edges() if s in index and r in index]
    return ops, edges


def replay_trace(workload: Any, trace_json: str | list) -> Any:
    """The schedule of `trace_json` (a datasets/ trace, postprocessing included) replayed on
    the task's workload IRModule."""
    from tvm import s_tir

    trace = json.loads(trace_json) if isinstance(trace_json, str) else trace_json
    sch = s_tir.Schedule(workload)
    s_tir.schedule.Trace.apply_json_to_schedule(trace, sch)
    return sch


def store_buffer_order(func: Any) -> tuple[list[str], list[tuple[int, int]]]:
    """Names of the buffers a PrimFunc stores to, in the order of their first store, and the
    edges (producer, consumer) between them: consumer's stored values load producer's buffer.
    """
    import tvm
    import tvm_ffi
    from tvm import tirx

    order: dict[str, int] = {}
    edges: set[tuple[int, int]] = set()
    stores: list[tuple[str, set[str]]] = []

    def on_store(store: Any) -> None:
        loads: set[str] = set()
        tvm_ffi.structural_walk(
            store.value, [(tvm.ir.TensorLoad, lambda load: loads.add(str(load.source.name)))]
        )
        name = str(store.buffer.name)
        order.setdefault(name, len(order))
        stores.append((name, loads))

    tvm_ffi.structural_walk(func.body, [(tirx.BufferStore, on_store)], order="pre")
    for name, loads in stores:
        for src in loads:
            if src in order and src != name:
                edges.add((order[src], order[name]))
    return list(order), sorted(edges)


def _without_preproc(mod: Any) -> Any:
    """A candidate without the blocks that pack its weights (`ago_search.measure.prepack`):
    they run once at compile time, and MetaSchedule's feature extractor drops them too."""
    func = mod["main"]
    if func.attrs is None or "layout_free_buffers" not in func.attrs:
        return mod
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)


class Featurizer:
    """Turns (workload, trace) pairs or MetaSchedule candidates into `CandidateGraph`s.

    target: the tasks' target (any form `tvm.target.Target` takes). One `TuneContext` is kept
    per workload (structural hash), which feature extraction needs.
    """

    def __init__(self, target: Any) -> None:
        import tvm
        from tvm.s_tir import meta_schedule as ms

        from ago_search.measure import register_cpu_tensor_intrinsics

        if isinstance(target, str):
            target = json.loads(target)
        self.target = target if isinstance(target, tvm.target.Target) else tvm.target.Target(target)
        register_cpu_tensor_intrinsics(self.target)
        self._extractor = ms.feature_extractor.PerStoreFeature(extract_workload=True)
        self._contexts: dict[int, Any] = {}

    def context(self, workload: Any) -> Any:
        import tvm_ffi
        from tvm.s_tir import meta_schedule as ms

        key = int(tvm_ffi.structural_hash(workload))
        if key not in self._contexts:
            self._contexts[key] = ms.TuneContext(
                mod=workload, target=self.target, task_name="features", num_threads=1
            )
        return self._contexts[key]

    def store_parts(self, context: Any, candidates: Sequence[Any]) -> list[StoreParts]:
        """The schedule-dependent part of each candidate's graph (what is worth caching)."""
        matrices = self._extractor.extract_from(context, list(candidates))
        parts = []
        for candidate, matrix in zip(candidates, matrices, strict=True):
            features = matrix.numpy().astype(np.float32)
            names, edges = store_buffer_order(_without_preproc(candidate.sch.mod)["main"])
            n_rows = features.shape[0]
            if len(names) != n_rows:
                # the extractor works on a lowered copy that can differ (a store simplified
                # away): keep the rows, chain them in program order instead
                log.debug("%d stores vs %d feature rows: chained edges", len(names), n_rows)
                edges = [(i, i + 1) for i in range(n_rows - 1)]
            parts.append(StoreParts(features, np.asarray(edges, np.int32).reshape(-1, 2)))
        return parts

    def from_candidates(
        self,
        context: Any,
        candidates: Sequence[Any],
        ops: Sequence[OpInfo] = (),
        op_edges: Sequence[tuple[int, int]] = (),
    ) -> list[CandidateGraph]:
        """Graphs of MetaSchedule `MeasureCandidate`s of one task."""
        return [p.graph(ops, op_edges) for p in self.store_parts(context, candidates)]

    def from_traces(
        self,
        workload: Any,
        traces: Sequence[str | list],
        ops: Sequence[OpInfo] = (),
        op_edges: Sequence[tuple[int, int]] = (),
    ) -> list[CandidateGraph | None]:
        """Graphs of traces of one task's workload; None for a trace that does not replay."""
        return [
            p.graph(ops, op_edges) if p is not None else None
            for p in self.parts_from_traces(workload, traces)
        ]

    def parts_from_traces(
        self, workload: Any, traces: Sequence[str | list]
    ) -> list[StoreParts | None]:
        """`StoreParts` of traces of one task's workload; None for a trace that does not
        replay."""
        from tvm.s_tir import meta_schedule as ms

        candidates, where = [], []
        for i, trace in enumerate(traces):
            try:
                sch = replay_trace(workload, trace)
            except Exception as err:  # a trace of another TVM version, say: skip it
                log.warning("trace %d does not replay: %s", i, str(err).splitlines()[0][:200])
                continue
            candidates.append(
                ms.MeasureCandidate(sch, ms.arg_info.ArgInfo.from_prim_func(sch.mod["main"]))
            )
            where.append(i)
        result: list[StoreParts | None] = [None] * len(traces)
        if not candidates:
            return result
        parts = self.store_parts(self.context(workload), candidates)
        for i, part in zip(where, parts, strict=True):
            result[i] = part
        return result
