"""Loop schedules per group: tuning tasks (unique group PrimFuncs) for MetaSchedule.

- `extract_tasks(fused_mod, target, plan, graph)`: one `Task` per distinct PrimFunc called from
  the fused module, keyed by MetaSchedule's workload hash and the target; repeated blocks of a
  model share one task (its `weight` counts the calls).
"""

from ago_search.schedule.tasks import (
    Task,
    count_complex_blocks,
    extract_tasks,
    target_string,
    task_key,
    workload_module,
)

__all__ = [
    "Task",
    "count_complex_blocks",
    "extract_tasks",
    "target_string",
    "task_key",
    "workload_module",
]
