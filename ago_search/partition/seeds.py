"""Seed partitions: where the partition search starts.

- `tvm_seed`: TVM's own FuseOps groups (at most one complex op a group).
- `dnnfusion_seed`: DNNFusion's greedy fusion plan from its mapping-type table (arXiv
  2108.13342, Section 4; table below), with the pairs the table leaves to profiling recorded.
- `intensive_seed`: AGO-style intensive fusion (arXiv 2212.01005): groups holding several
  complex ops (conv -> conv, depthwise -> pointwise, attention, FFN) wherever the merged group's
  working set fits a cache budget.

Each returns a `SeedResult`: a Partition covering every node once with an acyclic quotient
(all groups built by the Partition's moves), plus notes; `seed_stats` summarizes one.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import networkx as nx

from ago_search.graph.mapping import MappingType
from ago_search.graph.opgraph import OpGraph
from ago_search.partition.index import GraphIndex, Node, graph_index
from ago_search.partition.partition import Illegal, Partition, from_assignment, singletons

logger = logging.getLogger(__name__)


class FusionDecision(StrEnum):
    """What DNNFusion's table says of fusing two ops (its green, red and yellow cells)."""

    FUSE = "fuse"  # legal and profitable: fuse
    BREAK = "break"  # illegal or never profitable: do not fuse
    PROFILE = "profile"  # legal, profit unclear: decided by profiling (the seed does not fuse)


O2O = MappingType.ONE_TO_ONE
O2M = MappingType.ONE_TO_MANY
M2M = MappingType.MANY_TO_MANY
REO = MappingType.REORGANIZE
SHU = MappingType.SHUFFLE
FUSE, BREAK, PROFILE = FusionDecision.FUSE, FusionDecision.BREAK, FusionDecision.PROFILE

# DNNFusion's mapping-type table (paper Table 3), as we understand its rules:
# (type of the first op = producer, type of the second op = consumer)
#     -> (decision, mapping type of the fused op).
# The fused op's type feeds the next decision, so a growing group is judged as one op.
# 1. One-to-one with anything, either order: fuse; the fused op has the other op's type
#    (an elementwise op adds no cross-element dependence).
# 2. Reorganize and shuffle only remap indices: with each other, with one-to-one, and with
#    one-to-many: fuse; the remap folds into the other op's index expressions. Reorganize
#    dominates shuffle, one-to-many dominates both.
# 3. Reorganize/shuffle with many-to-many, either order: fuse (the remap folds into the
#    many-to-many op's reads or writes, no element is computed twice); the result is
#    many-to-many.
# 4. One-to-many then many-to-many (Expand -> Conv, Resize -> Conv): break. Each expanded element
#    is read by many outputs of the consumer; fused, it is recomputed for every read and the
#    consumer loses its data reuse.
# 5. Many-to-many then one-to-many (Conv -> Resize): profile; each costly output would be
#    produced once per copy unless the schedule keeps it, which depends on sizes.
# 6. Many-to-many then many-to-many (Conv -> Conv, MatMul -> Softmax): profile; legal, but
#    profitable only when the intermediate's reuse survives tiling. DNNFusion decides these by
#    profiling; the greedy seed breaks there and the search (intensive fusion) explores them.
# 7. One-to-many then one-to-many: fuse (an expansion of an expansion).
# As a consequence a group's type, once one-to-many or many-to-many, stays so: a DNNFusion group
# holds at most one many-to-many op, and never a one-to-many op together with a many-to-many one.
DNNFUSION_TABLE: Mapping[tuple[MappingType, MappingType], tuple[FusionDecision, MappingType]] = {
    # first op one-to-one (rule 1)
    (O2O, O2O): (FUSE, O2O),
    (O2O, O2M): (FUSE, O2M),
    (O2O, M2M): (FUSE, M2M),
    (O2O, REO): (FUSE, REO),
    (O2O, SHU): (FUSE, SHU),
    # first op one-to-many
    (O2M, O2O): (FUSE, O2M),  # rule 1
    (O2M, O2M): (FUSE, O2M),  # rule 7
    (O2M, M2M): (BREAK, M2M),  # rule 4
    (O2M, REO): (FUSE, O2M),  # rule 2
    (O2M, SHU): (FUSE, O2M),  # rule 2
    # first op many-to-many
    (M2M, O2O): (FUSE, M2M),  # rule 1
    (M2M, O2M): (PROFILE, M2M),  # rule 5
    (M2M, M2M): (PROFILE, M2M),  # rule 6
    (M2M, REO): (FUSE, M2M),  # rule 3
    (M2M, SHU): (FUSE, M2M),  # rule 3
    # first op reorganize
    (REO, O2O): (FUSE, REO),  # rule 1
    (REO, O2M): (FUSE, O2M),  # rule 2
    (REO, M2M): (FUSE, M2M),  # rule 3
    (REO, REO): (FUSE, REO),  # rule 2
    (REO, SHU): (FUSE, REO),  # rule 2
    # first op shuffle
    (SHU, O2O): (FUSE, SHU),  # rule 1
    (SHU, O2M): (FUSE, O2M),  # rule 2
    (SHU, M2M): (FUSE, M2M),  # rule 3
    (SHU, REO): (FUSE, REO),  # rule 2
    (SHU, SHU): (FUSE, SHU),  # rule 2
}


