"""MetaSchedule alone, bounded by wall-clock time: the baseline of `bench_suite.py`.

MetaSchedule has no time limit of its own. Its tuning runs here in a worker process of its own
(this file run as a script) with a trial count it never reaches, and the parent stops the
worker's whole process group (its build and run pools too) when the budget is spent. Its JSON
database (`database_workload.json`, `database_tuning_record.json` in the work folder) is
appended one record at a time, so every measurement made before the stop is kept.

What the worker runs is `ms.relax_integration.tune_relax` as a user gets it (TVM's default
fusion, GradientBased task scheduler, rounds of 64, EvolutionarySearch with its default
population, XGB cost model, MetaSchedule's LocalRunner and JSON database), spelled out as
tune_relax's own three steps so that two things can be changed:

- the builder: MetaSchedule's `LocalBuilder` with an `f_build` that compiles without
  `import tvm.s_tir.tensor_intrin` (TVM_NOTES.md: that import, about 29 s in every fresh build
  process, runs into the builder's 30 s time-out, and then no candidate ever builds);
- tasks whose design space MetaSchedule cannot generate are left out (a ScheduleError of one
  schedule rule on one fused group would otherwise end the whole run; ago_search's tuning
  does the same, `schedule.tune._schedulable`). The timeline names them.

A measure callback (`TimelineCallback`) appends one JSON line per measured round to
`timeline.jsonl`: when, which task, its best latency so far, and the model latency those bests
add up to, so a curve of best-estimated latency over time can be drawn. The budget counts from
the worker's "tuning" event, after import, fusion and task extraction, as tune-tasks' deadline
counts from after `load_planned`.

Apply the records with `compile_tuned`: `ms.relax_integration.compile_relax` on the unfused
(imported) module, plus a count of the kernels a record was applied to (TVM_NOTES.md: records
silently not found are the usual way a tuned build comes out slow).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tvm  # noqa: E402
from tvm.ir.utils import derived_object  # noqa: E402
from tvm.s_tir import meta_schedule as ms  # noqa: E402
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback  # noqa: E402
from tvm.s_tir.meta_schedule.search_strategy import PySearchStrategy  # noqa: E402

from ago_search.build import TunedBuild, apply_schedules  # noqa: E402
from ago_search.database.records import MS_FAILURE_SECONDS  # noqa: E402
from ago_search.measure.builders import compile_candidate  # noqa: E402
from ago_search.measure.intrinsics import register_cpu_tensor_intrinsics  # noqa: E402
from ago_search.measure.lease import host_cpu_lease  # noqa: E402
from ago_search.measure.threads import tvm_thread_env  # noqa: E402

log = logging.getLogger("metaschedule_alone")

TIMELINE = "timeline.jsonl"
WORKER_LOG = "worker.log"
WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
# A trial count MetaSchedule never reaches: the budget stops it.
UNREACHABLE_TRIALS = 10_000_000
STOP_GRACE_S = 10.0
# After its budget MetaSchedule measures the rounds it has in flight; past this it is stopped.
DRAIN_LIMIT_S = 600.0


# ---------------------------------------------------------------------------------------------
# both sides


def fuse_as_compile_relax(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """The imported module fused as `compile_relax` fuses it before applying records (library
    dispatch, LegalizeOps, AnnotateTIROpPattern, FoldConstant, FuseOps, FuseTIR), so the tasks
    tuned here are the workloads compile_relax looks up."""
    from tvm import relax
    from tvm.relax import pipeline

    try:
        dispatch = pipeline.library_dispatch_passes(target)
    except (ValueError, AttributeError):
        dispatch = []
    passes = [
        *dispatch,
        relax.transform.LegalizeOps(),
        relax.transform.AnnotateTIROpPattern(),
        relax.transform.FoldConstant(),
        relax.transform.FuseOps(),
        relax.transform.FuseTIR(),
    ]
    with target, tvm.transform.PassContext(opt_level=3):
        return tvm.transform.Sequential(passes)(mod)


def _seconds(run_secs: Any) -> list[float]:
    return [float(getattr(s, "value", s)) for s in run_secs or ()]


def _append_json_line(path: Path, data: dict) -> None:
    with path.open("a") as stream:
        stream.write(json.dumps(data) + "\n")
        stream.flush()


def read_json_lines(path: Path) -> list[Any]:
    """The lines of a JSON-lines file that parse (a stopped writer may leave half a line)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


