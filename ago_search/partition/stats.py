"""Sizes of a group of nodes: FLOPs, bytes, and the tensors that cross its border.

`node_set_stats` reads them off a `GraphIndex` for any set of node positions, so a prospective
merge is costed without building it; `Partition.group_stats` caches it per group.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from ago_search.partition.index import GraphIndex


@dataclass(frozen=True)
class GroupStats:
    """Sizes of one group (or a union of groups) of a partition.

    `input_bytes`: tensors made outside and read inside (each producer once, its largest edge
    into the group; model inputs by name). `output_bytes`: tensors made inside and read outside
    or returned by the model. `internal_bytes`: outputs that stay inside; `materialized_bytes`
    the part of them made by ops that are not inlined (many-to-many and one-to-many ops; the
    outputs of one-to-one, reorganize and shuffle ops are assumed computed inside their
    consumers, as TVM's compute_inline does).
    """

    nodes: int
    flops: int
    bytes: int  # sum of the members' own bytes read + written
    complex_ops: int
    param_bytes: int
    input_bytes: int
    output_bytes: int
    internal_bytes: int
    materialized_bytes: int

    @property
    def external_bytes(self) -> int:
        """Bytes that cross the group's border: what fusing saves when it shrinks."""
        return self.input_bytes + self.output_bytes

    @property
    def working_set_bytes(self) -> int:
        """Footprint if the group ran without tiling: weights + external tensors + the
        intermediates that must exist as buffers. An upper bound of what tiled code keeps hot."""
        return self.param_bytes + self.input_bytes + self.output_bytes + self.materialized_bytes


def node_set_stats(index: GraphIndex, members: Collection[int]) -> GroupStats:
    """`GroupStats` of the node positions `members` (see GroupStats for the conventions)."""
    member_set = members if isinstance(members, frozenset | set) else frozenset(members)
    succ, pred, edge_bytes = index.succ, index.pred, index.edge_bytes
    flops = node_bytes = complex_ops = param_bytes = 0
    output_bytes = internal_bytes = materialized_bytes = 0
    producers: dict[int, int] = {}
    model_inputs: dict[str, int] = {}
    for u in member_set:
        flops += index.flops[u]
        node_bytes += index.node_bytes[u]
        complex_ops += index.complex[u]
        param_bytes += index.param_bytes[u]
        for p in pred[u]:
            if p not in member_set:
                b = edge_bytes[(p, u)]
                if b > producers.get(p, -1):
                    producers[p] = b
        for name, b in index.model_inputs[u]:
            model_inputs[name] = b
        leaving = [edge_bytes[(u, v)] for v in succ[u] if v not in member_set]
        if index.is_output[u]:
            output_bytes += index.out_bytes[u]
        elif leaving:
            output_bytes += max(leaving)
        else:
            internal_bytes += index.out_bytes[u]
            if not index.inlined[u]:
                materialized_bytes += index.out_bytes[u]
    return GroupStats(
        nodes=len(member_set),
        flops=flops,
        bytes=node_bytes,
        complex_ops=complex_ops,
        param_bytes=param_bytes,
        input_bytes=sum(producers.values()) + sum(model_inputs.values()),
        output_bytes=output_bytes,
        internal_bytes=internal_bytes,
        materialized_bytes=materialized_bytes,
    )
