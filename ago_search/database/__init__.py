"""The tuning database: tasks, workloads and every measurement, keyed by device.

- `TuningDatabase(path)`: the SQLite store and our API (commit_record, records, best,
  has_measured, status_counts, tasks, merge_from).
- `Record`, `Status`, `TaskEntry`: the data it holds; `task_key(workload, target)` and
  `target_string(target)`: how tasks are keyed.
- `SqliteDatabase(path_or_db, device_key, target=None)`: the same file as a MetaSchedule
  `Database` for one device (imported on first use: it loads MetaSchedule).
- `export_jsonl(db, path)` / `import_jsonl(db, path)` / `read_jsonl(path)`: the datasets/ trace
  format (datasets/README.md).
"""

from __future__ import annotations

from ago_search._lazy import lazy_getattr
from ago_search.database.jsonl import FORMAT_VERSION, export_jsonl, import_jsonl, read_jsonl
from ago_search.database.keys import target_string, task_key
from ago_search.database.records import (
    MS_FAILURE_SECONDS,
    Record,
    Status,
    TaskEntry,
    canonical_target,
    trace_hash,
    trace_to_json,
)
from ago_search.database.schema import SCHEMA_VERSION
from ago_search.database.store import DatabaseError, TuningDatabase

_LAZY = {
    "SqliteDatabase": "metaschedule",
    "CommitMeasurements": "metaschedule",
}

__all__ = [
    "FORMAT_VERSION",
    "MS_FAILURE_SECONDS",
    "SCHEMA_VERSION",
    "DatabaseError",
    "Record",
    "Status",
    "TaskEntry",
    "TuningDatabase",
    "canonical_target",
    "export_jsonl",
    "import_jsonl",
    "read_jsonl",
    "target_string",
    "task_key",
    "trace_hash",
    "trace_to_json",
    *_LAZY,
]


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
