"""Loop schedules per group: tuning tasks (unique group PrimFuncs) for MetaSchedule.

- `extract_tasks(fused_mod, target, plan, graph)`: one `Task` per distinct PrimFunc called from
  the fused module, keyed by MetaSchedule's workload hash and the target; repeated blocks of a
  model share one task (its `weight` counts the calls).
- `tune_tasks(tasks, device, database, TuningConfig(...), cost_model=...)`: MetaSchedule's
  evolutionary search with our builders, runners and database, guided by the cost model it is
  handed (`tune`); how to tune (`config`), the search minus what the database has measured,
  so a run resumes without re-measuring (`strategy.SkipMeasured`), and what a run leaves
  (`results`: `TaskResult`, `TuningReport`, `task_results`).
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
    workload_module,
)

_LAZY = {
    "SOURCE_UNTUNED": "results",
    "SkipMeasured": "strategy",
    "TaskResult": "results",
    "TuningConfig": "config",
    "TuningReport": "results",
    "task_results": "results",
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
    "workload_module",
    *_LAZY,
]


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