@derived_object
class TimelineCallback(PyMeasureCallback):
    """Appends one JSON line per measured round to `path`: time (Unix), task, candidates and
    how many ran ok, the task's best latency so far (median of a candidate's repeats), and the
    model latency estimated from the bests so far (sum of weight x best over the tasks that
    have one; `tasks_with_best` of `tasks`)."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.best: dict[str, float] = {}
        self.weight: dict[str, float] = {}

    def apply(
        self,
        task_scheduler: Any,
        task_id: int,
        measure_candidates: list[Any],
        builder_results: list[Any],
        runner_results: list[Any],
    ) -> None:
        task = task_scheduler.tasks_[task_id]
        name = str(task.ctx.task_name)
        self.weight[name] = float(task.task_weight)
        ok = []
        for built, ran in zip(builder_results, runner_results, strict=True):
            secs = _seconds(ran.run_secs)
            if built.error_msg or ran.error_msg or not secs:
                continue
            if max(secs) < MS_FAILURE_SECONDS * 0.99:
                ok.append(statistics.median(secs))
        if ok:
            self.best[name] = min(self.best.get(name, float("inf")), min(ok))
        _append_json_line(
            self.path,
            {
                "event": "round",
                "t": time.time(),
                "task": name,
                "candidates": len(measure_candidates),
                "ok": len(ok),
                "round_best_s": min(ok) if ok else None,
                "task_best_s": self.best.get(name),
                "estimate_s": sum(self.weight[n] * b for n, b in self.best.items()),
                "tasks_with_best": len(self.best),
                "tasks": len(task_scheduler.tasks_),
            },
        )


# ---------------------------------------------------------------------------------------------
# the worker


def build_without_intrinsics(mod: tvm.IRModule, target: tvm.target.Target, _params: Any) -> Any:
    """MetaSchedule's default build minus its `import tvm.s_tir.tensor_intrin` (the f_build of
    its LocalBuilder; pickled into the builder's processes)."""
    return compile_candidate(mod, target)


@derived_object
class StopAt(PySearchStrategy):
    """MetaSchedule's own search of a task, asked for no new round after `deadline` (Unix
    time): its scheduler then joins the rounds still being measured and ends by itself, so what
    was measured is in its database (a kill would lose the rounds its asynchronous runner still
    holds: with 30+ tasks it joins a task's results only when it comes back to that task)."""

    def __init__(self, inner: Any, deadline: float) -> None:
        super().__init__()
        self.inner = inner
        self.deadline = deadline

    def _initialize_with_tune_context(self, context: Any) -> None:
        self.inner._initialize_with_tune_context(context)

    def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database, cost_model):
        self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)

    def post_tuning(self) -> None:
        self.inner.post_tuning()

    def generate_measure_candidates(self) -> Any:
        if time.time() >= self.deadline:
            return None
        return self.inner.generate_measure_candidates()

    def notify_runner_results(self, measure_candidates, results) -> None:
        self.inner.notify_runner_results(measure_candidates, results)

    def clone(self) -> StopAt:
        return StopAt(self.inner.clone(), self.deadline)


