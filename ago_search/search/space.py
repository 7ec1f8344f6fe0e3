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

Layouts (ALT): a plan of the space is a `LaidPartition`, a layout per group. With layout
choices (`layouts`, e.g. NHWC and NCHW16c: `ago_search.layout.layout_choices`) two more moves:

- layout: one group that holds a rank-4 activation takes another layout (or NCHW again);
- layout-region: a group and up to 7 neighbouring groups around it take one layout, so a run
  of groups changes together and the transforms between them cancel (a lone group in a layout
  pays a transform at each border, which a one-group move alone rarely wins back).

Both propagate (ALT): the layout-agnostic groups (no conv or matmul) next to the changed ones,
and theirs in turn, take the same layout, so an elementwise or pooling group between two convs
never forces a transform on each side.

Partition moves keep every node's layout (`LaidPartition.with_partition`).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ago_search.graph import OpGraph
from ago_search.layout import touches_activation
from ago_search.partition import Illegal, Partition, graph_index
from ago_search.search.laid import LaidPartition, as_laid
from ago_search.search.regions import Regions

__all__ = ["GroupLimits", "PlanSpace"]

MOVES = ("merge", "split", "move")
LAYOUT_MOVES = ("layout", "layout-region")
MAX_REGION_GROUPS = 8


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
        self,
        graph: OpGraph,
        limits: GroupLimits | None = None,
        regions: Regions | None = None,
        layouts: Sequence[str] = (),
    ) -> None:
        self.graph = graph
        self.index = graph_index(graph)
        self.limits = limits or GroupLimits()
        self.regions = regions  # moves keep every group inside its region (search/regions.py)
        self.layouts = tuple(lay for lay in layouts if lay != "NCHW")  # besides the default
        # nodes that write or read an image: a group holding one can take a layout (a flatten
        # after the global pool too: else it reads NCHW, a transform before it)
        self._laid_nodes = frozenset(n for n in graph.order if touches_activation(graph, n))

    @functools.cached_property
    def layout_share(self) -> float:
        """The share of the model's FLOPs in nodes a layout changes (ResNet-18 all of them,
        a ViT its patch embedding's 2 %, BERT none)."""
        total = sum(float(self.graph.node(n)["flops"] or 0.0) for n in self.graph.order)
        laid = sum(float(self.graph.node(n)["flops"] or 0.0) for n in self._laid_nodes)
        return laid / total if total > 0 else 0.0

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

    def fits(self, partition: Partition | LaidPartition) -> bool:
        if isinstance(partition, LaidPartition):
            partition = partition.partition
        return all(self.group_fits(partition, g) for g in partition.group_ids)

    def fit_to_limits(self, partition: Any) -> Any:
        """`partition` with every group over a limit split (at the middle of a topological
        order of its members, then smaller) until all fit (a `LaidPartition` keeps its
        nodes' layouts)."""
        if isinstance(partition, LaidPartition):
            return partition.with_partition(self.fit_to_limits(partition.partition))
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
        self, laid: LaidPartition | Partition, rng: random.Random, tries: int = 16
    ) -> tuple[LaidPartition, str] | None:
        """A random legal plan one move away, within the limits, and the move's name; None
        when `tries` random moves all failed."""
        laid = as_laid(laid)
        kinds = MOVES + (LAYOUT_MOVES if self.layouts else ())
        for _ in range(tries):
            kind = rng.choice(kinds)
            if kind in LAYOUT_MOVES:
                moved = self._random_layout(laid, rng, region=kind == "layout-region")
                if moved is not None:
                    return moved, kind
                continue
            result = getattr(self, f"_random_{kind}")(laid.partition, rng)
            # a split or a move can grow a group's working set (an intermediate that was inside
            # becomes an input of one half), so every group is checked, not just the new ones
            if result is not None and not isinstance(result, Illegal) and self.fits(result):
                return laid.with_partition(result), kind
        return None

    def layout_groups(self, laid: LaidPartition) -> list[int]:
        """The groups of `laid` that hold a rank-4 activation (a layout changes them)."""
        return [g for g in laid.group_ids if not laid.groups[g].isdisjoint(self._laid_nodes)]

    def _random_layout(
        self, laid: LaidPartition, rng: random.Random, region: bool
    ) -> LaidPartition | None:
        candidates = self.layout_groups(laid)
        if not candidates:
            return None
        group = candidates[rng.randrange(len(candidates))]
        current = laid.layout(group)
        options = [lay for lay in (None, *self.layouts) if lay != current]
        layout = options[rng.randrange(len(options))]
        chosen = [group]
        able = set(candidates)
        if region:
            size = rng.randint(2, MAX_REGION_GROUPS)
            frontier = [group]
            while frontier and len(chosen) < size:
                for other in sorted(laid.neighbours(frontier.pop(0))):
                    if other in able and other not in chosen and len(chosen) < size:
                        chosen.append(other)
                        frontier.append(other)
        chosen += self._agnostic_around(laid, chosen, able)
        return laid.with_layout(chosen, layout)

    def _agnostic_around(
        self, laid: LaidPartition, chosen: Sequence[int], able: set[int]
    ) -> list[int]:
        """Propagation (ALT): the groups without a conv or matmul (elementwise, pools, concat,
        resize: layout-agnostic) reachable from `chosen` through such groups take the same
        layout, instead of a transform on each side of them."""
        index = self.index
        seen = set(chosen)
        frontier = list(chosen)
        out: list[int] = []
        while frontier:
            for other in sorted(laid.neighbours(frontier.pop(0))):
                if other in seen or other not in able:
                    continue
                seen.add(other)
                members = laid.groups[other]
                if not any(index.complex[index.position[n]] for n in members):
                    out.append(other)
                    frontier.append(other)
        return out

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