def fusion_decision(first: str, second: str) -> tuple[FusionDecision, MappingType]:
    """The table's cell for a producer of type `first` followed by a consumer of type `second`."""
    return DNNFUSION_TABLE[(MappingType(first), MappingType(second))]


@dataclass(frozen=True)
class ProfileEdge:
    """A producer -> consumer edge the table left to profiling, with the types it judged: the
    growing group's fused type on the group's side, the op's own type on the other."""

    producer: Node
    consumer: Node
    first: str
    second: str


@dataclass(frozen=True)
class SeedResult:
    """A seed partition, the edges it leaves to profiling (DNNFusion only), and notes."""

    name: str
    partition: Partition
    profile_edges: tuple[ProfileEdge, ...] = ()
    notes: tuple[str, ...] = ()


class _HasNodeGroup(Protocol):
    node_group: Mapping[str, int]


# ---------------------------------------------------------------------------------------------
# (a) TVM's default fusion


def tvm_seed(
    graph: OpGraph | nx.DiGraph, default_groups: _HasNodeGroup | Mapping[Node, int]
) -> SeedResult:
    """TVM's FuseOps groups (`tvm_default_groups(...)`, or its `node_group` map) as a Partition.

    Raises ValueError when the groups do not cover the graph or form a cycle.
    """
    node_group = getattr(default_groups, "node_group", default_groups)
    partition = from_assignment(graph, dict(node_group))
    most = max((partition.group_stats(g).complex_ops for g in partition.group_ids), default=0)
    notes = (f"{partition.num_groups} groups from TVM's FuseOps; at most {most} complex op(s)",)
    return SeedResult("tvm", partition, notes=notes)


# ---------------------------------------------------------------------------------------------
# (b) DNNFusion's greedy plan


