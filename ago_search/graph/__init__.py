"""OpGraph: operators of a Relax module with shapes, FLOPs, bytes and DNNFusion mapping types.

- `legalize(mod, target)`: the module every partition is applied to (the default pipeline up to
  FuseOps); `build_opgraph(mod)`: one node per operator binding of it (see `opgraph`).
- `summarize(graph)` and friends: plain data for `inspect`.
- `tvm_default_groups(mod, target)`: what TVM's own FuseOps would group, over the same nodes.
"""

from ago_search.graph.flops import op_flops
from ago_search.graph.mapping import MappingType, OpPattern, is_complex, known_mapping
from ago_search.graph.opgraph import (
    OpGraph,
    TensorInfo,
    build_opgraph,
    legalize,
    opgraph_from_dict,
    opgraph_to_dict,
    tensor_bytes,
)
from ago_search.graph.summary import (
    GraphSummary,
    OpTypeSummary,
    mapping_counts,
    ops_by_type,
    summarize,
    total_flops,
)
from ago_search.graph.tvm_fusion import DefaultGroups, FusedGroup, tvm_default_groups

__all__ = [
    "DefaultGroups",
    "FusedGroup",
    "GraphSummary",
    "MappingType",
    "OpGraph",
    "OpPattern",
    "OpTypeSummary",
    "TensorInfo",
    "build_opgraph",
    "is_complex",
    "known_mapping",
    "legalize",
    "mapping_counts",
    "op_flops",
    "opgraph_from_dict",
    "opgraph_to_dict",
    "ops_by_type",
    "summarize",
    "tensor_bytes",
    "total_flops",
    "tvm_default_groups",
]
