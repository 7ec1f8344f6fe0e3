"""Re-measure stored schedules: new labels for records that a busy machine measured.

Traces collected on a shared machine carry the other tenants' load: re-timing recorded
schedules of this CPU's traces on a quiet machine gave medians 1.1-30x shorter than the
recorded ones for a third of them, and reordered the best candidates of most tasks
(README, "Cost model"). A cost model can rank no better than its labels. `remeasure` times
the ok records of a tuning database again, task by task:

- every candidate of a task is rebuilt from its trace and timed in `rounds` interleaved
  rounds (the second in reverse order), so that a slow spell of the machine falls on
  different candidates in each round, and each timing disturbed by other processes is
  repeated (`SubprocessRunner`'s contention guard);
- the record is replaced by the fastest round's timing (load only ever makes a kernel
  slower), and says so in `extra["remeasured"]`: the medians of the rounds, the share of the
  time the process had its core, and the median it replaced;
- records already re-measured are skipped, so a killed run resumes where it stopped; each
  task's records are committed when its rounds are done.

Tasks are taken in a seeded random order, so that a run cut short covers every model a
little rather than a few models fully; `per_task` caps the records of a task (a seeded
sample of its ok records, the same one in a resumed run).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ago_search.errors import AgoSearchError

__all__ = ["RemeasureReport", "remeasure"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemeasureReport:
    database: str
    device_key: str
    tasks: int  # tasks with ok records
    tasks_done: int  # tasks whose chosen records are all re-measured now
    remeasured: int  # records re-measured by this run
    failed: int  # records whose rebuild or timing failed now (left as they were)
    wrong_result: int  # records whose outputs are wrong now (marked wrong_result)
    median_ratio: float | None  # median of new / recorded median over this run's records
    disturbed: int  # timings still disturbed after every retry
    wall_s: float
    stopped: str

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _chosen(records: list, per_task: int | None, seed: int, task_key: str) -> list:
    if per_task is None or len(records) <= per_task:
        return records
    rng = random.Random(f"{seed}:{task_key}")
    return rng.sample(records, per_task)


def remeasure(
    db: str | Path,
    device: str = "host",
    per_task: int | None = None,
    rounds: int = 2,
    hours: float | None = None,
    seed: int = 0,
    sources: list[str | Path] | None = None,
    export: str | Path | None = None,
    export_every_s: float = 300.0,
) -> RemeasureReport:
    """Re-measure the ok records of `db` on `device` (see the module docstring).

    sources: trace files or folders imported into `db` first (records it has are skipped).
    export: a trace file the re-measured records are written to (every `export_every_s` and
    at the end). hours: start no new task after this.
    """
    import numpy as np
    import tvm
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.builder import BuilderInput
    from tvm.s_tir.meta_schedule.runner import RunnerInput

    from ago_search.database import Status, TuningDatabase, import_jsonl
    from ago_search.devices import load_device
    from ago_search.measure import LocalBuilder, SubprocessRunner
    from ago_search.schedule.verify import ReferenceCheck
    from cost_model.features import replay_trace

    if rounds < 1:
        raise AgoSearchError(f"rounds must be >= 1, got {rounds}")
    if per_task is not None and per_task < 1:
        raise AgoSearchError(f"per_task must be >= 1, got {per_task}")
    started = time.perf_counter()
    deadline = started + hours * 3600 if hours else None
    profile = load_device(device)
    if not profile.is_local:
        raise AgoSearchError(
            f"device {profile.name!r} is reached over RPC: remeasure times on this machine only"
        )
    files: list[Path] = []
    for source in sources or []:
        found = sorted(Path(source).glob("*.jsonl*")) if Path(source).is_dir() else [Path(source)]
        if not found or not all(f.is_file() for f in found):
            raise AgoSearchError(f"{source}: no trace files (*.jsonl, *.jsonl.gz) there")
        files += found
    if export is not None and Path(export).is_file():
        # an earlier run's re-measured records first: importing keeps the first record of a
        # schedule, so the stale labels in the other files do not hide them (a fresh clone
        # resumes from the export instead of timing everything again)
        files = [Path(export)] + [f for f in files if f.resolve() != Path(export).resolve()]
    store = TuningDatabase(db)
    for file in files:
        added = import_jsonl(store, file)
        log.info("imported %d new records from %s", added, file)
    tasks = [t.task_key for t in store.tasks(profile.key)]
    random.Random(seed).shuffle(tasks)
    builder = LocalBuilder.for_device(profile)
    check = ReferenceCheck()  # the tuning's fixed inputs (valid indices), and its check
    runner = SubprocessRunner(profile, output_hook=check)
    ratios: list[float] = []
    remeasured = failed = wrong = done = 0
    stopped = "done"
    last_export = time.perf_counter()
    try:
        for number, task_key in enumerate(tasks, start=1):
            ok = store.records(task_key, profile.key, Status.OK)
            chosen = _chosen(ok, per_task, seed, task_key)
            todo = [r for r in chosen if "remeasured" not in r.extra]
            if not todo:
                done += 1 if chosen else 0
                continue
            if deadline is not None and time.perf_counter() > deadline:
                stopped = "time budget"
                break
            workload = store.workload(task_key)
            if workload is None:
                log.warning("task %s has no workload in %s: skipped", task_key, db)
                continue
            target = tvm.target.Target(json.loads(todo[0].target))
            check.add(task_key, workload)
            check.select(task_key)
            task_start = time.perf_counter()
            scheduled = [replay_trace(workload, r.trace_json).mod for r in todo]
            # a schedule that packs its weights takes them in its own layout
            args_of = [
                ms.arg_info.ArgInfo.from_entry_func(m, remove_preproc=True) for m in scheduled
            ]
            built = builder.build([BuilderInput(m, target) for m in scheduled])
            timings: list[list[Any]] = [[] for _ in todo]
            order = [i for i, b in enumerate(built) if b.error_msg is None]
            for round_number in range(rounds):
                for i in order if round_number % 2 == 0 else order[::-1]:
                    runner_input = RunnerInput(str(built[i].artifact_path), "llvm", args_of[i])
                    timings[i].append(runner.measure_input(runner_input))
            new_records = []
            for i, record in enumerate(todo):
                wrong_now = [m for m in timings[i] if m.status is Status.WRONG_RESULT]
                if wrong_now:
                    # TVM's code for this schedule computes wrong values (TVM_NOTES.md): it was
                    # not caught when first measured; it is never a label or a best now
                    wrong += 1
                    log.warning(
                        "%s/%s: wrong result now: %s",
                        task_key,
                        record.trace_hash[:8],
                        wrong_now[0].error,
                    )
                    new_records.append(
                        dataclasses.replace(
                            record,
                            status=Status.WRONG_RESULT,
                            latencies=(),
                            median=None,
                            error=wrong_now[0].error,
                            extra={
                                **record.extra,
                                "remeasured": {"previous_median": record.median},
                            },
                        )
                    )
                    continue
                good = [m for m in timings[i] if m.ok]
                if built[i].error_msg is not None or not good:
                    failed += 1
                    why = built[i].error_msg or (timings[i][0].error if timings[i] else "")
                    log.warning(
                        "%s/%s: re-measurement failed: %s",
                        task_key,
                        record.trace_hash[:8],
                        (why or "").splitlines()[0] if why else "",
                    )
                    continue
                best = min(good, key=lambda m: m.median)
                extra = {
                    **record.extra,
                    "remeasured": {
                        "rounds": [m.median for m in good],
                        "cpu_share": [m.cpu_share for m in good],
                        "attempts": [m.attempts for m in good],
                        "previous_median": record.median,
                        "previous_measured_at": record.measured_at,
                    },
                }
                new_records.append(
                    dataclasses.replace(
                        record,
                        latencies=tuple(best.run_secs),
                        median=None,
                        measured_at=best.started_at,
                        extra=extra,
                    )
                )
                ratios.append(best.median / record.median if record.median else float("nan"))
            for record in new_records:
                store.commit_record(record, replace=True)
            n_ok = sum(1 for r in new_records if r.status == Status.OK)
            remeasured += n_ok
            done += 1
            for b in built:
                if b.artifact_path:
                    shutil.rmtree(Path(b.artifact_path).parent, ignore_errors=True)
            log.info(
                "task %d/%d %s: %d records re-measured in %.0f s (median new/old %.2f); %d in all",
                number,
                len(tasks),
                task_key,
                n_ok,
                time.perf_counter() - task_start,
                float(np.median(ratios[-len(new_records) :])) if new_records else float("nan"),
                remeasured,
            )
            if export is not None and time.perf_counter() - last_export >= export_every_s:
                _export(store, export, profile.key)
                last_export = time.perf_counter()
    except KeyboardInterrupt:
        stopped = "interrupted"
    finally:
        builder.close()
        runner.close()
        if export is not None:
            _export(store, export, profile.key)
        store.close()
    finite = [r for r in ratios if np.isfinite(r)]
    return RemeasureReport(
        database=str(db),
        device_key=profile.key,
        tasks=len(tasks),
        tasks_done=done,
        remeasured=remeasured,
        failed=failed,
        wrong_result=wrong,
        median_ratio=float(np.median(finite)) if finite else None,
        disturbed=runner.disturbed,
        wall_s=time.perf_counter() - started,
        stopped=stopped,
    )


def _export(store: Any, path: str | Path, device_key: str) -> None:
    from ago_search.database import export_jsonl

    export_jsonl(store, path, device_key=device_key, where=lambda r: "remeasured" in r.extra)