def tune(
    model: str, shapes: dict[str, list[int]], work_dir: Path, seed: int, budget_s: float
) -> None:
    """tune_relax's steps on TVM's default fusion of `model`, until stopped from outside."""
    from ago_search.devices import detect_host
    from ago_search.pipeline import import_model

    timeline = work_dir / TIMELINE
    target = detect_host().tvm_target()
    # In this process only (TuneContext imports the package): 0.4 s instead of 29 s, same rules
    register_cpu_tensor_intrinsics(target)
    imported = import_model(model, shapes)
    fused = fuse_as_compile_relax(imported.mod, target)
    extracted = ms.relax_integration.extract_tasks(fused, target)
    contexts, weights = ms.relax_integration.extracted_tasks_to_tune_contexts(
        extracted, str(work_dir), seed=seed
    )
    kept, kept_weights, kept_extracted, dropped = [], [], [], []
    for context, weight, task in zip(contexts, weights, extracted, strict=True):
        probe = ms.TuneContext(
            mod=context.mod,
            target=context.target,
            space_generator="post-order-apply",
            task_name=str(context.task_name),
            rand_state=int(context.rand_state),
            num_threads=int(context.num_threads),
            logger=log,
        )
        try:
            probe.generate_design_space()
        except Exception as exc:  # a ScheduleError of one rule on one group
            dropped.append({"task": str(context.task_name), "error": str(exc).splitlines()[0]})
            continue
        kept.append(context)
        kept_weights.append(weight)
        kept_extracted.append(task)
    _append_json_line(
        timeline,
        {
            "event": "tuning",
            "t": time.time(),
            "tasks": [
                {"task": str(c.task_name), "weight": float(w)}
                for c, w in zip(kept, kept_weights, strict=True)
            ],
            "dropped": dropped,
        },
    )
    cores = kept[0].num_threads
    deadline = time.time() + budget_s
    # the same contexts, their (default) evolutionary search asked for no round past the budget
    kept, _ = ms.relax_integration.extracted_tasks_to_tune_contexts(
        kept_extracted,
        str(work_dir),
        strategy=StopAt(ms.search_strategy.EvolutionarySearch(), deadline),
        seed=seed,
    )
    ms.tune.tune_tasks(
        tasks=kept,
        task_weights=kept_weights,
        work_dir=str(work_dir),
        max_trials_global=UNREACHABLE_TRIALS,
        builder=ms.builder.LocalBuilder(max_workers=cores, f_build=build_without_intrinsics),
        measure_callbacks=[
            *ms.measure_callback.MeasureCallback.create("default"),
            TimelineCallback(timeline),
        ],
    )
    _append_json_line(timeline, {"event": "done", "t": time.time()})


def worker_main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="MetaSchedule's tuning of one model (worker)")
    parser.add_argument("--model", required=True)
    parser.add_argument("--shapes", required=True, help="JSON: input name -> shape")
    parser.add_argument("--work-dir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-s", type=float, required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    tune(args.model, json.loads(args.shapes), args.work_dir, args.seed, args.budget_s)
    return 0


# ---------------------------------------------------------------------------------------------
# the parent


def run_bounded(
    model: str | Path,
    shapes: dict[str, list[int]],
    work_dir: Path,
    budget_s: float,
    threads: int,
    seed: int = 0,
    startup_timeout_s: float = 1800.0,
) -> dict[str, Any]:
    """Tune `model` with MetaSchedule in a fresh `work_dir` (what was there is removed) and stop
    it `budget_s` after its tuning started. Its kernels run with `threads` threads (TVM's pool
    in the runner's processes, unpinned, as the benchmark runs every build). Holds the host's
    measurement lease meanwhile: MetaSchedule's runner takes none, so no other ago-search
    process measures beside it.

    Returns what happened (tuning_s, startup_s, how it stopped, records kept). Raises
    RuntimeError when the worker never got to tuning (an import or fusion failure: a fault of
    this set-up, not a result of MetaSchedule)."""
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    timeline, log_path = work_dir / TIMELINE, work_dir / WORKER_LOG
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--model",
        str(model),
        "--shapes",
        json.dumps(shapes),
        "--work-dir",
        str(work_dir),
        "--seed",
        str(seed),
        "--budget-s",
        str(budget_s),
    ]
    # MetaSchedule's build and run pools are `python -m` processes: they find the repo here.
    env = {
        **os.environ,
        **tvm_thread_env(threads),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    launched = time.monotonic()
    with log_path.open("w") as log_file, host_cpu_lease().exclusive():
        worker = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the pools are stopped with it
            env=env,
            cwd=REPO,
        )
        try:
            started = _wait_for_tuning(worker, timeline, launched + startup_timeout_s)
            if started is not None:
                # it starts no round after the budget; the rounds it still measures may take
                # a while (counted in tuning_s), a hung worker is stopped after DRAIN_LIMIT_S
                deadline = started + budget_s + DRAIN_LIMIT_S
                while worker.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.5)
            stopped_at = time.monotonic()
            exited_by_itself = worker.poll() is not None
        finally:
            _stop_group(worker)
    if started is None:
        tail = " | ".join(log_path.read_text().strip().splitlines()[-5:])
        raise RuntimeError(
            f"MetaSchedule's worker did not start tuning {model} (exit code "
            f"{worker.returncode}); see {log_path}: {tail}"
        )
    events = read_json_lines(timeline)
    head = next(e for e in events if e.get("event") == "tuning")
    crashed = exited_by_itself and worker.returncode != 0
    total, ok = count_records(work_dir)
    return {
        "tuning_s": stopped_at - started,
        "startup_s": started - launched,
        "stopped": "exited" if exited_by_itself else "budget",
        "returncode": worker.returncode if exited_by_itself else None,
        "error": f"the worker crashed (exit code {worker.returncode}); see {log_path}"
        if crashed
        else None,
        "tasks": len(head["tasks"]),
        "dropped_tasks": head["dropped"],
        "trials": total,
        "ok_records": ok,
        "rounds": sum(1 for e in events if e.get("event") == "round"),
        "timeline": str(timeline),
    }


