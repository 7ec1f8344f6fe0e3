"""The plan space: partitions reached from the seeds by `Partition` moves, groups sized to what
tuning can handle.

A move is one of the partition's own (acyclic by construction, `ago_search.partition`):

- merge: a group with a neighbour it has a quotient edge to (AGO's fusion of any structure:
  conv -> conv, depthwise -> pointwise, matmul -> softmax -> matmul);
- split: a group cut into a prefix and the rest of a topological order of its members;
- move: a node on a group's border into the neighbouring group it has an edge to.

Limits (`GroupLimits`). MetaSchedule's work on a group grows fast with its size: on a real
exported CNN, groups of 20-31 ops with 4-6 convolutions grew one tuning process to 23 GB
without a single record. Every group a plan of this space holds keeps within `max_ops` ops,
`max_complex` complex ops (conv, matmul) and, when it holds two or more of them, a working set
of `max_working_set` bytes (one conv with its elementwise ops is TVM's own fusion, tuned
routinely at any size); seeds that break a limit are cut down first (`fit_to_limits`).

Each group also has a layout slot in the plan (`GroupPlan.layout`); layout moves arrive with the
layouts issue, and `PlanSpace.neighbour` is where they go.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from ago_search.graph import OpGraph
from ago_search.partition import Illegal, Partition, graph_index
from ago_search.search.regions import Regions

__all__ = ["GroupLimits", "PlanSpace"]

MOVES = ("merge", "split", "move")


@dataclass(frozen=True)
class GroupLimits:
    """The largest group the search proposes (see the module docstring)."""

    max_ops: int = 24
    max_complex: int = 4
    max_working_set: int = 8 << 20

    def to_json(self) -> dict[str, int]:
        return {
            "max_ops": self.max_ops,
            "max_complex": self.max_complex,
            "max_working_set": self.max_working_set,
        }


class PlanSpace:
    """The legal partitions of `graph` within `limits`, and random moves between them."""

    def __init__(
        self, graph: OpGraph, limits: GroupLimits | None = None, regions: Regions | None = None
    ) -> None:
        self.graph = graph
        self.index = graph_index(graph)
        self.limits = limits or GroupLimits()
        self.regions = regions  # moves keep every group inside its region (search/regions.py)

    def _same_region(self, partition: Partition, *groups: int) -> bool:
        if self.regions is None:
            return True
        return len({self.regions.region_of(partition, g) for g in groups}) == 1

    # -- limits ------------------------------------------------------------------------------

    def group_fits(self, partition: Partition, *groups: int) -> bool:
        """Whether the union of `groups` of `partition` keeps within the limits."""
        stats = partition.group_stats(*groups)
        if stats.nodes <= 1:
            return True
        if stats.nodes > self.limits.max_ops or stats.complex_ops > self.limits.max_complex:
            return False
        # One conv/matmul with its elementwise neighbours is what TVM fuses by default, tuned
        # routinely whatever its size: the working-set limit is for groups of several. (Cutting
        # MobileNetV2's 9-MB conv+add+clip groups made clip->conv->add groups MetaSchedule
        # could not sample, left as untuned convs.)
        return stats.complex_ops <= 1 or stats.working_set_bytes <= self.limits.max_working_set

    def fits(self, partition: Partition) -> bool:
        return all(self.group_fits(partition, g) for g in partition.group_ids)

    def fit_to_limits(self, partition: Partition) -> Partition:
        """`partition` with every group over a limit split (at the middle of a topological
        order of its members, then smaller) until all fit."""
        changed = True
        while changed:
            changed = False
            for group in partition.group_ids:
                if self.group_fits(partition, group):
                    continue
                for part in self._prefixes(partition, group, middle_first=True):
                    cut = partition.split(group, part)
                    if not isinstance(cut, Illegal):
                        partition, changed = cut, True
                        break
                if changed:
                    break
        return partition

    # -- moves -------------------------------------------------------------------------------

    def neighbour(
        self, partition: Partition, rng: random.Random, tries: int = 16
    ) -> tuple[Partition, str] | None:
        """A random legal partition one move away, within the limits, and the move's name;
        None when `tries` random moves all failed."""
        for _ in range(tries):
            kind = rng.choice(MOVES)
            result = getattr(self, f"_random_{kind}")(partition, rng)
            # a split or a move can grow a group's working set (an intermediate that was inside
            # becomes an input of one half), so every group is checked, not just the new ones
            if result is not None and not isinstance(result, Illegal) and self.fits(result):
                return result, kind
        return None

    def _random_merge(self, partition: Partition, rng: random.Random) -> Partition | None:
        groups = partition.group_ids
        group = groups[rng.randrange(len(groups))]
        neighbours = sorted(partition.neighbours(group))
        if not neighbours:
            return None
        other = neighbours[rng.randrange(len(neighbours))]
        if not self._same_region(partition, group, other):
            return None
        if not self.group_fits(partition, group, other) or not partition.merge_is_acyclic(
            group, other
        ):
            return None
        merged = partition.merge(group, other)
        return None if isinstance(merged, Illegal) else merged

    def _random_split(self, partition: Partition, rng: random.Random) -> Partition | None:
        big = [g for g in partition.group_ids if len(partition.groups[g]) > 1]
        if not big:
            return None
        group = big[rng.randrange(len(big))]
        prefixes = list(self._prefixes(partition, group))
        rng.shuffle(prefixes)
        for part in prefixes[:4]:
            cut = partition.split(group, part)
            if not isinstance(cut, Illegal):
                return cut
        return None

    def _random_move(self, partition: Partition, rng: random.Random) -> Partition | None:
        nodes = self.index.nodes
        node = nodes[rng.randrange(len(nodes))]
        group = partition.group_of(node)
        position = self.index.position[node]
        joined = {
            partition.group_of(nodes[j])
            for j in (*self.index.succ[position], *self.index.pred[position])
        } - {group}
        if not joined:
            return None
        to_group = sorted(joined)[rng.randrange(len(joined))]
        if not self._same_region(partition, group, to_group):
            return None
        moved = partition.move(node, to_group)
        if isinstance(moved, Illegal) or not self.group_fits(moved, moved.group_of(node)):
            return None
        return moved

    def _prefixes(
        self, partition: Partition, group: int, middle_first: bool = False
    ) -> Sequence[tuple[str, ...]]:
        """Proper prefixes of the group's members in graph order (a topological order)."""
        members = partition.nodes_of(group)
        cuts = list(range(1, len(members)))
        if middle_first:
            cuts.sort(key=lambda k: abs(k - len(members) / 2))
        return [members[:k] for k in cuts]