def dnnfusion_seed(
    graph: OpGraph | nx.DiGraph | GraphIndex, predecessors_first: bool = False
) -> SeedResult:
    """DNNFusion's greedy fusion plan (paper Section 4.3), with the table above.

    Seeds, in turn: the unplaced one-to-one op with the smallest output (ties: graph order);
    once none is left, any unplaced op, smallest output first. From a seed the group grows
    through successors, then predecessors, again until nothing joins: an unplaced neighbour
    joins when the table says fuse for (group's fused type, its type) in data-flow order and
    the merge keeps the quotient acyclic. A "profile" cell is recorded and not fused. Nodes
    that cannot be fused (no call_tir) stay alone. `predecessors_first` grows through
    predecessors first instead (not the paper's order): elementwise ops then join the complex
    op before them more often than the one after them.
    """
    index = graph_index(graph)
    partition = singletons(index)
    n = len(index)
    placed = [False] * n
    profile: dict[tuple[int, int], ProfileEdge] = {}
    refused_by_cycle: set[tuple[int, int]] = set()

    one_to_one = [i for i in range(n) if index.mapping[i] == O2O.value]
    others = [i for i in range(n) if index.mapping[i] != O2O.value]
    by_output = sorted(one_to_one, key=lambda i: (index.out_bytes[i], i))
    by_output += sorted(others, key=lambda i: (index.out_bytes[i], i))

    for seed in by_output:
        if placed[seed]:
            continue
        placed[seed] = True
        if not index.fusable[seed]:
            continue
        members = [seed]
        group_type = MappingType(index.mapping[seed])
        grew = True
        while grew:
            grew = False
            for forward in (False, True) if predecessors_first else (True, False):
                joined = True
                while joined:
                    joined = False
                    for u in sorted(members):
                        for v in index.succ[u] if forward else index.pred[u]:
                            if placed[v] or not index.fusable[v]:
                                continue
                            v_type = MappingType(index.mapping[v])
                            first, second = (
                                (group_type, v_type) if forward else (v_type, group_type)
                            )
                            decision, fused_type = DNNFUSION_TABLE[(first, second)]
                            if decision is PROFILE:
                                edge = (u, v) if forward else (v, u)
                                profile.setdefault(
                                    edge,
                                    ProfileEdge(
                                        index.nodes[edge[0]],
                                        index.nodes[edge[1]],
                                        first.value,
                                        second.value,
                                    ),
                                )
                                continue
                            if decision is BREAK:
                                continue
                            merged = partition.merge(
                                partition.group_of(index.nodes[seed]),
                                partition.group_of(index.nodes[v]),
                            )
                            if isinstance(merged, Illegal):
                                refused_by_cycle.add((u, v) if forward else (v, u))
                                continue
                            partition = merged
                            placed[v] = True
                            members.append(v)
                            group_type = fused_type
                            joined = grew = True

    notes = (
        f"{partition.num_groups} groups from {n} ops",
        f"{len(profile)} edges left to profiling (not fused)",
        f"{len(refused_by_cycle)} fusions the table allowed were refused: they would make a cycle",
    )
    edges = tuple(profile[k] for k in sorted(profile))
    name = "dnnfusion-pred" if predecessors_first else "dnnfusion"
    return SeedResult(name, partition, profile_edges=edges, notes=notes)


# ---------------------------------------------------------------------------------------------
# (c) AGO-style intensive fusion


def intensive_seed(
    graph: OpGraph | nx.DiGraph | GraphIndex,
    cache_bytes: int,
    base: Partition | SeedResult | None = None,
    max_complex_ops: int = 6,
    max_bridge_groups: int = 3,
) -> SeedResult:
    """Groups with several complex ops, each fitting `cache_bytes` (AGO's intensive fusion).

    Starts from `base`. The default is the DNNFusion seed grown predecessors first: its groups
    hold at most one many-to-many op with its elementwise neighbours, mostly the ones after it
    (epilogues, as TVM fuses them; an elementwise op before a conv is recomputed for every read
    of the conv). Pass `tvm_seed(...)` to start from TVM's own groups. Candidates: a
    group A with a complex op, and a group B with a complex op that A reaches through at most
    `max_bridge_groups` groups without complex ops (conv -> conv, depthwise -> pointwise,
    matmul -> reshape/permute -> matmul, matmul -> softmax group -> matmul). A candidate merges
    every group on a path from A to B (their convex hull in the quotient, so the merge is
    acyclic) when the result holds at most `max_complex_ops` complex ops and its working set
    (`GroupStats.working_set_bytes`: weights + external inputs and outputs + intermediates that
    need a buffer of their own, untiled) fits `cache_bytes`. Greedy: the candidate that removes
    the most bytes from group borders first; repeat until none fits.
    """
    index = graph_index(graph)
    if base is None:
        base = dnnfusion_seed(index, predecessors_first=True)
    partition = base.partition if isinstance(base, SeedResult) else base
    base_name = base.name if isinstance(base, SeedResult) else "given"
    if partition.index is not index:
        raise ValueError("the base partition is of another graph")

    merges = 0
    refused = 0
    while True:
        best = _best_intensive_merge(partition, cache_bytes, max_complex_ops, max_bridge_groups)
        if best is None:
            break
        merged = partition.merge_many(best)
        if isinstance(merged, Illegal):  # a hull is convex, so this means a bug: say so, go on
            logger.warning("intensive merge of %s refused: %s", sorted(best), merged.reason)
            refused += 1
            break
        partition = merged
        merges += 1

    multi = sum(1 for g in partition.group_ids if partition.group_stats(g).complex_ops >= 2)
    notes = (
        f"base: {base_name}; cache budget {cache_bytes} bytes; at most {max_complex_ops} "
        "complex ops a group",
        f"{merges} intensive merges; {multi} groups with several complex ops",
    )
    return SeedResult("intensive", partition, notes=notes)


