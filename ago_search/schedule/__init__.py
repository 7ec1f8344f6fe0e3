"""Loop schedules per group: tuning tasks (unique group PrimFuncs) for MetaSchedule.

- `extract_tasks(fused_mod, target, plan, graph)`: one `Task` per distinct PrimFunc called from
  the fused module, keyed by MetaSchedule's workload hash and the target; repeated blocks of a
  model share one task (its `weight` counts the calls).
- `tune_tasks(tasks, device, database, TuningConfig(...))`: MetaSchedule's evolutionary search
  with our builders, runners and database, resumable without re-measuring (`tune`).
- `FirstPassScheduler`: every task one cheap round first, then rounds by expected gain
  (`scheduler`).
- `ReferenceCheck`: every measured candidate compared with the untuned task's outputs
  (`verify`).

The tuning names are imported on first use (they load MetaSchedule's search and ONNX).
"""

from __future__ import annotations

from ago_search._lazy import lazy_getattr
from ago_search.schedule.tasks import (
    Task,
    count_complex_blocks,
    extract_tasks,
    target_string,
    task_key,
    workload_module,
)

_LAZY = {
    "SkipMeasured": "tune",
    "TaskResult": "tune",
    "TuningConfig": "tune",
    "TuningReport": "tune",
    "task_results": "tune",
    "tune_task": "tune",
    "tune_tasks": "tune",
    "FirstPassScheduler": "scheduler",
    "TaskPrior": "scheduler",
    "expected_gain": "scheduler",
    "first_pass_round": "scheduler",
    "ReferenceCheck": "verify",
    "compute_reference": "verify",
    "fixed_inputs": "verify",
}

__all__ = [
    "Task",
    "count_complex_blocks",
    "extract_tasks",
    "target_string",
    "task_key",
    "workload_module",
    *_LAZY,
]


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
