"""Divide and conquer (AGO): the graph cut into regions at single-tensor cut points, each region's
partition searched on its own, the best of each region joined into one plan.

A cut point is a place in a topological order of the graph where a single node's output is
all that flows from the nodes before it to the nodes after it: the boundary between two
residual blocks, or between a transformer layer's attention and its MLP. Regions are the runs
of nodes between chosen cut points (only where none of the given seeds, TVM's and DNNFusion's,
has a group across, and merged until each holds `min_complex` convs/matmuls; the groups of
other seeds that span a boundary are cut there), and the plan space keeps every group inside one
region (`PlanSpace(regions=...)`), so:

- a plan's score is the sum of its regions' costs (a group's kernel latency and launch are its
  own), and the cost of a region depends on that region's groups alone;
- the best plan found so far in one region and the best in another can be joined: every edge
  between regions goes forward in the order, so the joined plan is acyclic whatever each
  region holds (`Regions.join`).

The searcher keeps each plan's region costs and proposes the join of the best per region
whenever it is new; its moves change one region at a time, so the regions are searched
independently, each improvement found in any child kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ago_search.partition import GraphIndex, Partition, from_assignment

__all__ = ["Regions", "single_tensor_cuts"]


def single_tensor_cuts(index: GraphIndex) -> list[int]:
    """Positions i such that the only node of positions <= i with a consumer beyond i is one
    node (its output is the single tensor crossing the cut after position i)."""
    n = len(index)
    last_use = [max(index.succ[p], default=p) for p in range(n)]
    ends: list[list[int]] = [[] for _ in range(n)]
    for p in range(n):
        if last_use[p] > p:
            ends[last_use[p]].append(p)
    open_count, cuts = 0, []
    for i in range(n - 1):
        for _ in ends[i]:
            open_count -= 1  # producers whose last consumer is i close here
        if last_use[i] > i:
            open_count += 1
        if open_count == 1:
            cuts.append(i)
    return cuts


@dataclass(frozen=True)
class Regions:
    """of_position: the region of the node at each position of the graph index (regions are
    runs of positions, numbered in order)."""

    of_position: tuple[int, ...]

    @property
    def count(self) -> int:
        return (self.of_position[-1] + 1) if self.of_position else 0

    @staticmethod
    def at_cut_points(
        index: GraphIndex, partitions: Sequence[Partition] = (), min_complex: int = 2
    ) -> Regions:
        """Regions between the single-tensor cut points that no group of `partitions` spans,
        each holding at least `min_complex` complex ops (the last one joins its neighbour
        when it has fewer)."""
        n = len(index)
        spans = []
        for partition in partitions:
            for group in partition.group_ids:
                positions = [index.position[node] for node in partition.groups[group]]
                spans.append((min(positions), max(positions)))
        crossed = [0] * (n + 1)
        for low, high in spans:  # a cut after i is crossed when low <= i < high
            crossed[low] += 1
            crossed[high] -= 1
        running, blocked = 0, []
        for i in range(n):
            running += crossed[i]
            blocked.append(running > 0)
        cuts = {i for i in single_tensor_cuts(index) if not blocked[i]}
        of_position, region, complex_in_region, start = [], 0, 0, 0
        boundaries = []
        for i in range(n):
            of_position.append(region)
            complex_in_region += index.complex[i]
            if i in cuts and complex_in_region >= min_complex:
                boundaries.append(i)
                region, complex_in_region, start = region + 1, 0, i + 1
        if boundaries and complex_in_region < min_complex:
            # the tail is too small a region: it joins the one before
            last = of_position[start - 1]
            of_position = [min(r, last) for r in of_position]
        return Regions(tuple(of_position))

    def region_of(self, partition: Partition, group: int) -> int:
        """The region of a group (every group of a plan of the space lies in one)."""
        node = next(iter(partition.groups[group]))
        return self.of_position[partition.index.position[node]]

    def respects(self, partition: Partition) -> bool:
        """Whether every group of `partition` lies inside one region."""
        index = partition.index
        return all(
            len({self.of_position[index.position[node]] for node in partition.groups[g]}) == 1
            for g in partition.group_ids
        )

    def costs(
        self, partition: Partition, group_cost: Callable[[int], float | None]
    ) -> list[float] | None:
        """Per region, the sum of `group_cost(group)` over its groups; None when a group's
        cost is unknown."""
        out = [0.0] * self.count
        for group in partition.group_ids:
            cost = group_cost(group)
            if cost is None:
                return None
            out[self.region_of(partition, group)] += cost
        return out

    def cut(self, partition: Partition) -> Partition:
        """`partition` with every group that spans regions split at their boundaries (acyclic:
        the parts of a group follow each other in the order)."""
        if self.respects(partition):
            return partition
        index = partition.index
        labels = {
            node: (self.of_position[p], partition.group_of(node))
            for p, node in enumerate(index.nodes)
        }
        return from_assignment(index, labels)

    def join(self, parts: Sequence[Partition]) -> Partition:
        """The plan that holds, in region r, the groups `parts[r]` has there."""
        if len(parts) != self.count:
            raise ValueError(f"{self.count} regions, {len(parts)} partitions given")
        index = parts[0].index
        labels = {
            node: (self.of_position[p], parts[self.of_position[p]].group_of(node))
            for p, node in enumerate(index.nodes)
        }
        return from_assignment(index, labels)