def _wait_for_tuning(worker: subprocess.Popen, timeline: Path, deadline: float) -> float | None:
    """The monotonic time at which the worker's "tuning" event was seen; None if the worker
    ended or the start-up time ran out first."""
    while time.monotonic() < deadline:
        if any(e.get("event") == "tuning" for e in read_json_lines(timeline)):
            return time.monotonic()
        if worker.poll() is not None:
            return None
        time.sleep(0.5)
    return None


def _stop_group(worker: subprocess.Popen) -> None:
    """SIGTERM to the worker's process group, SIGKILL to whatever is left after a grace time."""
    group = worker.pid  # start_new_session: the group id is the worker's pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            break
        ends = time.monotonic() + STOP_GRACE_S
        while time.monotonic() < ends:
            worker.poll()
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
    worker.wait()


def count_records(work_dir: Path) -> tuple[int, int]:
    """(records, records that ran: run time under MetaSchedule's failure mark)."""
    total = ok = 0
    for line in read_json_lines(work_dir / RECORDS):
        total += 1
        try:
            secs = [float(s) for s in line[1][1]]
        except (IndexError, TypeError, ValueError):
            continue
        if secs and max(secs) < MS_FAILURE_SECONDS * 0.99:
            ok += 1
    return total, ok


def _drop_partial_lines(path: Path) -> None:
    """Rewrite a JSON-lines file without a half-written last line (the worker was killed)."""
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            json.loads(line)
        except json.JSONDecodeError:
            continue
        kept.append(line)
    if len(kept) != len(lines):
        path.write_text("".join(line + "\n" for line in kept))


def load_database(work_dir: Path) -> Any:
    """MetaSchedule's JSON database of a stopped run."""
    for name in (WORKLOADS, RECORDS):
        _drop_partial_lines(work_dir / name)
    return ms.database.JSONDatabase(work_dir=str(work_dir), allow_missing=True)


def compile_tuned(
    work_dir: Path, imported_mod: tvm.IRModule, target: tvm.target.Target
) -> TunedBuild:
    """`compile_relax` with the run's database on the unfused module, and which kernels got a
    record (counted on the same fusion, with the same `MetaScheduleApplyDatabase`)."""
    register_cpu_tensor_intrinsics(target)  # traces may name x86 intrinsics
    database = load_database(work_dir)
    executable = ms.relax_integration.compile_relax(database, imported_mod, target, params=None)
    fused = fuse_as_compile_relax(imported_mod, target)
    _, scheduled, untuned = apply_schedules(fused, target, database)
    return TunedBuild(executable, scheduled, untuned)


if __name__ == "__main__":
    sys.exit(worker_main())
