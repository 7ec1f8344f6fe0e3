"""The tuning database as MetaSchedule sees it: a `Database` for one device (and target).

`SqliteDatabase(path_or_db, device_key, target=None)` is a MetaSchedule `PyDatabase`, so it
can be passed wherever MetaSchedule takes a database (`ms.tune_tir`, `ms.tune_tasks`,
`ms.relax_integration.compile_relax`, `with target, db: MetaScheduleApplyDatabase()`), and
MetaSchedule's search and ours read and write the same records.

MetaSchedule's interface knows no devices, so a `SqliteDatabase` is a view of one device: what
MetaSchedule commits is stored under `device_key`, and what it reads (best records, all
records, size) is that device's, limited to `target` when one is given. Its workloads are the
tasks' modules; a record it commits lands on the task of (workload, target), registered with
the key `schedule.task_key(structural hash, target)` when new, so `TuningDatabase.records(
task.key, device_key)` finds MetaSchedule's records for a `schedule.Task`.

Statuses. MetaSchedule stores a failed candidate (build or run error, timeout) with run time
1e10 s and no reason. Records it commits that way become `run_error` records; records it reads
that are not ok come back with run time 1e10, so MetaSchedule never ranks a failure or a wrong
result first. For the real reason of each failure, put `db.measure_callback()` before
MetaSchedule's default callbacks: it commits every candidate with its status and error
message first, and AddToDatabase's commit of the same trace then adds nothing.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import tvm
import tvm_ffi
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.arg_info import ArgInfo
from tvm.s_tir.meta_schedule.database import PyDatabase, TuningRecord, Workload
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

from ago_search.database.records import (
    MS_FAILURE_SECONDS,
    Record,
    Status,
    canonical_json,
    canonical_target,
    trace_to_json,
)
from ago_search.database.store import _SELECT, TuningDatabase, _record
from ago_search.schedule.tasks import task_key as make_task_key

__all__ = ["CommitMeasurements", "SqliteDatabase"]

log = logging.getLogger(__name__)

_NO_RUN_TIME = "MetaSchedule recorded no run time (the build or the run failed)"

# How `ago_search.measure.runners` starts the error of a candidate its output hook rejected.
_WRONG_RESULT = "wrong result:"

# Error messages (build logs with the whole module printed) are cut to this many characters.
_MAX_ERROR_CHARS = 8000


def _short(message: str) -> str:
    if len(message) <= _MAX_ERROR_CHARS:
        return message
    half = _MAX_ERROR_CHARS // 2
    return message[:half] + "\n...\n" + message[-half:]


def _seconds(values: Any) -> list[float] | None:
    """Run times as floats (MetaSchedule hands FloatImm objects)."""
    if values is None:
        return None
    return [float(getattr(v, "value", v)) for v in values]


def _without_host(target: str) -> str | None:
    """The target without its "host" part, None if it has none."""
    spec = json.loads(target)
    if "host" not in spec:
        return None
    del spec["host"]
    return canonical_json(spec)


def _run_status(error_msg: str) -> Status:
    """The status of a candidate the runner failed: an output hook's complaint (the runners
    report it as "wrong result: ...") is a wrong result, a time-out a timeout."""
    if error_msg.startswith(_WRONG_RESULT):
        return Status.WRONG_RESULT
    return Status.TIMEOUT if "timeout" in error_msg.lower() else Status.RUN_ERROR


def _failed(run_secs: list[float] | None) -> bool:
    return not run_secs or all(
        not math.isfinite(s) or s >= MS_FAILURE_SECONDS * 0.99 for s in run_secs
    )


def _task_key_for(store: TuningDatabase, mod: tvm.IRModule, target: str) -> str:
    """The task of (module, target): the registered one, or a new one keyed as `schedule`
    keys tasks."""
    wid = store.commit_workload(mod)
    keys = store.task_keys_of_workload(wid, target)
    if keys:
        return keys[0]
    key = make_task_key(int(tvm_ffi.structural_hash(mod)), target)
    store.commit_task(key, target, mod)
    return key


@derived_object
class SqliteDatabase(PyDatabase):
    """A MetaSchedule database over a `TuningDatabase`, for one device (see the module doc).

    path_or_db: the database file, or an open `TuningDatabase` to share.
    device_key: the device whose records MetaSchedule reads and writes.
    target: limit reads to this target (any form `canonical_target` takes); None reads every
        target of the device. Queries that name a target (`query_schedule`, ...) use theirs.
    """

    def __init__(
        self,
        path_or_db: str | os.PathLike[str] | TuningDatabase,
        device_key: str,
        target: Any | None = None,
    ) -> None:
        super().__init__()
        if isinstance(path_or_db, TuningDatabase):
            self.store = path_or_db
        else:
            self.store = TuningDatabase(path_or_db)
        if not device_key:
            raise ValueError("SqliteDatabase needs a device_key")
        self.device_key = device_key
        self.target = canonical_target(target) if target is not None else None
        self._workload_objects: dict[int, Workload] = {}
        self._args_info: dict[int, list[Any]] = {}
        self._tuning_records: dict[int, TuningRecord] = {}  # record row id -> replayed record

    # ------------------------------------------------------------ MetaSchedule's interface

    def has_workload(self, mod: tvm.IRModule) -> bool:
        return self.store.find_workload(mod) is not None

    def commit_workload(self, mod: tvm.IRModule) -> Workload:
        return self._workload(self.store.commit_workload(mod))

    def commit_tuning_record(self, record: TuningRecord) -> None:
        # not record.as_json(): in TVM 0.27 it raises on traces with an IndexMap (any
        # TransformLayout, e.g. from the RewriteLayout postprocessor)
        trace = trace_to_json(record.trace)
        target = canonical_target(record.target) if record.target is not None else self.target
        if target is None:
            raise ValueError("a tuning record without a target, and no target for this database")
        key = _task_key_for(self.store, record.workload.mod, target)
        secs = _seconds(record.run_secs)
        outcome: dict[str, Any] = {"latencies": tuple(secs or ())}
        if _failed(secs):
            outcome = {"status": Status.RUN_ERROR, "error": _NO_RUN_TIME}
        self.store.commit_record(
            Record(
                task_key=key,
                device_key=self.device_key,
                target=target,
                trace_json=trace,
                extra={"source": "metaschedule"},
                **outcome,
            )
        )

    def get_top_k(self, workload: Workload, top_k: int) -> list[TuningRecord]:
        if top_k <= 0:
            return []
        wid = self.store.find_workload(workload.mod)
        if wid is None:
            return []
        return self._select(wid, self.target, ok_only=True, limit=top_k)

    def get_all_tuning_records(self) -> list[TuningRecord]:
        sql = "SELECT DISTINCT workload_id FROM tasks WHERE workload_id IS NOT NULL"
        params: tuple = ()
        if self.target is not None:
            sql += " AND target = ?"
            params = (self.target,)
        result: list[TuningRecord] = []
        for (wid,) in self.store._query(sql + " ORDER BY workload_id", params):
            result.extend(self._select(wid, self.target, ok_only=False, limit=None))
        return result

    def query_tuning_record(
        self, mod: tvm.IRModule, target: Any, workload_name: str | None = None
    ) -> TuningRecord | None:
        wid = self.store.find_workload(mod)
        if wid is None:
            return None
        wanted = canonical_target(target) if target is not None else self.target
        found = self._select(wid, wanted, ok_only=True, limit=1)
        if not found and wanted is not None and (bare := _without_host(wanted)) is not None:
            # a build target carrying its host (tvm.compile adds one) tunes like the bare one
            found = self._select(wid, bare, ok_only=True, limit=1)
        return found[0] if found else None

    def __len__(self) -> int:
        sql = (
            "SELECT count(*) FROM records r JOIN tasks t ON t.task_key = r.task_key "
            "WHERE t.workload_id IS NOT NULL AND r.device_key = ?"
        )
        params: tuple = (self.device_key,)
        if self.target is not None:
            sql += " AND r.target = ?"
            params += (self.target,)
        return int(self.store._query(sql, params)[0][0])

    # ------------------------------------------------------------ ours

    def measure_callback(self) -> CommitMeasurements:
        """A measure callback committing every candidate with its status and error message;
        put it before MetaSchedule's default callbacks:
        `measure_callbacks=[db.measure_callback(), *ms.measure_callback.MeasureCallback.create(
        "default")]`."""
        return CommitMeasurements(self.store, self.device_key)

    def _workload(self, wid: int) -> Workload:
        workload = self._workload_objects.get(wid)
        if workload is None:
            # MetaSchedule replays traces on the stored module, as its own databases do
            workload = self._workload_objects[wid] = Workload(self.store.workload_module(wid))
        return workload

    def _args_info_json(self, wid: int) -> list[Any]:
        info = self._args_info.get(wid)
        if info is None:
            mod = self.store.workload_module(wid)
            info = [a.as_json() for a in ArgInfo.from_entry_func(mod, remove_preproc=True)]
            self._args_info[wid] = info
        return info

    def _select(
        self, wid: int, target: str | None, *, ok_only: bool, limit: int | None
    ) -> list[TuningRecord]:
        keys = self.store.task_keys_of_workload(wid, target)
        if not keys:
            return []
        marks = ", ".join("?" * len(keys))
        sql = f"SELECT id, {_SELECT} FROM records WHERE task_key IN ({marks}) AND device_key = ?"
        params: tuple = (*keys, self.device_key)
        if target is not None:
            sql += " AND target = ?"
            params += (target,)
        if ok_only:
            sql += " AND status = ? ORDER BY median, id"
            params += (str(Status.OK),)
        else:
            sql += " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            params += (limit,)
        return [self._tuning_record(wid, row[0], row[1:]) for row in self.store._query(sql, params)]

    def _tuning_record(self, wid: int, row_id: int, row: tuple) -> TuningRecord:
        cached = self._tuning_records.get(row_id)
        if cached is not None:
            return cached
        record = _record(row)
        run_secs = list(record.latencies) if record.ok else [MS_FAILURE_SECONDS]
        as_json = [
            json.loads(record.trace_json),
            run_secs,
            json.loads(record.target),
            self._args_info_json(wid),
        ]
        # replays the trace on the stored module: a trace that no longer applies (another TVM
        # version) fails here, loudly, rather than as a silently untuned kernel later
        tuning_record = TuningRecord.from_json(as_json, self._workload(wid))
        self._tuning_records[row_id] = tuning_record
        return tuning_record


@derived_object
class CommitMeasurements(PyMeasureCallback):
    """Commits every measured candidate of MetaSchedule's search as a `Record` with its status
    (ok, build_error, run_error, timeout, wrong_result) and error message, on `device_key`."""

    def __init__(self, store: TuningDatabase, device_key: str) -> None:
        super().__init__()
        self.store = store
        self.device_key = device_key

    def apply(
        self,
        task_scheduler: Any,
        task_id: int,
        measure_candidates: list[Any],
        builder_results: list[Any],
        runner_results: list[Any],
    ) -> None:
        ctx = task_scheduler.tasks_[task_id].ctx
        target = canonical_target(ctx.target)
        key = _task_key_for(self.store, ctx.mod, target)
        for candidate, built, ran in zip(
            measure_candidates, builder_results, runner_results, strict=True
        ):
            trace = trace_to_json(candidate.sch.trace)
            outcome: dict[str, Any]
            if built.error_msg:
                status = Status.TIMEOUT if "timeout" in built.error_msg.lower() else None
                outcome = {"status": status or Status.BUILD_ERROR, "error": _short(built.error_msg)}
            elif ran.error_msg:
                outcome = {"status": _run_status(ran.error_msg), "error": _short(ran.error_msg)}
            else:
                secs = _seconds(ran.run_secs) or []
                outcome = {"latencies": tuple(secs)}
                if _failed(secs):
                    outcome = {"status": Status.RUN_ERROR, "error": _NO_RUN_TIME}
            self.store.commit_record(
                Record(
                    task_key=key,
                    device_key=self.device_key,
                    target=target,
                    trace_json=trace,
                    extra={"source": "metaschedule"},
                    **outcome,
                )
            )
