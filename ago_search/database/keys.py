"""Task keys: which task a record belongs to, the same in every run, model and process.

A task is one workload (MetaSchedule's structural hash of the task's normalised module, see
`schedule.workload_module`) compiled for one target, keyed
f"{workload:016x}@{first 12 hex digits of sha256(target_string)}". The database owns the key:
records, trace files and the MetaSchedule adapter all find a task by it.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tvm

__all__ = ["target_string", "task_key"]


def target_string(target: tvm.target.Target) -> str:
    """The target as canonical JSON (sorted keys), the same string for equal targets."""
    return json.dumps(json.loads(str(target)), sort_keys=True, separators=(",", ":"))


def task_key(workload: int, target: tvm.target.Target | str) -> str:
    """f"{workload:016x}@{first 12 hex digits of sha256(target_string)}"."""
    text = target if isinstance(target, str) else target_string(target)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return f"{workload:016x}@{digest}"
