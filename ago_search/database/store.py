"""The tuning database: every measurement of every task on every device, in one SQLite file.

The tables, and records as rows of them, are in `schema`. Trace files (`jsonl`) and
MetaSchedule's view of the file (`metaschedule.SqliteDatabase`) are built on the public
methods of `TuningDatabase`.

Crash safety. The file is in WAL mode and every commit is its own transaction, done before
`commit_record` returns. A commit in WAL mode is an append to the `-wal` file: once `write(2)`
returns, the bytes are in the kernel's page cache, which outlives the process, so a SIGKILL,
segfault or OOM kill of the writer loses nothing it committed (the next opener replays the
WAL). `synchronous=NORMAL` (the default here) skips the fsync per commit: only an OS crash or
power loss can lose the last commits, and even then the file stays consistent. `FULL` adds
an fsync per commit, which survives power loss too, at the price of a disk flush while the
write lock is held (0.27 ms a commit instead of 0.11 ms on this project's machine; far more on
network or SD-card storage), and writers wait for each other's flushes. NORMAL is the default:
the requirement is surviving the death of the process, and many Ray workers may share one
file. Pass synchronous="FULL" where power loss matters more than that.

Concurrency. Several processes may open one file (a Ray worker writing while the search
reads). Readers never block in WAL mode; writers take the lock up front (`BEGIN IMMEDIATE`)
and wait up to `busy_timeout_s` for each other. One `TuningDatabase` may be used from several
threads (calls are serialised); do not carry one across `fork`: open the path in the child.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ago_search.database.records import Record, Status, TaskEntry, canonical_target
from ago_search.database.schema import (
    INSERT_RECORD_OR_KEEP,
    INSERT_RECORD_OR_REPLACE,
    INSERT_TASK,
    SCHEMA,
    SCHEMA_VERSION,
    SELECT_RECORD,
    record_from_row,
    record_row,
    task_entry,
)
from ago_search.errors import AgoSearchError

__all__ = ["DatabaseError", "TuningDatabase"]

log = logging.getLogger(__name__)

SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")


class DatabaseError(AgoSearchError):
    """A tuning database or trace file cannot be used as given."""


class TuningDatabase:
    """Tasks, workloads and measurement records in one SQLite file (see the module doc).

    path: the database file, created with its folder if missing (unless read_only).
    synchronous: SQLite's `synchronous` for this connection: "NORMAL" survives the death of
        the process, "FULL" also a power loss (an fsync per commit).
    busy_timeout_s: how long a writer waits for another process's transaction.
    read_only: open an existing database without writing to it (merges read their source so).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "NORMAL",
        busy_timeout_s: float = 60.0,
        read_only: bool = False,
    ) -> None:
        self.path = Path(path)
        self.read_only = read_only
        synchronous = synchronous.upper()
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, got {synchronous}")
        if not self.path.exists():
            if read_only:
                raise DatabaseError(f"no tuning database at {self.path}: check the path")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        try:
            self._conn = sqlite3.connect(
                f"{self.path.resolve().as_uri()}?mode=ro" if read_only else str(self.path),
                timeout=busy_timeout_s,
                isolation_level=None,  # transactions are explicit: one per commit
                check_same_thread=False,  # calls are serialised by self._lock
                uri=read_only,
            )
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            if read_only:
                self._check_schema()
            else:
                self._set_up(synchronous, busy_timeout_s)
        except sqlite3.DatabaseError as err:
            raise DatabaseError(
                f"{self.path} is not a usable SQLite tuning database ({err}): "
                "pass the path of a tuning.db written by ago-search, or a new path"
            ) from err
        # structural hash -> [(workload id, IRModule)], filled on demand
        self._workloads: dict[int, list[tuple[int, Any]]] = {}
        self._modules: dict[int, Any] = {}

    # ---------------------------------------------------------------- connection

    def _set_up(self, synchronous: str, busy_timeout_s: float) -> None:
        """WAL mode and the schema. Two processes opening a new file at once can get "database
        is locked" here without SQLite's busy handler being called (the switch to WAL takes an
        exclusive lock, and SQLite refuses rather than waits where waiting could deadlock): such
        a refusal is retried until `busy_timeout_s`."""
        deadline = time.monotonic() + busy_timeout_s
        while True:
            try:
                mode = self._conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    log.warning("%s: journal mode is %s, not WAL (file system?)", self.path, mode)
                self._conn.execute(f"PRAGMA synchronous = {synchronous}")
                self._create_schema()
                return
            except sqlite3.OperationalError as err:
                if "locked" not in str(err) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _create_schema(self) -> None:
        with self._write() as conn:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
        self._check_schema()

    def _check_schema(self) -> None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None:
            raise DatabaseError(f"{self.path} is an SQLite file, but not a tuning database")
        if int(row[0]) > SCHEMA_VERSION:
            raise DatabaseError(
                f"{self.path} has schema version {row[0]}, newer than this ago-search reads "
                f"({SCHEMA_VERSION}): upgrade ago-search"
            )

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding SQLite's write lock from its start."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> TuningDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"TuningDatabase({str(self.path)!r})"

    # ---------------------------------------------------------------- workloads and tasks

    def _workload_candidates(self, shash: int) -> list[tuple[int, Any]]:
        """Stored workloads with this hash, loading those another process added since."""
        import tvm

        known = self._workloads.setdefault(shash, [])
        known_ids = {wid for wid, _ in known}
        for wid, mod_json in self._query(
            "SELECT id, mod_json FROM workloads WHERE shash = ? ORDER BY id", (str(shash),)
        ):
            if wid not in known_ids:
                mod = tvm.ir.load_json(mod_json)
                known.append((wid, mod))
                self._modules[wid] = mod
        return known

    def find_workload(self, mod: Any) -> int | None:
        """The id of the stored workload structurally equal to `mod`, None if there is none."""
        import tvm_ffi

        shash = int(tvm_ffi.structural_hash(mod))
        for wid, stored in self._workloads.get(shash, ()):
            if tvm_ffi.structural_equal(stored, mod):
                return wid
        for wid, stored in self._workload_candidates(shash):
            if tvm_ffi.structural_equal(stored, mod):
                return wid
        return None

    def commit_workload(self, mod: Any) -> int:
        """Store `mod` (an IRModule) unless a structurally equal one is stored; its id."""
        import tvm
        import tvm_ffi

        wid = self.find_workload(mod)
        if wid is not None:
            return wid
        shash = int(tvm_ffi.structural_hash(mod))
        with self._write():
            # another process may have added it since: decide under the write lock
            for wid, stored in self._workload_candidates(shash):
                if tvm_ffi.structural_equal(stored, mod):
                    return wid
            cursor = self._conn.execute(
                "INSERT INTO workloads (shash, mod_json) VALUES (?, ?)",
                (str(shash), tvm.ir.save_json(mod)),
            )
            wid = int(cursor.lastrowid)
        self._workloads.setdefault(shash, []).append((wid, mod))
        self._modules[wid] = mod
        return wid

    def workload_module(self, workload_id: int) -> Any:
        """The stored IRModule of a workload id."""
        import tvm

        mod = self._modules.get(workload_id)
        if mod is None:
            rows = self._query("SELECT mod_json FROM workloads WHERE id = ?", (workload_id,))
            if not rows:
                raise KeyError(f"no workload {workload_id} in {self.path}")
            mod = self._modules[workload_id] = tvm.ir.load_json(rows[0][0])
        return mod

    def commit_task(
        self,
        task_key: str,
        target: Any,
        mod: Any | None = None,
        name: str | None = None,
    ) -> None:
        """Register a task (and its IRModule, which MetaSchedule needs to replay its traces).

        A task already registered keeps its target; a module or name it lacked is added.
        """
        wid = self.commit_workload(mod) if mod is not None else None
        with self._write() as conn:
            conn.execute(INSERT_TASK, (task_key, canonical_target(target), wid, name, time.time()))

    def workload(self, task_key: str) -> Any | None:
        """The IRModule of a task, None if the task or its module is not stored."""
        rows = self._query("SELECT workload_id FROM tasks WHERE task_key = ?", (task_key,))
        if not rows or rows[0][0] is None:
            return None
        return self.workload_module(rows[0][0])

    def task(self, task_key: str) -> TaskEntry | None:
        rows = self._query(
            "SELECT t.task_key, t.target, w.shash, t.name FROM tasks t "
            "LEFT JOIN workloads w ON w.id = t.workload_id WHERE t.task_key = ?",
            (task_key,),
        )
        return task_entry(rows[0]) if rows else None

    def tasks(self, device_key: str | None = None) -> list[TaskEntry]:
        """Tasks in key order; with device_key, only those with records on that device."""
        sql = (
            "SELECT t.task_key, t.target, w.shash, t.name FROM tasks t "
            "LEFT JOIN workloads w ON w.id = t.workload_id"
        )
        params: tuple = ()
        if device_key is not None:
            sql += (
                " WHERE EXISTS (SELECT 1 FROM records r "
                "WHERE r.task_key = t.task_key AND r.device_key = ?)"
            )
            params = (device_key,)
        return [task_entry(row) for row in self._query(sql + " ORDER BY t.task_key", params)]

    def task_keys_of_workload(self, workload_id: int, target: str | None = None) -> list[str]:
        """Keys of the tasks of a workload (for one canonical target, or any)."""
        sql = "SELECT task_key FROM tasks WHERE workload_id = ?"
        params: tuple = (workload_id,)
        if target is not None:
            sql += " AND target = ?"
            params += (target,)
        return [row[0] for row in self._query(sql + " ORDER BY task_key", params)]

    def devices(self) -> list[str]:
        """Device keys that have records."""
        return [row[0] for row in self._query("SELECT DISTINCT device_key FROM records ORDER BY 1")]

    # ---------------------------------------------------------------- records

    def commit_record(self, record: Record, *, replace: bool = False) -> bool:
        """Store one measurement in its own transaction, durable when this returns.

        A record with the identity of a stored one (task, device, trace hash, target) is kept
        out unless replace=True (a deliberate re-measurement). Its task is registered if
        new. Returns whether the record was written.
        """
        with self._write() as conn:
            conn.execute(INSERT_TASK, (record.task_key, record.target, None, None, time.time()))
            cursor = conn.execute(
                INSERT_RECORD_OR_REPLACE if replace else INSERT_RECORD_OR_KEEP, record_row(record)
            )
            written = cursor.rowcount == 1
        if not written:
            log.debug("record %s/%s already stored", record.task_key, record.trace_hash)
        return written

    def commit_records(self, records: Iterable[Record]) -> int:
        """Store many records in one transaction (imports, merges); returns how many were new."""
        rows = [record_row(r) for r in records]
        tasks = {(row[0], row[2]) for row in rows}
        with self._write() as conn:
            now = time.time()
            conn.executemany(INSERT_TASK, [(k, t, None, None, now) for k, t in sorted(tasks)])
            before = conn.total_changes
            conn.executemany(INSERT_RECORD_OR_KEEP, rows)
            return conn.total_changes - before

    def set_status(
        self,
        task_key: str,
        device_key: str,
        trace_hash: str,
        status: Status | str,
        error: str | None = None,
    ) -> int:
        """Change the status of a measured trace (e.g. to wrong_result after a check); the
        number of records changed (one per target)."""
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE records SET status = ?, error = coalesce(?, error) "
                "WHERE task_key = ? AND device_key = ? AND trace_hash = ?",
                (str(Status(status)), error, task_key, device_key, trace_hash),
            )
            return cursor.rowcount

    def has_measured(
        self, task_key: str, device_key: str, trace_hash: str, target: Any | None = None
    ) -> bool:
        """Whether this trace of this task was measured on this device (any outcome)."""
        sql = "SELECT 1 FROM records WHERE task_key = ? AND device_key = ? AND trace_hash = ?"
        params: tuple = (task_key, device_key, trace_hash)
        if target is not None:
            sql += " AND target = ?"
            params += (canonical_target(target),)
        return bool(self._query(sql + " LIMIT 1", params))

    def measured(self, task_key: str, device_key: str) -> dict[str, Status]:
        """trace hash -> status of every trace of a task measured on a device: what a resumed
        search skips, in one query."""
        rows = self._query(
            "SELECT trace_hash, status FROM records WHERE task_key = ? AND device_key = ?",
            (task_key, device_key),
        )
        return {trace: Status(status) for trace, status in rows}

    def records(
        self,
        task_key: str | None = None,
        device_key: str | None = None,
        status: Status | str | None = None,
        target: Any | None = None,
    ) -> list[Record]:
        """Records in commit order, filtered by whichever of the arguments are given."""
        where, params = _filters(task_key, device_key, status, target)
        rows = self._query(f"SELECT {SELECT_RECORD} FROM records{where} ORDER BY id", params)
        return [record_from_row(row) for row in rows]

    def latencies_in_order(self, device_key: str) -> dict[str, list[float | None]]:
        """task key -> the median of each of its records on a device, in commit order (None:
        not an ok record): how tasks improved with their trials, in one light query."""
        rows = self._query(
            "SELECT task_key, status, median FROM records WHERE device_key = ? ORDER BY id",
            (device_key,),
        )
        out: dict[str, list[float | None]] = {}
        for key, status, median in rows:
            out.setdefault(key, []).append(median if status == Status.OK.value else None)
        return out

    def best(
        self, task_key: str, device_key: str, k: int = 1, target: Any | None = None
    ) -> list[Record]:
        """The k fastest ok records of a task on a device (by median), fastest first.
        Failures and wrong results are never among them."""
        if k <= 0:
            return []
        where, params = _filters(task_key, device_key, Status.OK, target)
        rows = self._query(
            f"SELECT {SELECT_RECORD} FROM records{where} ORDER BY median, id LIMIT ?", (*params, k)
        )
        return [record_from_row(row) for row in rows]

    def last_record_id(self) -> int:
        """The id of the newest record (0: none): whether anything was committed since."""
        rows = self._query("SELECT MAX(id) FROM records")
        return int(rows[0][0] or 0)

    def best_traces(self, device_key: str, k: int = 1) -> dict[str, list[tuple[str, str]]]:
        """task key -> (trace hash, trace JSON) of its k fastest ok records on a device, fastest
        first, for every task at once: what other tasks of a run may borrow (`transfer`)."""
        if k <= 0:
            return {}
        rows = self._query(
            "SELECT task_key, trace_hash, trace_json FROM ("
            " SELECT task_key, trace_hash, trace_json, ROW_NUMBER() OVER"
            " (PARTITION BY task_key ORDER BY median, id) AS place"
            " FROM records WHERE device_key = ? AND status = ?"
            ") WHERE place <= ? ORDER BY task_key, place",
            (device_key, Status.OK.value, k),
        )
        out: dict[str, list[tuple[str, str]]] = {}
        for task_key, digest, trace_json in rows:
            out.setdefault(task_key, []).append((digest, trace_json))
        return out

    def workload_ids(self, target: Any | None = None) -> list[int]:
        """Ids of the workloads that tasks (of one target, or of any) are registered with."""
        sql = "SELECT DISTINCT workload_id FROM tasks WHERE workload_id IS NOT NULL"
        params: tuple = ()
        if target is not None:
            sql += " AND target = ?"
            params = (canonical_target(target),)
        return [row[0] for row in self._query(sql + " ORDER BY workload_id", params)]

    def workload_records(
        self, workload_id: int, device_key: str, target: Any | None = None
    ) -> list[Record]:
        """Records on a device of every task of a workload, in commit order; with a target,
        of its tasks for that target, and records of that target."""
        where, params = _workload_filters(workload_id, device_key, None, target)
        rows = self._query(f"SELECT {SELECT_RECORD} FROM records{where} ORDER BY id", params)
        return [record_from_row(row) for row in rows]

    def workload_best(
        self, workload_id: int, device_key: str, k: int = 1, target: Any | None = None
    ) -> list[Record]:
        """The k fastest ok records of `workload_records` (by median), fastest first."""
        if k <= 0:
            return []
        where, params = _workload_filters(workload_id, device_key, Status.OK, target)
        rows = self._query(
            f"SELECT {SELECT_RECORD} FROM records{where} ORDER BY median, id LIMIT ?", (*params, k)
        )
        return [record_from_row(row) for row in rows]

    def workload_record_count(self, device_key: str, target: Any | None = None) -> int:
        """Records on a device (of one target, or of any) whose task has its workload stored:
        those MetaSchedule can replay."""
        sql = (
            "SELECT count(*) FROM records r JOIN tasks t ON t.task_key = r.task_key "
            "WHERE t.workload_id IS NOT NULL AND r.device_key = ?"
        )
        params: tuple = (device_key,)
        if target is not None:
            sql += " AND r.target = ?"
            params += (canonical_target(target),)
        return int(self._query(sql, params)[0][0])

    def status_counts(
        self, task_key: str | None = None, device_key: str | None = None
    ) -> dict[Status, int]:
        """Number of records per status (every status present, zeros included)."""
        where, params = _filters(task_key, device_key, None, None)
        counts = dict.fromkeys(Status, 0)
        for status, n in self._query(
            f"SELECT status, count(*) FROM records{where} GROUP BY status", params
        ):
            counts[Status(status)] = n
        return counts

    def __len__(self) -> int:
        return int(self._query("SELECT count(*) FROM records")[0][0])

    # ---------------------------------------------------------------- merge

    def merge_from(self, other: str | os.PathLike[str] | TuningDatabase) -> int:
        """Add every task, workload and record of another database that this one lacks.

        Records are the same when (task, device, trace hash, target) are, so merging twice
        adds nothing the second time. Returns the number of records added.
        """
        source = other if isinstance(other, TuningDatabase) else None
        if source is None:
            path = Path(other)
            if not path.exists():
                raise DatabaseError(f"cannot merge {path}: no such tuning database")
            if path.resolve() == self.path.resolve():
                return 0
            source = TuningDatabase(path, read_only=True)
        elif source.path.resolve() == self.path.resolve():
            return 0
        try:
            return self._merge_rows(source)
        finally:
            if source is not other:
                source.close()

    def _merge_rows(self, source: TuningDatabase) -> int:
        remap: dict[int, int] = {}
        for wid, _shash, _mod_json in source._query(
            "SELECT id, shash, mod_json FROM workloads ORDER BY id"
        ):
            remap[wid] = self.commit_workload(source.workload_module(wid))
        tasks = source._query(
            "SELECT task_key, target, workload_id, name, created_at FROM tasks ORDER BY task_key"
        )
        added = 0
        with self._write() as conn:
            conn.executemany(
                INSERT_TASK,
                [(k, t, remap.get(w) if w is not None else None, n, c) for k, t, w, n, c in tasks],
            )
            before = conn.total_changes
            with source._lock:
                cursor = source._conn.execute(f"SELECT {SELECT_RECORD} FROM records ORDER BY id")
                while batch := cursor.fetchmany(1000):
                    conn.executemany(INSERT_RECORD_OR_KEEP, batch)
            added = conn.total_changes - before
        log.info("merged %d new records from %s into %s", added, source.path, self.path)
        return added


def _filters(
    task_key: str | None,
    device_key: str | None,
    status: Status | str | None,
    target: Any | None,
) -> tuple[str, tuple]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("task_key", task_key),
        ("device_key", device_key),
        ("status", str(Status(status)) if status is not None else None),
        ("target", canonical_target(target) if target is not None else None),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    return where, tuple(params)


def _workload_filters(
    workload_id: int, device_key: str, status: Status | str | None, target: Any | None
) -> tuple[str, tuple]:
    """`_filters` for the records of the tasks of a workload (of the target, if given)."""
    where, params = _filters(None, device_key, status, target)
    tasks = "SELECT task_key FROM tasks WHERE workload_id = ?"
    task_params: tuple = (workload_id,)
    if target is not None:
        tasks += " AND target = ?"
        task_params += (canonical_target(target),)
    return f"{where} AND task_key IN ({tasks})", (*params, *task_params)
