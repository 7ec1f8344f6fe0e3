"""A compact, read-only view of an operator graph that partitions share.

Every `Partition` of one graph points at the same `GraphIndex`: node ids in a topological order,
integer positions, successor/predecessor tuples and the per-node numbers the group statistics
need. Moves then work on small integers and tuples instead of networkx lookups.

The graph is an `OpGraph` (its `order` is the topological order) or a plain `nx.DiGraph`
(topological order from networkx, deterministic for a given insertion order). Node attributes
read, all optional for a plain DiGraph: `flops`, `bytes`, `complex`, `params` (elements of
constants), `dtype`, `out_shapes` / `out_shape`, `mapping`, `inputs` + `in_shapes` (reads of
"input:<name>" model inputs), `primfunc` (present and None: the node cannot be fused). Edges:
`bytes`. The graph must not change once partitions of it exist.
"""

from __future__ import annotations

import math
import re
import weakref
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import networkx as nx

from ago_search.graph.mapping import MappingType
from ago_search.graph.opgraph import OpGraph

Node = Hashable

INPUT_PREFIX = "input:"

# Outputs of these ops are assumed computed inside their consumers' loops when they stay inside
# a group (TVM inlines elementwise and index-remapping stages), so they take no buffer of their
# own in the working-set estimate.
_INLINED_MAPPINGS = frozenset(
    {MappingType.ONE_TO_ONE.value, MappingType.REORGANIZE.value, MappingType.SHUFFLE.value}
)

_DTYPE_BITS = re.compile(r"(\d+)(x\d+)?$")


