"""Plans: a partition of the OpGraph into groups, with a layout and schedule slot per group.

- `plan`: the data (`Plan`, `GroupPlan`), its JSON and `plan_hash`, `graph_fingerprint`, and
  `validate_plan`, which uses the acyclicity check of `ago_search.partition`.
- `apply`: `apply_plan`, the plan as a Relax module with one PrimFunc per group, and the names
  those functions get (`group_function_names`); `fuse_groups`, chosen groups on their own as
  the same PrimFuncs (what the search scores new groups with).

Compiling a plan is `ago_search.build`'s job (`compile_plan`, `compile_plan_tuned`).
"""

from ago_search.plan.apply import (
    Border,
    apply_plan,
    border_module,
    cancelled_borders,
    fuse_groups,
    group_bindings,
    group_function_names,
    plan_borders,
    transform_map,
)
from ago_search.plan.plan import (
    PLAN_FORMAT,
    PLAN_VERSION,
    GroupPlan,
    Plan,
    PlanError,
    graph_fingerprint,
    validate_plan,
)

__all__ = [
    "Border",
    "PLAN_FORMAT",
    "PLAN_VERSION",
    "GroupPlan",
    "Plan",
    "PlanError",
    "apply_plan",
    "border_module",
    "cancelled_borders",
    "fuse_groups",
    "graph_fingerprint",
    "group_bindings",
    "group_function_names",
    "plan_borders",
    "transform_map",
    "validate_plan",
]
