"""Partitions of an operator graph into groups (the graph-level search space).

- `Partition`: an immutable node -> group map whose quotient graph is a DAG; moves `merge`,
  `merge_many`, `split`, `move` return a new Partition or an `Illegal` with a reason. Legality
  is checked incrementally (see `partition`).
- Seeds (`seeds`): `tvm_seed` (TVM's FuseOps groups), `dnnfusion_seed` (DNNFusion's greedy
  plan from its mapping-type table), `intensive_seed` (AGO-style groups with several complex
  ops within a cache budget, `host_cache_bytes()`), and `seed_stats` for reports.
"""

from ago_search.partition.cache import DEFAULT_CACHE_BYTES, host_cache_bytes, parse_cache_size
from ago_search.partition.index import GraphIndex, graph_index
from ago_search.partition.partition import (
    GroupStats,
    Illegal,
    Partition,
    from_assignment,
    node_set_stats,
    singletons,
)
from ago_search.partition.seeds import (
    DNNFUSION_TABLE,
    FusionDecision,
    ProfileEdge,
    SeedResult,
    SeedStats,
    dnnfusion_seed,
    fusion_decision,
    intensive_seed,
    seed_stats,
    seed_stats_table,
    tvm_seed,
)

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "DNNFUSION_TABLE",
    "FusionDecision",
    "GraphIndex",
    "GroupStats",
    "Illegal",
    "Partition",
    "ProfileEdge",
    "SeedResult",
    "SeedStats",
    "dnnfusion_seed",
    "from_assignment",
    "fusion_decision",
    "graph_index",
    "host_cache_bytes",
    "intensive_seed",
    "node_set_stats",
    "parse_cache_size",
    "seed_stats",
    "seed_stats_table",
    "singletons",
    "tvm_seed",
]