def dtype_bytes(dtype: str) -> int:
    """Bytes of one element of `dtype` ("float32" -> 4, "bool" -> 1); 4 when unknown."""
    if not dtype:
        return 4
    if dtype == "bool":
        return 1
    m = _DTYPE_BITS.search(dtype)
    if m is None:
        return 4
    lanes = int(m.group(2)[1:]) if m.group(2) else 1
    return max(1, (int(m.group(1)) * lanes + 7) // 8)


def _shape_bytes(shape: Sequence[int], dtype: str) -> int:
    return math.prod(int(d) for d in shape) * dtype_bytes(dtype)


@dataclass(frozen=True, eq=False)
class GraphIndex:
    """Node ids, positions, adjacency and per-node numbers of one graph (see module docstring).

    Position i is `nodes[i]`; positions follow a topological order, so every edge goes from a
    lower position to a higher one.
    """

    graph: nx.DiGraph
    nodes: tuple[Node, ...]
    position: Mapping[Node, int]
    succ: tuple[tuple[int, ...], ...]
    pred: tuple[tuple[int, ...], ...]
    edge_bytes: Mapping[tuple[int, int], int]
    flops: tuple[int, ...]
    node_bytes: tuple[int, ...]
    complex: tuple[bool, ...]
    mapping: tuple[str, ...]
    fusable: tuple[bool, ...]
    param_bytes: tuple[int, ...]
    out_bytes: tuple[int, ...]
    inlined: tuple[bool, ...]  # output inlined into consumers when it stays in the group
    model_inputs: tuple[tuple[tuple[str, int], ...], ...]  # (input name, bytes) read per node
    is_output: tuple[bool, ...]  # the node's value is a model output

    def __len__(self) -> int:
        return len(self.nodes)


_INDEX_CACHE: weakref.WeakKeyDictionary[nx.DiGraph, GraphIndex] = weakref.WeakKeyDictionary()


def graph_index(graph: OpGraph | nx.DiGraph | GraphIndex) -> GraphIndex:
    """The index of `graph`, built once per DiGraph object and shared afterwards."""
    if isinstance(graph, GraphIndex):
        return graph
    digraph = graph.graph if isinstance(graph, OpGraph) else graph
    if not isinstance(digraph, nx.DiGraph):
        raise TypeError(f"expected an OpGraph or a networkx DiGraph, got {type(graph).__name__}")
    cached = _INDEX_CACHE.get(digraph)
    if cached is not None:
        return cached
    if isinstance(graph, OpGraph):
        order = tuple(graph.order)
        outputs = {o for o in graph.outputs if o in digraph}
    else:
        if not nx.is_directed_acyclic_graph(digraph):
            raise ValueError("the graph has a cycle; a partition needs a DAG")
        order = tuple(nx.topological_sort(digraph))
        declared = digraph.graph.get("outputs")
        if declared is not None:
            outputs = {o for o in declared if o in digraph}
        else:
            outputs = {n for n in order if digraph.out_degree(n) == 0}
    index = _build_index(digraph, order, outputs)
    _INDEX_CACHE[digraph] = index
    return index


def shared_index(index: GraphIndex) -> GraphIndex:
    """The index registered for `index.graph` (registering `index` when there is none): lets
    partitions unpickled from one message share one index."""
    return _INDEX_CACHE.setdefault(index.graph, index)


def _build_index(digraph: nx.DiGraph, order: tuple[Node, ...], outputs: set[Node]) -> GraphIndex:
    if len(order) != digraph.number_of_nodes() or set(order) != set(digraph.nodes):
        raise ValueError("the graph's order does not list every node exactly once")
    position = {n: i for i, n in enumerate(order)}
    succ = tuple(tuple(sorted(position[v] for v in digraph.successors(n))) for n in order)
    pred = tuple(tuple(sorted(position[u] for u in digraph.predecessors(n))) for n in order)
    for i, targets in enumerate(succ):
        if targets and targets[0] <= i:
            raise ValueError(f"the order is not topological at node {order[i]!r}")
    edge_bytes = {
        (position[u], position[v]): int(d.get("bytes", 0)) for u, v, d in digraph.edges(data=True)
    }

    flops, node_bytes, complex_, mapping, fusable = [], [], [], [], []
    param_bytes, out_bytes, inlined, model_inputs = [], [], [], []
    for i, n in enumerate(order):
        a = digraph.nodes[n]
        dtype = str(a.get("dtype") or "float32")
        flops.append(int(a.get("flops", 0)))
        node_bytes.append(int(a.get("bytes", 0)))
        is_complex = bool(a.get("complex", False))
        complex_.append(is_complex)
        kind = str(a.get("mapping", MappingType.MANY_TO_MANY.value))
        mapping.append(kind)
        fusable.append(not ("primfunc" in a and a["primfunc"] is None))
        param_bytes.append(int(a.get("params", 0)) * dtype_bytes(dtype))
        out_bytes.append(_out_bytes(a, dtype, [edge_bytes[(i, j)] for j in succ[i]]))
        inlined.append(kind in _INLINED_MAPPINGS and not is_complex)
        model_inputs.append(_model_inputs(a, dtype))
    return GraphIndex(
        graph=digraph,
        nodes=order,
        position=position,
        succ=succ,
        pred=pred,
        edge_bytes=edge_bytes,
        flops=tuple(flops),
        node_bytes=tuple(node_bytes),
        complex=tuple(complex_),
        mapping=tuple(mapping),
        fusable=tuple(fusable),
        param_bytes=tuple(param_bytes),
        out_bytes=tuple(out_bytes),
        inlined=tuple(inlined),
        model_inputs=tuple(model_inputs),
        is_output=tuple(n in outputs for n in order),
    )


def _out_bytes(attrs: Mapping[str, Any], dtype: str, out_edge_bytes: list[int]) -> int:
    shapes = attrs.get("out_shapes")
    if shapes is None and attrs.get("out_shape") is not None:
        shapes = [attrs["out_shape"]]
    if shapes:
        return sum(_shape_bytes(s, dtype) for s in shapes)
    return max(out_edge_bytes, default=0)


def _model_inputs(attrs: Mapping[str, Any], dtype: str) -> tuple[tuple[str, int], ...]:
    refs = attrs.get("inputs") or ()
    shapes = attrs.get("in_shapes") or ()
    found: dict[str, int] = {}
    for ref, shape in zip(refs, shapes, strict=False):
        if isinstance(ref, str) and ref.startswith(INPUT_PREFIX):
            found[ref] = _shape_bytes(shape, dtype)
    return tuple(sorted(found.items()))
