"""The tuning database: tasks, workloads and every measurement, keyed by device.

- `TuningDatabase(path)`: the SQLite store and our API (commit_record, records, best,
  has_measured, status_counts, tasks, merge_from, export_jsonl, import_jsonl).
- `Record`, `Status`, `TaskEntry`: the data it holds.
- `SqliteDatabase(path_or_db, device_key, target=None)`: the same file as a MetaSchedule
  `Database` for one device (imported on first use: it loads MetaSchedule).
- `export_jsonl` / `import_jsonl` / `read_jsonl`: the datasets/ trace format (datasets/README.md).
"""

from __future__ import annotations

from ago_search._lazy import lazy_getattr
from ago_search.database.records import (
    MS_FAILURE_SECONDS,
    Record,
    Status,
    TaskEntry,
    canonical_target,
    trace_hash,
    trace_to_json,
)
from ago_search.database.store import SCHEMA_VERSION, DatabaseError, TuningDatabase

_LAZY = {
    "SqliteDatabase": "metaschedule",
    "CommitMeasurements": "metaschedule",
    "FORMAT_VERSION": "jsonl",
    "export_jsonl": "jsonl",
    "import_jsonl": "jsonl",
    "read_jsonl": "jsonl",
}

__all__ = [
    "MS_FAILURE_SECONDS",
    "SCHEMA_VERSION",
    "DatabaseError",
    "Record",
    "Status",
    "TaskEntry",
    "TuningDatabase",
    "canonical_target",
    "trace_hash",
    "trace_to_json",
    *_LAZY,
]


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
