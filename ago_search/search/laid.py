"""A partition with a layout per group: what the search proposes, scores and tunes.

`LaidPartition` pairs a `Partition` with a label per node (None: the model's own NCHW), the
same for every member of a group: the group's layout. Partition moves keep every node's label
and a group whose members came with different labels takes its first member's (in graph
order), so a merge of an NHWC group into an NCHW one is one of the two, never a mix; layout
moves (`PlanSpace`) relabel whole groups. With no label set it is the partition itself: its
fingerprint and JSON are the partition's, so a search that never tried a layout reads and
writes the states it did before layouts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from ago_search.graph import OpGraph
from ago_search.partition import Partition
from ago_search.plan import Plan

__all__ = ["LaidPartition", "as_laid"]

_DEFAULT = (None, "NCHW")


class LaidPartition:
    """`partition` with `labels[i]` the layout of node `partition.index.nodes[i]`."""

    __slots__ = ("_key", "labels", "partition")

    def __init__(
        self, partition: Partition, labels: Iterable[str | None] | Mapping[str, str] | None = None
    ) -> None:
        nodes = partition.index.nodes
        if labels is None:
            raw: list[str | None] = [None] * len(nodes)
        elif isinstance(labels, Mapping):
            raw = [labels.get(n) for n in nodes]
        else:
            raw = list(labels)
            if len(raw) != len(nodes):
                raise ValueError(f"{len(raw)} labels for {len(nodes)} nodes")
        position = partition.index.position
        for group in partition.group_ids:
            members = partition.nodes_of(group)  # in graph order
            first = raw[position[members[0]]]
            first = None if first in _DEFAULT else first
            for node in members:
                raw[position[node]] = first
        self.partition = partition
        self.labels: tuple[str | None, ...] = tuple(raw)
        self._key: str | None = None

    # -- what the search reads of the partition -------------------------------------------------

    @property
    def index(self) -> Any:
        return self.partition.index

    @property
    def groups(self) -> Mapping[int, frozenset[str]]:
        return self.partition.groups

    @property
    def group_ids(self) -> tuple[int, ...]:
        return self.partition.group_ids

    @property
    def num_groups(self) -> int:
        return self.partition.num_groups

    def nodes_of(self, group: int) -> tuple[str, ...]:
        return self.partition.nodes_of(group)

    def group_of(self, node: str) -> int:
        return self.partition.group_of(node)

    def assignment(self) -> dict[str, int]:
        return self.partition.assignment()

    def neighbours(self, group: int) -> frozenset[int]:
        return self.partition.neighbours(group)

    # -- layouts --------------------------------------------------------------------------------

    @property
    def has_layouts(self) -> bool:
        return any(label is not None for label in self.labels)

    def layout(self, group: int) -> str | None:
        """The group's layout (None: NCHW)."""
        first = self.partition.nodes_of(group)[0]
        return self.labels[self.partition.index.position[first]]

    def layouts(self) -> dict[int, str | None]:
        return {g: self.layout(g) for g in self.partition.group_ids}

    def with_partition(self, partition: Partition) -> LaidPartition:
        """Another partition of the same graph, every node keeping its label."""
        return LaidPartition(partition, self.labels)

    def with_layout(self, groups: Iterable[int], layout: str | None) -> LaidPartition:
        """These groups in `layout` (None or "NCHW": the default)."""
        raw = list(self.labels)
        position = self.partition.index.position
        for group in groups:
            for node in self.partition.nodes_of(group):
                raw[position[node]] = layout
        return LaidPartition(self.partition, raw)

    def plan(self, graph: OpGraph) -> Plan:
        """The plan of this partition with its layouts."""
        plan = Plan.from_assignment(graph, self.partition.assignment())
        position = self.partition.index.position
        groups = [replace(g, layout=self.labels[position[g.nodes[0]]]) for g in plan.groups]
        return plan.with_groups(groups)

    # -- identity and JSON ---------------------------------------------------------------------

    def fingerprint(self) -> str:
        if self._key is None:
            key = self.partition.fingerprint()
            if self.has_layouts:
                text = ",".join(f"{n}={lab}" for n, lab in self._set_labels())
                key += "-" + hashlib.blake2b(text.encode(), digest_size=6).hexdigest()
            self._key = key
        return self._key

    def _set_labels(self) -> list[tuple[str, str]]:
        nodes = self.partition.index.nodes
        return [(nodes[i], lab) for i, lab in enumerate(self.labels) if lab is not None]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LaidPartition):
            return NotImplemented
        return self.partition == other.partition and self.labels == other.labels

    def __hash__(self) -> int:
        return hash((self.partition, self.labels))

    def __repr__(self) -> str:
        laid = sum(1 for g in self.group_ids if self.layout(g) is not None)
        return f"LaidPartition({self.partition!r}, {laid} groups in a layout)"

    def to_dict(self) -> dict[str, Any]:
        data = self.partition.to_dict()
        if self.has_layouts:
            data["layouts"] = dict(self._set_labels())
        return data

    @staticmethod
    def from_dict(graph: OpGraph, data: Mapping[str, Any]) -> LaidPartition:
        partition = Partition.from_dict(graph, data)
        return LaidPartition(partition, dict(data.get("layouts") or {}))


def as_laid(partition: Partition | LaidPartition) -> LaidPartition:
    """A partition as a `LaidPartition` (every group in NCHW when it is a plain one)."""
    return partition if isinstance(partition, LaidPartition) else LaidPartition(partition)