def _best_intensive_merge(
    partition: Partition, cache_bytes: int, max_complex_ops: int, max_bridge_groups: int
) -> frozenset[int] | None:
    best: tuple[tuple[int, int, int], frozenset[int]] | None = None
    seen: set[frozenset[int]] = set()
    for a in partition.group_ids:
        if partition.group_stats(a).complex_ops == 0:
            continue
        for b in _complex_groups_ahead(partition, a, max_bridge_groups):
            hull = partition.groups_between(a, b)
            if hull in seen:
                continue
            seen.add(hull)
            stats = partition.group_stats(*hull)
            if stats.complex_ops > max_complex_ops or stats.working_set_bytes > cache_bytes:
                continue
            parts = sum(partition.group_stats(g).external_bytes for g in hull)
            saved = parts - stats.external_bytes
            key = (saved, -partition.rank(a), -partition.rank(b))
            if best is None or key > best[0]:
                best = (key, hull)
    return None if best is None else best[1]


def _complex_groups_ahead(partition: Partition, start: int, max_bridge_groups: int) -> list[int]:
    """Groups with a complex op that `start` reaches through at most `max_bridge_groups`
    groups without one (breadth first, never past a complex group)."""
    found: list[int] = []
    seen = {start}
    frontier = [start]
    for depth in range(max_bridge_groups + 1):
        next_frontier = []
        for g in frontier:
            for x in sorted(partition.successors(g), key=partition.rank):
                if x in seen:
                    continue
                seen.add(x)
                if partition.group_stats(x).complex_ops > 0:
                    found.append(x)
                elif depth < max_bridge_groups:
                    next_frontier.append(x)
        frontier = next_frontier
    return found


# ---------------------------------------------------------------------------------------------
# statistics for reports


@dataclass(frozen=True)
class SeedStats:
    """One seed's shape, for the README table."""

    nodes: int  # ops in the graph
    groups: int
    multi_complex_groups: int  # groups with two or more complex ops
    largest_group: int  # nodes in the biggest group
    most_complex_ops: int  # complex ops in the group with the most


def seed_stats(seed: SeedResult | Partition) -> SeedStats:
    partition = seed.partition if isinstance(seed, SeedResult) else seed
    stats = [partition.group_stats(g) for g in partition.group_ids]
    return SeedStats(
        nodes=len(partition.index),
        groups=len(stats),
        multi_complex_groups=sum(1 for s in stats if s.complex_ops >= 2),
        largest_group=max((s.nodes for s in stats), default=0),
        most_complex_ops=max((s.complex_ops for s in stats), default=0),
    )


def seed_stats_table(rows: Mapping[str, Mapping[str, SeedStats]]) -> str:
    """A Markdown table: one row per model, per seed "groups / multi-complex / largest"."""
    seeds = list(dict.fromkeys(name for per_model in rows.values() for name in per_model))
    header = "| model | ops | " + " | ".join(seeds) + " |"
    lines = [header, "|---" * (len(seeds) + 2) + "|"]
    for model, per_model in rows.items():
        ops = next((s.nodes for s in per_model.values()), None)
        cells = []
        for name in seeds:
            s = per_model.get(name)
            cells.append(
                "" if s is None else f"{s.groups} / {s.multi_complex_groups} / {s.largest_group}"
            )
        lines.append(f"| {model} | {'' if ops is None else ops} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Cells: groups / groups with >= 2 complex ops / nodes in the largest group.")
    return "\n".join(lines)
