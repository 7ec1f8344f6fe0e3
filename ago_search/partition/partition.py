"""Partition: an immutable node -> group map whose quotient graph is a DAG, and its moves.

Invariant: the quotient graph (one node per group, an edge where any graph edge crosses from one
group to another) is acyclic. It implies that every group is convex (a path that left a group
and came back would be a cycle of the quotient). Each move (`merge`, `merge_many`, `split`,
`move`) returns a new Partition, or an `Illegal` with a reason when the result would break the
invariant; no move raises for an illegal request.

How legality is checked without rebuilding the quotient
-------------------------------------------------------
A Partition keeps its quotient as successor/predecessor sets per group and a topological order
of the groups (`rank`: group -> position in that order).

- Merging a set S of groups creates a cycle iff some path leaves S and re-enters it through a
  group outside S. Such a path only visits groups ranked below the highest-ranked member of S,
  so a DFS from S's outside successors, pruned at that rank, decides it (`merge_is_acyclic`).
  Cost: O(groups and quotient edges inside the rank window [min rank of S, max rank of S]),
  worst case O(G + E_q), typically a handful of groups; nothing is allocated for the quotient.
  The DFS's visited set F (what S reaches inside the window) also repairs the order: the window
  becomes [window groups not in F] + [merged group] + [F], everything else keeps its place
  (as in Pearce and Kelly's dynamic topological sort).
- Splitting a group g into P and the rest Q: since g is convex, no path leaves g and returns,
  so the only possible cycle is P -> Q and Q -> P along edges inside g. Cost: O(edges of g).
- Moving node n to group h is splitting {n} off its group, then merging it into h.

The searches themselves (`escape_path`, Kahn's `topological_groups`) live in `quotient`, which
plans use too, so there is one acyclicity check. A legal move then copies the node -> group tuple and the per-group dicts: O(N + G), with the
unchanged frozensets shared between the old and the new Partition.

Group ids are ints. `singletons` numbers groups by node position; `merge(a, b)` keeps
min(a, b); `split(g, part)` gives `part` the id max(ids) + 1 and the rest keeps g; `move` keeps
every id. Equality and `fingerprint()` ignore the numbering: they compare the set partitions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Hashable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import networkx as nx

from ago_search.graph.opgraph import OpGraph
from ago_search.partition.index import GraphIndex, Node, graph_index, shared_index
from ago_search.partition.quotient import escape_path, quotient_sets, reach, topological_groups
from ago_search.partition.stats import GroupStats, node_set_stats

JSON_KIND = "ago-search.partition"
JSON_VERSION = 1


@dataclass(frozen=True)
class Illegal:
    """A refused move; `reason` says why in words. Falsy, so `if not result:` tests for it."""

    reason: str

    def __bool__(self) -> bool:
        return False


class Partition:
    """A node -> group map over a graph whose quotient is a DAG (see the module docstring).

    Build with `singletons(graph)`, `from_assignment(graph, mapping)` or
    `Partition.from_json(graph, text)`; change with the moves, which return new Partitions.
    """

    __slots__ = ("_index", "_assign", "_members", "_succ", "_pred", "_order", "_rank", "_cache")

    _index: GraphIndex
    _assign: tuple[int, ...]  # node position -> group id
    _members: dict[int, frozenset[int]]  # group id -> node positions
    _succ: dict[int, frozenset[int]]  # quotient successors
    _pred: dict[int, frozenset[int]]
    _order: tuple[int, ...]  # group ids in a topological order of the quotient
    _rank: dict[int, int]  # group id -> index in _order
    _cache: dict[Any, Any]  # lazily computed views; never part of the value

    def __init__(self) -> None:
        raise TypeError("build a Partition with singletons(), from_assignment() or from_json()")

    @classmethod
    def _make(
        cls,
        index: GraphIndex,
        assign: tuple[int, ...],
        members: dict[int, frozenset[int]],
        succ: dict[int, frozenset[int]],
        pred: dict[int, frozenset[int]],
        order: tuple[int, ...],
        rank: dict[int, int],
    ) -> Partition:
        p = object.__new__(cls)
        for name, value in (
            ("_index", index),
            ("_assign", assign),
            ("_members", members),
            ("_succ", succ),
            ("_pred", pred),
            ("_order", order),
            ("_rank", rank),
            ("_cache", {}),
        ):
            object.__setattr__(p, name, value)
        return p

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a Partition is immutable; moves return new Partitions")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("a Partition is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        # pickle (for Ray, copy) the state itself: the default would restore slots by setattr
        state = (self._index, self._assign, self._members, self._succ, self._pred, self._order)
        return (_restore_partition, state)

    # -- views ---------------------------------------------------------------------------------

    @property
    def index(self) -> GraphIndex:
        """The shared index of the graph this partitions."""
        return self._index

    @property
    def graph(self) -> nx.DiGraph:
        return self._index.graph

    @property
    def num_groups(self) -> int:
        return len(self._order)

    @property
    def group_ids(self) -> tuple[int, ...]:
        """Group ids in a topological order of the quotient."""
        return self._order

    @property
    def groups(self) -> Mapping[int, frozenset[Node]]:
        """Group id -> its node ids, in the quotient's topological order."""
        if "groups" not in self._cache:
            nodes = self._index.nodes
            self._cache["groups"] = MappingProxyType(
                {g: frozenset(nodes[i] for i in self._members[g]) for g in self._order}
            )
        return self._cache["groups"]

    def nodes_of(self, group: int) -> tuple[Node, ...]:
        """The node ids of `group` in graph order."""
        nodes = self._index.nodes
        return tuple(nodes[i] for i in sorted(self._members[group]))

    def group_of(self, node: Node) -> int:
        return self._assign[self._index.position[node]]

    def assignment(self) -> dict[Node, int]:
        """Node id -> group id, in graph order."""
        return dict(zip(self._index.nodes, self._assign, strict=True))

    def rank(self, group: int) -> int:
        """Position of `group` in the quotient's topological order (`group_ids`)."""
        return self._rank[group]

    def successors(self, group: int) -> frozenset[int]:
        return self._succ[group]

    def predecessors(self, group: int) -> frozenset[int]:
        return self._pred[group]

    def neighbours(self, group: int) -> frozenset[int]:
        """Groups joined to `group` by a quotient edge, either way."""
        return self._succ[group] | self._pred[group]

    @property
    def quotient(self) -> nx.DiGraph:
        """The quotient graph (frozen): groups in topological order; node attribute `nodes`
        (frozenset of node ids), edge attribute `bytes` (sum of the crossing edges' bytes)."""
        if "quotient" not in self._cache:
            q = nx.DiGraph()
            groups = self.groups
            for g in self._order:
                q.add_node(g, nodes=groups[g])
            weights: dict[tuple[int, int], int] = {}
            assign = self._assign
            for (u, v), b in self._index.edge_bytes.items():
                gu, gv = assign[u], assign[v]
                if gu != gv:
                    weights[(gu, gv)] = weights.get((gu, gv), 0) + b
            q.add_edges_from((gu, gv, {"bytes": b}) for (gu, gv), b in weights.items())
            self._cache["quotient"] = nx.freeze(q)
        return self._cache["quotient"]

    def group_stats(self, *groups: int) -> GroupStats:
        """Statistics of one group, or of the union of several (a prospective merge)."""
        if not groups:
            raise ValueError("group_stats needs at least one group id")
        key = ("stats", *sorted(set(groups)))
        if key not in self._cache:
            members = frozenset().union(*(self._members[g] for g in set(groups)))
            self._cache[key] = node_set_stats(self._index, members)
        return self._cache[key]

    # -- legality ------------------------------------------------------------------------------

    def merge_is_acyclic(self, a: int, b: int) -> bool:
        """Whether merging groups a and b keeps the quotient acyclic (no path a -> x -> b or
        b -> x -> a through a third group x). Pruned DFS; see the module docstring."""
        if a == b or a not in self._members or b not in self._members:
            return False
        path, _ = self._cycle_path({a, b})
        return path is None

    def _cycle_path(self, group_set: set[int]) -> tuple[list[int] | None, set[int]]:
        """A quotient path that leaves `group_set` and re-enters it, or None; and the groups
        outside the set that it reaches below its highest rank (`escape_path`)."""
        return escape_path(group_set, self._succ, self._rank)

    def groups_between(self, a: int, b: int) -> frozenset[int]:
        """Groups on some quotient path from a to b, a and b included (empty when b is not
        reachable from a): the smallest set holding a and b whose merge is acyclic."""
        rank, succ, pred = self._rank, self._succ, self._pred
        if a == b:
            return frozenset((a,))
        if rank[a] > rank[b]:
            return frozenset()
        lo, hi = rank[a], rank[b]
        down = reach(a, succ, lambda g: rank[g] <= hi)
        if b not in down:
            return frozenset()
        up = reach(b, pred, lambda g: rank[g] >= lo)
        return frozenset(down & up)

    # -- moves ---------------------------------------------------------------------------------

    def merge(self, a: int, b: int) -> Partition | Illegal:
        """Groups a and b as one group with id min(a, b), or Illegal when that makes a cycle."""
        for g in (a, b):
            if g not in self._members:
                return Illegal(f"g{g} is not a group of this partition")
        if a == b:
            return Illegal(f"g{a} and g{b} are the same group")
        return self._contract({a, b}, keep=min(a, b), what=f"merging g{a} and g{b}")

    def merge_many(self, groups: Iterable[int]) -> Partition | Illegal:
        """All of `groups` as one group with the smallest of their ids, or Illegal."""
        group_set = set(groups)
        for g in sorted(group_set):
            if g not in self._members:
                return Illegal(f"g{g} is not a group of this partition")
        if len(group_set) < 2:
            return Illegal("merging needs at least two distinct groups")
        names = ", ".join(f"g{g}" for g in sorted(group_set))
        return self._contract(group_set, keep=min(group_set), what=f"merging {names}")

    def _contract(
        self,
        group_set: set[int],
        keep: int,
        what: str,
        names: Mapping[int, str] | None = None,
    ) -> Partition | Illegal:
        path, reached = self._cycle_path(group_set)
        if path is not None:

            def name(g: int) -> str:
                return names[g] if names and g in names else f"g{g}"

            through = ", ".join(name(g) for g in path[1:-1])
            chain = " -> ".join(name(g) for g in path)
            return Illegal(f"{what} would create a cycle through {through} ({chain})")

        merged_nodes = frozenset().union(*(self._members[g] for g in group_set))
        assign = list(self._assign)
        for g in group_set:
            if g != keep:
                for n in self._members[g]:
                    assign[n] = keep
        members = dict(self._members)
        succ = dict(self._succ)
        pred = dict(self._pred)
        new_succ = frozenset().union(*(self._succ[g] for g in group_set)) - group_set
        new_pred = frozenset().union(*(self._pred[g] for g in group_set)) - group_set
        for g in group_set:
            del members[g], succ[g], pred[g]
        members[keep] = merged_nodes
        succ[keep] = new_succ
        pred[keep] = new_pred
        keep_set = frozenset((keep,))
        for x in new_succ:
            pred[x] = (pred[x] - group_set) | keep_set
        for x in new_pred:
            succ[x] = (succ[x] - group_set) | keep_set

        rank = self._rank
        lo = min(rank[g] for g in group_set)
        hi = max(rank[g] for g in group_set)
        window = self._order[lo : hi + 1]
        new_window = [g for g in window if g not in group_set and g not in reached]
        new_window.append(keep)
        new_window.extend(g for g in window if g in reached)
        order = (*self._order[:lo], *new_window, *self._order[hi + 1 :])
        new_rank = dict(rank)
        for g in group_set:
            del new_rank[g]
        for i in range(lo, len(order)):
            new_rank[order[i]] = i
        return Partition._make(self._index, tuple(assign), members, succ, pred, order, new_rank)

    def split(self, group: int, part: Collection[Node]) -> Partition | Illegal:
        """`group` split into `part` (new id: max id + 1) and the rest (keeps `group`).

        Legal iff both halves are non-empty and no edges inside the group run both from `part`
        to the rest and from the rest to `part` (which would be a two-group cycle).
        """
        if group not in self._members:
            return Illegal(f"g{group} is not a group of this partition")
        position = self._index.position
        part_pos = set()
        for node in part:
            if node not in position:
                return Illegal(f"{node!r} is not a node of the graph")
            i = position[node]
            if self._assign[i] != group:
                return Illegal(f"node {node!r} is in g{self._assign[i]}, not in g{group}")
            part_pos.add(i)
        rest = self._members[group] - part_pos
        if not part_pos or not rest:
            return Illegal(f"splitting g{group} needs a part that is neither empty nor all of it")
        return self._split(group, frozenset(part_pos), rest, f"splitting g{group}")

    def _split(
        self, group: int, part: frozenset[int], rest: frozenset[int], what: str
    ) -> Partition | Illegal:
        succ_n = self._index.succ
        part_to_rest = next(((u, v) for u in part for v in succ_n[u] if v in rest), None)
        rest_to_part = next(((u, v) for u in rest for v in succ_n[u] if v in part), None)
        if part_to_rest is not None and rest_to_part is not None:
            nodes = self._index.nodes
            (a, b), (c, d) = part_to_rest, rest_to_part
            return Illegal(
                f"{what} would create a cycle between the two halves: {nodes[a]!r} -> "
                f"{nodes[b]!r} goes from the part to the rest and {nodes[c]!r} -> {nodes[d]!r} "
                "comes back"
            )
        new_id = max(self._members) + 1
        assign = list(self._assign)
        for n in part:
            assign[n] = new_id
        members = dict(self._members)
        members[group] = rest
        members[new_id] = part
        succ = dict(self._succ)
        pred = dict(self._pred)
        pred_n = self._index.pred
        for gid, nodes in ((group, rest), (new_id, part)):
            succ[gid] = frozenset(assign[v] for u in nodes for v in succ_n[u]) - {gid}
            pred[gid] = frozenset(assign[v] for u in nodes for v in pred_n[u]) - {gid}
        halves = (group, new_id)
        for x in self._succ[group]:
            pred[x] = (pred[x] - {group}) | frozenset(h for h in halves if x in succ[h])
        for x in self._pred[group]:
            succ[x] = (succ[x] - {group}) | frozenset(h for h in halves if x in pred[h])

        if part_to_rest is not None:
            first, second = new_id, group
        elif rest_to_part is not None:
            first, second = group, new_id
        else:
            first, second = (new_id, group) if min(part) < min(rest) else (group, new_id)
        r = self._rank[group]
        order = (*self._order[:r], first, second, *self._order[r + 1 :])
        rank = dict(self._rank)
        for i in range(r, len(order)):
            rank[order[i]] = i
        return Partition._make(self._index, tuple(assign), members, succ, pred, order, rank)

    def move(self, node: Node, to_group: int) -> Partition | Illegal:
        """`node` moved from its group into `to_group`, a group it has an edge to.

        Every group keeps its id (its group disappears when it held only `node`).
        """
        position = self._index.position
        if node not in position:
            return Illegal(f"{node!r} is not a node of the graph")
        if to_group not in self._members:
            return Illegal(f"g{to_group} is not a group of this partition")
        i = position[node]
        group = self._assign[i]
        if group == to_group:
            return Illegal(f"node {node!r} is already in g{to_group}")
        neighbours = (*self._index.succ[i], *self._index.pred[i])
        if not any(self._assign[j] == to_group for j in neighbours):
            return Illegal(
                f"node {node!r} has no edge to g{to_group}; a node moves only to a group it is "
                "joined to"
            )
        what = f"moving {node!r} from g{group} to g{to_group}"
        if len(self._members[group]) == 1:
            return self._contract({group, to_group}, keep=to_group, what=what)
        rest = self._members[group] - {i}
        alone = self._split(group, frozenset((i,)), rest, what)
        if isinstance(alone, Illegal):
            return alone
        moved_id = alone._assign[i]
        return alone._contract(
            {moved_id, to_group}, keep=to_group, what=what, names={moved_id: repr(node)}
        )

    # -- identity and serialization -------------------------------------------------------------

    def _canonical_labels(self) -> tuple[int, ...]:
        """Group labels renumbered by first appearance in graph order: the set partition."""
        if "labels" not in self._cache:
            seen: dict[int, int] = {}
            self._cache["labels"] = tuple(seen.setdefault(g, len(seen)) for g in self._assign)
        return self._cache["labels"]

    def canonical(self) -> Partition:
        """The same partition with group ids 0, 1, ... in order of each group's first node."""
        labels = self._canonical_labels()
        if labels == self._assign:
            return self
        mapping = dict(zip(self._assign, labels, strict=True))
        return Partition._make(
            self._index,
            labels,
            {mapping[g]: m for g, m in self._members.items()},
            {mapping[g]: frozenset(mapping[x] for x in s) for g, s in self._succ.items()},
            {mapping[g]: frozenset(mapping[x] for x in s) for g, s in self._pred.items()},
            tuple(mapping[g] for g in self._order),
            {mapping[g]: r for g, r in self._rank.items()},
        )

    def fingerprint(self) -> str:
        """A stable hex string naming the set partition: equal for equal partitions of the same
        graph whatever their group ids, across processes."""
        if "fingerprint" not in self._cache:
            text = ",".join(map(str, self._canonical_labels()))
            self._cache["fingerprint"] = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
        return self._cache["fingerprint"]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Partition):
            return NotImplemented
        same_graph = self._index is other._index or self._index.nodes == other._index.nodes
        return same_graph and self._canonical_labels() == other._canonical_labels()

    def __hash__(self) -> int:
        return hash(self._canonical_labels())

    def __repr__(self) -> str:
        return (
            f"Partition(nodes={len(self._assign)}, groups={len(self._order)}, "
            f"fingerprint={self.fingerprint()[:12]})"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data: groups in topological order, nodes in graph order."""
        return {
            "kind": JSON_KIND,
            "version": JSON_VERSION,
            "groups": [{"id": g, "nodes": list(self.nodes_of(g))} for g in self._order],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @staticmethod
    def from_dict(graph: OpGraph | nx.DiGraph, data: Mapping[str, Any]) -> Partition:
        """Inverse of `to_dict`; raises ValueError when `data` is no valid partition of `graph`."""
        if data.get("kind") != JSON_KIND:
            raise ValueError(f"not a partition: kind is {data.get('kind')!r}, not {JSON_KIND!r}")
        if data.get("version") != JSON_VERSION:
            raise ValueError(f"partition format version {data.get('version')!r} is unknown")
        mapping: dict[Node, int] = {}
        for group in data["groups"]:
            for node in group["nodes"]:
                if node in mapping:
                    raise ValueError(f"node {node!r} is in two groups")
                mapping[node] = int(group["id"])
        return from_assignment(graph, mapping)

    @staticmethod
    def from_json(graph: OpGraph | nx.DiGraph, text: str) -> Partition:
        return Partition.from_dict(graph, json.loads(text))


# ---------------------------------------------------------------------------------------------
# construction


def _restore_partition(
    index: GraphIndex,
    assign: tuple[int, ...],
    members: dict[int, frozenset[int]],
    succ: dict[int, frozenset[int]],
    pred: dict[int, frozenset[int]],
    order: tuple[int, ...],
) -> Partition:
    """Unpickling: partitions unpickled together share one index, which later
    `graph_index(partition.graph)` calls find."""
    index = shared_index(index)
    rank = {g: i for i, g in enumerate(order)}
    return Partition._make(index, assign, members, succ, pred, order, rank)


def singletons(graph: OpGraph | nx.DiGraph | GraphIndex) -> Partition:
    """Every node its own group; group id = the node's position in graph order."""
    index = graph_index(graph)
    n = len(index)
    return Partition._make(
        index,
        tuple(range(n)),
        {i: frozenset((i,)) for i in range(n)},
        {i: frozenset(index.succ[i]) for i in range(n)},
        {i: frozenset(index.pred[i]) for i in range(n)},
        tuple(range(n)),
        {i: i for i in range(n)},
    )


def from_assignment(
    graph: OpGraph | nx.DiGraph | GraphIndex, mapping: Mapping[Node, Hashable]
) -> Partition:
    """The partition that puts each node in group `mapping[node]`.

    Integer labels become the group ids; other labels are numbered by first appearance in graph
    order. Raises ValueError when a node is missing or unknown, or the quotient has a cycle.
    """
    index = graph_index(graph)
    missing = [n for n in index.nodes if n not in mapping]
    if missing:
        raise ValueError(
            f"{len(missing)} of {len(index)} nodes have no group (first: {missing[:3]!r})"
        )
    unknown = [n for n in mapping if n not in index.position]
    if unknown:
        raise ValueError(f"{len(unknown)} assigned nodes are not in the graph: {unknown[:3]!r}")
    labels = [mapping[n] for n in index.nodes]
    if all(type(label) is int for label in labels):
        assign = tuple(labels)
    else:
        ids: dict[Hashable, int] = {}
        assign = tuple(ids.setdefault(label, len(ids)) for label in labels)
    return _from_assign(index, assign)


def _from_assign(index: GraphIndex, assign: tuple[int, ...]) -> Partition:
    members, succ, pred = quotient_sets(index, assign)
    order, cycle = topological_groups({g: min(m) for g, m in members.items()}, succ, pred)
    if cycle is not None:
        chain = " -> ".join(f"g{g}" for g in [*cycle, cycle[0]])
        raise ValueError(f"the groups form a cycle in the quotient graph: {chain}")
    return Partition._make(
        index,
        assign,
        {g: frozenset(m) for g, m in members.items()},
        {g: frozenset(s) for g, s in succ.items()},
        {g: frozenset(s) for g, s in pred.items()},
        tuple(order),
        {g: i for i, g in enumerate(order)},
    )
