"""Acyclicity of node -> group maps: the one implementation partitions and plans share.

The quotient graph of a map has one node per group and an edge where a graph edge crosses from
one group to another. A map is a legal partition iff its quotient is a DAG; that also makes every
group convex (a path that left a group and came back would be a cycle of the quotient).

- `escape_path` is the pruned DFS that decides whether a set of vertices can be contracted
  without a cycle; `Partition` runs it on its quotient (merges), `convexity_witness` on the
  graph's nodes (is one group convex).
- `topological_groups` is Kahn's algorithm with deterministic ties; `from_assignment` builds a
  Partition's group order with it, `quotient_cycle` reports the cycle of an illegal map.
- `quotient_graph` is the quotient of any map (legal or not) as a networkx graph, for checks
  and inspection; nothing here relies on it.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence

import networkx as nx

from ago_search.graph.opgraph import OpGraph
from ago_search.partition.index import GraphIndex, Node, graph_index

Adjacency = Mapping[int, Iterable[int]] | Sequence[Iterable[int]]
Ranks = Mapping[int, int] | Sequence[int]


def escape_path(
    sources: Collection[int], succ: Adjacency, rank: Ranks
) -> tuple[list[int] | None, set[int]]:
    """A path that leaves the vertex set `sources` and re-enters it (first and last element in
    the set), or None; and the vertices outside the set that it reaches below its highest rank
    (all of them when there is no such path).

    `rank` is a topological order of the vertices (vertex -> position). A path back into the set
    only visits vertices ranked below the set's highest member, so the DFS is pruned there: its
    cost is that of the rank window [lowest source, highest source], not of the graph.
    """
    top = max(rank[s] for s in sources)
    parent: dict[int, int] = {}
    stack: list[int] = []
    for s in sorted(sources, key=rank.__getitem__):
        for x in succ[s]:
            if x not in sources and rank[x] < top and x not in parent:
                parent[x] = s
                stack.append(x)
    while stack:
        x = stack.pop()
        for y in succ[x]:
            if y in sources:
                path = [y, x]
                while path[-1] not in sources:
                    path.append(parent[path[-1]])
                return path[::-1], set(parent)
            if rank[y] < top and y not in parent:
                parent[y] = x
                stack.append(y)
    return None, set(parent)


def convexity_witness(
    graph: OpGraph | nx.DiGraph | GraphIndex, members: Iterable[Node]
) -> tuple[Node, Node, Node] | None:
    """(member, outside node, member) on a path that leaves the node set `members` and comes
    back, or None when the set is convex (what a group must be)."""
    index = graph_index(graph)
    positions = {index.position[n] for n in members}
    if not positions:
        return None
    # node positions follow a topological order: each node is its own rank
    path, _ = escape_path(positions, index.succ, range(len(index)))
    if path is None:
        return None
    nodes = index.nodes
    return nodes[path[0]], nodes[path[1]], nodes[path[-1]]


def quotient_sets(
    index: GraphIndex, assign: Sequence[int]
) -> tuple[dict[int, set[int]], dict[int, set[int]], dict[int, set[int]]]:
    """(members, successors, predecessors) per group id of the map node position -> `assign`."""
    members: dict[int, set[int]] = {}
    for i, g in enumerate(assign):
        members.setdefault(g, set()).add(i)
    succ: dict[int, set[int]] = {g: set() for g in members}
    pred: dict[int, set[int]] = {g: set() for g in members}
    for u, vs in enumerate(index.succ):
        gu = assign[u]
        for v in vs:
            gv = assign[v]
            if gu != gv:
                succ[gu].add(gv)
                pred[gv].add(gu)
    return members, succ, pred


def topological_groups(
    first: Mapping[int, int],
    succ: Mapping[int, Collection[int]],
    pred: Mapping[int, Collection[int]],
) -> tuple[list[int], list[int] | None]:
    """Kahn's algorithm over groups, ties broken by `first` (each group's first node position),
    so the order is deterministic. Returns (order, None), or (partial order, a cycle of groups)
    when the quotient is not a DAG (the cycle's first group is not repeated at its end)."""
    indegree = {g: len(p) for g, p in pred.items()}
    ready = [(first[g], g) for g, d in indegree.items() if d == 0]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        _, g = heapq.heappop(ready)
        order.append(g)
        for x in succ[g]:
            indegree[x] -= 1
            if indegree[x] == 0:
                heapq.heappush(ready, (first[x], x))
    if len(order) == len(indegree):
        return order, None
    left = {g for g, d in indegree.items() if d > 0}
    q = nx.DiGraph((g, x) for g in left for x in succ[g] if x in left)
    return order, [u for u, _ in nx.find_cycle(q)]


def quotient_cycle(
    graph: OpGraph | nx.DiGraph | GraphIndex, mapping: Mapping[Node, Hashable]
) -> list[Hashable] | None:
    """The group labels along a cycle of the quotient of `mapping` (every node of the graph
    mapped; first label not repeated at the end), or None when the quotient is a DAG."""
    index = graph_index(graph)
    ids: dict[Hashable, int] = {}
    assign = [ids.setdefault(mapping[n], len(ids)) for n in index.nodes]
    members, succ, pred = quotient_sets(index, assign)
    _, cycle = topological_groups({g: min(m) for g, m in members.items()}, succ, pred)
    if cycle is None:
        return None
    labels = list(ids)
    return [labels[g] for g in cycle]


def quotient_graph(
    graph: OpGraph | nx.DiGraph | GraphIndex, mapping: Mapping[Node, Hashable]
) -> nx.DiGraph:
    """The quotient of any node -> group map as a networkx graph: one node per group, an edge
    where a member of one group feeds a member of another."""
    digraph = graph if isinstance(graph, nx.DiGraph) else graph.graph
    q = nx.DiGraph()
    q.add_nodes_from(set(mapping.values()))
    for u, v in digraph.edges:
        gu, gv = mapping[u], mapping[v]
        if gu != gv:
            q.add_edge(gu, gv)
    return q


def reach(start: int, adjacent: Adjacency, keep: Callable[[int], bool]) -> set[int]:
    """Vertices reachable from `start` along `adjacent`, visiting only those where keep(v)."""
    seen = {start}
    stack = [start]
    while stack:
        for y in adjacent[stack.pop()]:
            if y not in seen and keep(y):
                seen.add(y)
                stack.append(y)
    return seen
