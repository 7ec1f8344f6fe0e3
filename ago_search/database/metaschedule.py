"""The tuning database as MetaSchedule sees it: a `Database` for one device (and target).

`SqliteDatabase(path_or_db, device_key, target=None)` is a MetaSchedule `PyDatabase`, so it
can be passed wherever MetaSchedule takes a database (`ms.tune_tir`, `ms.tune_tasks`,
`ms.relax_integration.compile_relax`, `with target, db: MetaScheduleApplyDatabase()`), and
MetaSchedule's search and ours read and write the same records.

MetaSchedule's interface knows no devices, so a `SqliteDatabase` is a view of one device: what
MetaSchedule commits is stored under `device_key`, and what it reads (best records, all
records, size) is that device's, limited to `target` when one is given. Its workloads are the
tasks' modules; a record it commits lands on the task of (workload, target), registered with
the key `keys.task_key(structural hash, target)` when new, so `TuningDatabase.records(
task.key, device_key)` finds MetaSchedule's records for a `schedule.Task`.

Statuses. MetaSchedule stores a failed candidate (build or run error, timeout) with run time
1e10 s and no reason. Records it commits that way become `run_error` records; records it reads
that are not ok come back with run time 1e10, so MetaSchedule never ranks a failure or a wrong
result first. For the real reason of each failure, put `db.measure_callback(builder, runner)`
before MetaSchedule's default callbacks: it commits every candidate with its status and error
message first, and AddToDatabase's commit of the same trace then adds nothing. The status of a
failure is the builder's or runner's word (`status_of(result)`, which our builders and
runners in `ago_search.measure` answer); the error message is only kept for a person to read.
"""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Protocol

import tvm
import tvm_ffi
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.arg_info import ArgInfo
from tvm.s_tir.meta_schedule.database import PyDatabase, TuningRecord, Workload
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

from ago_search.database.keys import task_key as make_task_key
from ago_search.database.records import (
    MS_FAILURE_SECONDS,
    Record,
    Status,
    canonical_json,
    canonical_target,
    trace_to_json,
)
from ago_search.database.store import TuningDatabase

__all__ = ["CommitMeasurements", "SqliteDatabase", "StatusSource"]

log = logging.getLogger(__name__)

_NO_RUN_TIME = "MetaSchedule recorded no run time (the build or the run failed)"

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


class StatusSource(Protocol):
    """A builder or runner that knows why each result it returned failed (ours do:
    `ago_search.measure.status`)."""

    def status_of(self, result: Any) -> Status | None:
        """The status of a failed result it returned; None if it does not know it."""
        ...


def _status_of(source: StatusSource | None, result: Any, default: Status) -> Status:
    """The status `source` gives a failed result; `default` from a builder or runner that
    gives none (MetaSchedule's own)."""
    if source is None or not hasattr(source, "status_of"):
        return default
    return source.status_of(result) or default


def _failed(run_secs: list[float] | None) -> bool:
    return not run_secs or all(
        not math.isfinite(s) or s >= MS_FAILURE_SECONDS * 0.99 for s in run_secs
    )


def _task_key_for(store: TuningDatabase, mod: tvm.IRModule, target: str) -> str:
    """The task of (module, target): the registered one, or a new one keyed as
    `schedule.extract_tasks` keys tasks."""
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
        # (task key, trace hash, target) of a record -> the record replayed
        self._tuning_records: dict[tuple[str, str, str], TuningRecord] = {}

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
        records = self.store.workload_best(wid, self.device_key, top_k, self.target)
        return [self._tuning_record(wid, r) for r in records]

    def get_all_tuning_records(self) -> list[TuningRecord]:
        return [
            self._tuning_record(wid, record)
            for wid in self.store.workload_ids(self.target)
            for record in self.store.workload_records(wid, self.device_key, self.target)
        ]

    def query_tuning_record(
        self, mod: tvm.IRModule, target: Any, workload_name: str | None = None
    ) -> TuningRecord | None:
        wid = self.store.find_workload(mod)
        if wid is None:
            return None
        wanted = canonical_target(target) if target is not None else self.target
        found = self.store.workload_best(wid, self.device_key, 1, wanted)
        if not found and wanted is not None and (bare := _without_host(wanted)) is not None:
            # a build target carrying its host (tvm.compile adds one) tunes like the bare one
            found = self.store.workload_best(wid, self.device_key, 1, bare)
        return self._tuning_record(wid, found[0]) if found else None

    def __len__(self) -> int:
        return self.store.workload_record_count(self.device_key, self.target)

    # ------------------------------------------------------------ ours

    def measure_callback(
        self, builder: StatusSource | None = None, runner: StatusSource | None = None
    ) -> CommitMeasurements:
        """A measure callback committing every candidate with its status and error message;
        put it before MetaSchedule's default callbacks:
        `measure_callbacks=[db.measure_callback(builder, runner),
        *ms.measure_callback.MeasureCallback.create("default")]`. builder, runner: the ones
        the search uses, asked why a candidate failed (see `CommitMeasurements`)."""
        return CommitMeasurements(self.store, self.device_key, builder=builder, runner=runner)

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

    def _tuning_record(self, wid: int, record: Record) -> TuningRecord:
        identity = (record.task_key, record.trace_hash, record.target)
        cached = self._tuning_records.get(identity)
        if cached is not None:
            return cached
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
        self._tuning_records[identity] = tuning_record
        return tuning_record


@derived_object
class CommitMeasurements(PyMeasureCallback):
    """Commits every measured candidate of MetaSchedule's search as a `Record` with its status
    (ok, build_error, run_error, timeout, wrong_result) and error message, on `device_key`.

    builder, runner: those of the search, asked the status of each failed result
    (`StatusSource.status_of`); without one (or one that does not say, as MetaSchedule's own
    do not), a failed build is a build_error and a failed run a run_error.
    """

    def __init__(
        self,
        store: TuningDatabase,
        device_key: str,
        *,
        builder: StatusSource | None = None,
        runner: StatusSource | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self.device_key = device_key
        self.builder = builder
        self.runner = runner

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
                status = _status_of(self.builder, built, Status.BUILD_ERROR)
                outcome = {"status": status, "error": _short(built.error_msg)}
            elif ran.error_msg:
                status = _status_of(self.runner, ran, Status.RUN_ERROR)
                outcome = {"status": status, "error": _short(ran.error_msg)}
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
