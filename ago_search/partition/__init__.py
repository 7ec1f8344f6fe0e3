"""Partitions of an operator graph into groups (the graph-level search space).

- `Partition`: an immutable node -> group map whose quotient graph is a DAG; moves `merge`,
  `merge_many`, `split`, `move` return a new Partition or an `Illegal` with a reason. Legality
  is checked incrementally (see `partition`), by the one acyclicity check (`quotient`) that
  plans use too: `convexity_witness`, `quotient_cycle`, `quotient_graph`.
- `GroupStats` / `node_set_stats` (`stats`): FLOPs, bytes and border tensors of a node set.
- Seeds (`seeds`): `tvm_seed` (TVM's FuseOps groups), `dnnfusion_seed` (DNNFusion's greedy
  plan from its mapping-type table), `intensive_seed` (AGO-style groups with several complex
  ops within a cache budget, `host_cache_bytes()`), and `seed_stats` for reports.
"""

from ago_search.partition.cache import DEFAULT_CACHE_BYTES, host_cache_bytes, parse_cache_size
from ago_search.partition.index import GraphIndex, graph_index
from ago_search.partition.partition import Illegal, Partition, from_assignment, singletons
from ago_search.partition.quotient import convexity_witness, quotient_cycle, quotient_graph
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
from ago_search.partition.stats import GroupStats, node_set_stats

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
    "convexity_witness",
    "dnnfusion_seed",
    "from_assignment",
    "fusion_decision",
    "graph_index",
    "host_cache_bytes",
    "intensive_seed",
    "node_set_stats",
    "parse_cache_size",
    "quotient_cycle",
    "quotient_graph",
    "seed_stats",
    "seed_stats_table",
    "singletons",
    "tvm_seed",
]
