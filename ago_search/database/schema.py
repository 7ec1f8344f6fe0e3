"""The tables of the tuning database file, and records as rows of them.

Tables (schema version 1):

- `workloads(id, shash, mod_json)`: tasks' IRModules as `tvm.ir.save_json` text, found by
  MetaSchedule's structural hash and confirmed by structural equality.
- `tasks(task_key, target, workload_id, name, created_at)`: one row per task key; the
  workload is NULL for a task whose records were committed without its module.
- `records(id, task_key, device_key, target, trace_hash, trace_json, status, latencies,
  median, error, layout, features, features_shape, measured_at, build_seconds, extra)`: one
  row per (task_key, device_key, trace_hash, target), unique. Indexed for "was this trace
  measured?" (the unique index) and for best-of queries (task, device, status, median).

`TuningDatabase` (`store`) is the only reader and writer of these tables.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ago_search.database.records import (
    Record,
    Status,
    TaskEntry,
    canonical_json,
    decode_features,
    encode_features,
)

__all__ = [
    "COLUMNS",
    "INSERT_RECORD_OR_KEEP",
    "INSERT_RECORD_OR_REPLACE",
    "INSERT_TASK",
    "SCHEMA",
    "SCHEMA_VERSION",
    "SELECT_RECORD",
    "record_from_row",
    "record_row",
    "task_entry",
]

SCHEMA_VERSION = 1

_STATUSES = ", ".join(f"'{s}'" for s in Status)

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS workloads (
    id INTEGER PRIMARY KEY,
    shash TEXT NOT NULL,
    mod_json TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS workloads_by_hash ON workloads (shash);
CREATE TABLE IF NOT EXISTS tasks (
    task_key TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    workload_id INTEGER REFERENCES workloads (id),
    name TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_by_workload ON tasks (workload_id, target);
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    task_key TEXT NOT NULL,
    device_key TEXT NOT NULL,
    target TEXT NOT NULL,
    trace_hash TEXT NOT NULL,
    trace_json TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ({_STATUSES})),
    latencies TEXT NOT NULL,
    median REAL,
    error TEXT,
    layout TEXT,
    features BLOB,
    features_shape TEXT,
    measured_at REAL NOT NULL,
    build_seconds REAL,
    extra TEXT NOT NULL DEFAULT '{{}}'
);
CREATE UNIQUE INDEX IF NOT EXISTS records_identity
    ON records (task_key, device_key, trace_hash, target);
CREATE INDEX IF NOT EXISTS records_best ON records (task_key, device_key, status, median);
"""

# Columns of `records` in the order rows are written and read (without the id).
COLUMNS = (
    "task_key",
    "device_key",
    "target",
    "trace_hash",
    "trace_json",
    "status",
    "latencies",
    "median",
    "error",
    "layout",
    "features",
    "features_shape",
    "measured_at",
    "build_seconds",
    "extra",
)
SELECT_RECORD = ", ".join(COLUMNS)
_INSERT = (
    f"INSERT INTO records ({SELECT_RECORD}) VALUES ({', '.join('?' * len(COLUMNS))}) "
    "ON CONFLICT (task_key, device_key, trace_hash, target) DO "
)
INSERT_RECORD_OR_KEEP = _INSERT + "NOTHING"
INSERT_RECORD_OR_REPLACE = (
    _INSERT
    + "UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c not in ("task_key", "device_key"))
)
INSERT_TASK = (
    "INSERT INTO tasks (task_key, target, workload_id, name, created_at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (task_key) DO UPDATE SET "
    "workload_id = coalesce(tasks.workload_id, excluded.workload_id), "
    "name = coalesce(tasks.name, excluded.name)"
)


def record_row(record: Record) -> tuple:
    """A record as the values of `COLUMNS`."""
    features: bytes | None = None
    shape: str | None = None
    if record.features is not None:
        features, dims = encode_features(record.features)
        shape = json.dumps(dims)
    return (
        record.task_key,
        record.device_key,
        record.target,
        record.trace_hash,
        record.trace_json,
        str(record.status),
        json.dumps(list(record.latencies)),
        record.median,
        record.error,
        record.layout,
        features,
        shape,
        record.measured_at,
        record.build_seconds,
        canonical_json(record.extra),
    )


def record_from_row(row: Sequence[Any]) -> Record:
    """The inverse of `record_row`."""
    values = dict(zip(COLUMNS, row, strict=True))
    features = None
    if values["features"] is not None:
        features = decode_features(values["features"], json.loads(values["features_shape"]))
    return Record(
        task_key=values["task_key"],
        device_key=values["device_key"],
        target=values["target"],
        trace_json=values["trace_json"],
        status=Status(values["status"]),
        latencies=tuple(json.loads(values["latencies"])),
        median=values["median"],
        error=values["error"],
        layout=values["layout"],
        features=features,
        measured_at=values["measured_at"],
        build_seconds=values["build_seconds"],
        extra=json.loads(values["extra"]),
    )


def task_entry(row: Sequence[Any]) -> TaskEntry:
    """A (task_key, target, workload shash, name) row as a `TaskEntry`."""
    key, target, shash, name = row
    return TaskEntry(
        task_key=key,
        target=target,
        workload_hash=int(shash) if shash is not None else None,
        name=name,
    )
