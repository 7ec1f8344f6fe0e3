"""Tuning: the task scheduler's order, resuming after a kill without re-measuring, and a
tuned build that applies the records and still computes what ONNX Runtime does."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import onnx
import onnxruntime as ort
import pytest
import tvm_ffi
from model_builders import conv_matmul

from ago_search.build import apply_schedules, compile_plan_tuned, run_executable
from ago_search.database import SqliteDatabase, Status, TuningDatabase
from ago_search.devices import detect_host
from ago_search.frontend import random_inputs
from ago_search.measure import MeasureProtocol
from ago_search.measure.compare import compare_outputs
from ago_search.pipeline import load_planned
from ago_search.schedule.config import TuningConfig
from ago_search.schedule.results import SOURCE_UNTUNED
from ago_search.schedule.scheduler import (
    FirstPassScheduler,
    TaskPrior,
    expected_gain,
    first_pass_round,
)
from ago_search.schedule.tune import tune_tasks
from cost_model.factory import make_cost_model

REPO = Path(__file__).resolve().parents[1]
FAST = MeasureProtocol(warmup=1, repeat=3, min_repeat_ms=2.0)
ROUND = 2


def _planned(path: Path):
    host = detect_host()
    p = load_planned(path, plan="tvm", device=host)
    return host, p.imported, p.prepared, p.plan, p.fused, list(p.tasks)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "conv_matmul.onnx"
    onnx.save(conv_matmul(), path)
    return path


@pytest.fixture(scope="module")
def tuned(model_path, tmp_path_factory):
    """The model's tasks tuned with 2 trials per task in rounds of 2: a first pass over every
    task, then a round each by expected gain."""
    host, imported, prepared, plan, fused, tasks = _planned(model_path)
    db = tmp_path_factory.mktemp("db") / "tuning.db"
    config = TuningConfig(
        trials=2 * ROUND * len(tasks),
        trials_per_round=ROUND,
        population_size=64,
        protocol=FAST,
        seed=3,
    )
    report = tune_tasks(tasks, host, db, config, cost_model=make_cost_model("xgb", seed=3))
    return SimpleNamespace(
        host=host,
        imported=imported,
        prepared=prepared,
        plan=plan,
        fused=fused,
        tasks=tasks,
        db=db,
        config=config,
        report=report,
    )


# ---- the scheduler's policy, on its own ---------------------------------------------------


def test_first_pass_round_fits_the_budget():
    assert first_pass_round(400, 41) == 4  # half of 400 over 41 tasks
    assert first_pass_round(10 * 41, 41) == 5
    assert first_pass_round(64 * 41, 41) == 16  # capped: later rounds adapt better
    assert first_pass_round(20, 41) == 1  # fewer trials than tasks: one each, most important first


def test_expected_gain():
    assert expected_gain(1, [], 0) == -math.inf
    assert expected_gain(1, [math.inf], 1) == -math.inf
    # no history: the optimistic bonus, prior_gain / rounds
    assert expected_gain(2, [1e-3], 1) == pytest.approx(2 * 1e-3 * 0.5)
    # halved in the last round: recent improvement 0.5 per round
    assert expected_gain(1, [2e-3, 1e-3], 4) == pytest.approx(1e-3 * 0.5)
    # stalled for a long time: only the shrinking bonus
    assert expected_gain(1, [1e-3] * 5, 10) == pytest.approx(1e-3 * 0.05)
    # a heavy, slow task beats a light, fast one
    assert expected_gain(4, [1e-3, 1e-3], 2) > expected_gain(1, [1e-4, 0.5e-4], 2)


def _fake_scheduler(weights, flops, priors=None) -> FirstPassScheduler:
    scheduler = FirstPassScheduler(priors, round_trials=ROUND)._inst
    records = [
        SimpleNamespace(task_weight=w, flop=f, ctx=SimpleNamespace(task_name=f"t{i}"))
        for i, (w, f) in enumerate(zip(weights, flops, strict=True))
    ]
    scheduler._start(records)
    return scheduler


def _result(seconds):
    if seconds is None:
        return SimpleNamespace(error_msg="boom", run_secs=None)
    return SimpleNamespace(error_msg=None, run_secs=[seconds] * 3)


def test_every_task_first_then_gain_then_repair():
    scheduler = _fake_scheduler([1, 3, 1], [1e6, 1e6, 1e9])
    seconds = {0: 1e-3, 1: 2e-3, 2: None}  # what each task's first round finds
    order = []
    for _ in range(3):
        task = scheduler.choose([0, 1, 2])
        order.append(task)
        scheduler._finish_round(task, [_result(seconds[task])])
    # first pass, most expensive (weight x FLOPs) first
    assert order == [2, 1, 0]
    # task 2 found no working schedule: repaired before any gain-driven round
    assert scheduler.choose([0, 1, 2]) == 2
    scheduler._finish_round(2, [_result(None)])
    # task 2 gave up on (max_failed_rounds); task 1 (weight 3 x 2 ms) beats task 0 (1 x 1 ms)
    assert scheduler.choose([0, 1, 2]) == 1


def test_priors_from_the_database_count_as_a_first_pass():
    priors = [TaskPrior(trials=4, best_seconds=1e-3), TaskPrior(), TaskPrior(4, None)]
    scheduler = _fake_scheduler([1, 1, 1], [1, 1, 1], priors)
    assert scheduler.choose([0, 1, 2]) == 1  # the only task without trials
    assert scheduler._states[2].failed_rounds == 2  # tried before, never worked: given up


# ---- tuning a model -------------------------------------------------------------------------


def _search_records(store: TuningDatabase, task_key: str, device_key: str):
    return [
        r for r in store.records(task_key, device_key) if r.extra.get("source") != SOURCE_UNTUNED
    ]


@pytest.mark.slow
def test_every_task_is_measured_before_any_gets_a_second_round(tuned):
    store = TuningDatabase(tuned.db, read_only=True)
    keys = {t.key for t in tuned.tasks}
    order = [
        r.task_key
        for r in store.records(device_key=tuned.host.key)
        if r.task_key in keys and r.extra.get("source") != SOURCE_UNTUNED
    ]
    assert set(order) == keys, "a task got no trial at all"
    first_pass_end = max(order.index(key) for key in keys)
    for key in keys:
        assert order[: first_pass_end + 1].count(key) <= ROUND, "a second round came early"
    report = tuned.report
    assert report.tuned_tasks == len(tuned.tasks)
    assert report.trials_run == len(order) == tuned.config.trials
    assert report.trials_per_round == ROUND
    for result in report.tasks:
        assert result.untuned_seconds is not None and result.best_seconds is not None
        assert result.best_seconds <= result.untuned_seconds
        assert result.statuses.get("wrong_result", 0) == 0


@pytest.mark.slow
def test_a_finished_run_measures_nothing_again(tuned):
    before = len(TuningDatabase(tuned.db, read_only=True))
    report = tune_tasks(
        tuned.tasks, tuned.host, tuned.db, tuned.config, cost_model=make_cost_model("xgb", seed=3)
    )
    assert report.trials_run == 0
    assert report.trials_before == before - len(tuned.tasks)  # the untuned kernels aside
    assert len(TuningDatabase(tuned.db, read_only=True)) == before


@pytest.mark.slow
def test_tuned_build_applies_the_records_and_matches_onnxruntime(tuned):
    store = TuningDatabase(tuned.db, read_only=True)
    target = tuned.host.tvm_target()
    db = SqliteDatabase(store, tuned.host.key, target)
    build = compile_plan_tuned(
        tuned.prepared.legalized, tuned.prepared.graph, tuned.plan, target, db
    )
    assert build.untuned == () and len(build.scheduled) == len(tuned.plan.groups)

    # where a search record is the best, the kernel built is that schedule, not the untuned
    # one (a conv's or a matmul's schedule tiles its loops; a reshape's may change nothing)
    applied, _, _ = apply_schedules(tuned.fused, target, db)
    complex_tasks = {t.key: t for t in tuned.tasks if t.complex_ops > 0}
    searched = [
        r for r in tuned.report.tasks if r.best_source == "metaschedule" and r.key in complex_tasks
    ]
    assert searched, "no conv or matmul found a schedule faster than its untuned kernel"
    for result in searched:
        task = complex_tasks[result.key]
        before = tuned.fused[task.name].without_attr("global_symbol")
        after = applied[task.name].without_attr("global_symbol").without_attr("tirx.is_scheduled")
        assert not tvm_ffi.structural_equal(before, after)

    feeds = random_inputs(tuned.imported.inputs, seed=0)
    session = ort.InferenceSession(str(tuned.imported.path), providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)
    actual = run_executable(build.executable, [feeds[s.name] for s in tuned.imported.inputs])
    checks = compare_outputs(actual, expected, tuned.imported.output_names)
    assert all(c.ok for c in checks), checks


@pytest.mark.slow
def test_measure_cli_times_the_tuned_model_verified(tuned, tmp_path):
    out = tmp_path / "measure.json"
    result = subprocess.run(
        [sys.executable, "-m", "ago_search.cli", "measure", str(tuned.imported.path)]
        + ["--db", str(tuned.db), "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    assert "plan-tuned" in result.stdout and "Traceback" not in result.stderr
    report = json.loads(out.read_text())
    assert report["verified"] is True
    runtimes = {run["runtime"] for run in report["bench"]["runs"]}
    assert runtimes == {"onnxruntime", "tvm-default", "plan-untuned", "plan-tuned"}
    assert report["kernels"]["untuned"] == []


# ---- a killed tuning process, restarted ------------------------------------------------------

_TUNE_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback
    sys.path.insert(0, sys.argv[5])
    from test_tune import FAST, _planned
    from ago_search.database import trace_hash
    from ago_search.schedule.config import TuningConfig
    from ago_search.schedule.tune import tune_tasks
    from cost_model.factory import make_cost_model

    model, db, journal, trials = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

    @derived_object
    class Journal(PyMeasureCallback):
        # every candidate measured, appended as it is committed: what was measured, twice or not
        def apply(self, task_scheduler, task_id, candidates, builder_results, runner_results):
            key = keys[task_id]
            with open(journal, "a") as stream:
                for candidate in candidates:
                    stream.write(f"{key} {trace_hash(candidate.sch.trace)}\\n")
                stream.flush()
                os.fsync(stream.fileno())

    host, _, _, _, _, tasks = _planned(model)
    keys = [t.key for t in tasks]
    config = TuningConfig(trials=trials, trials_per_round=2, population_size=64, protocol=FAST)
    report = tune_tasks(
        tasks, host, db, config, cost_model=make_cost_model("xgb"), measure_callbacks=[Journal()]
    )
    print(json.dumps({"trials_before": report.trials_before, "trials_run": report.trials_run}))
    """
)


def _start_tuning(model: Path, db: Path, journal: Path, trials: int) -> subprocess.Popen:
    command = [sys.executable, "-c", _TUNE_SCRIPT, str(model), str(db), str(journal)]
    command += [str(trials), str(REPO / "tests")]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _identities(db: Path) -> dict[tuple[str, str], float]:
    if not db.exists():
        return {}
    store = TuningDatabase(db, read_only=True)
    try:
        return {(r.task_key, r.trace_hash): r.measured_at for r in store.records()}
    finally:
        store.close()


@pytest.mark.slow
def test_killed_tuning_resumes_without_measuring_anything_twice(model_path, tmp_path):
    db, journal = tmp_path / "tuning.db", tmp_path / "journal.txt"
    first = _start_tuning(model_path, db, journal, trials=200)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and first.poll() is None:
            journaled = journal.read_text().splitlines() if journal.exists() else []
            if len(journaled) >= 6:
                break
            time.sleep(0.2)
        assert first.poll() is None, first.communicate()[1][-3000:]
        first.send_signal(signal.SIGKILL)
    finally:
        first.kill()
        first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    before = _identities(db)
    measured_before = len(journal.read_text().splitlines())
    assert measured_before >= 6

    second = _start_tuning(model_path, db, journal, trials=measured_before + 4)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-3000:]
    summary = json.loads(out.strip().splitlines()[-1])

    after = _identities(db)
    for identity, measured_at in before.items():  # every record written before the kill
        assert after.get(identity) == measured_at
    lines = journal.read_text().splitlines()
    assert len(lines) == len(set(lines)), "a schedule of a task was measured twice"
    assert summary["trials_before"] >= measured_before
    assert summary["trials_run"] >= 1
    store = TuningDatabase(db, read_only=True)
    untuned = [r for r in store.records() if r.extra.get("source") == SOURCE_UNTUNED]
    assert len(untuned) == len({r.task_key for r in untuned}) and untuned
    assert all(r.status is not Status.WRONG_RESULT for r in store.records())
    # the journal's candidates are the database's search records, but for a round the kill
    # may have cut between its commit and its journal line
    search = {
        (r.task_key, r.trace_hash)
        for r in store.records()
        if r.extra.get("source") != SOURCE_UNTUNED
    }
    journaled = {tuple(line.split()) for line in lines}
    assert journaled <= search and len(search - journaled) <= 2


def test_tuning_config_rejects_unknown_choices():
    from ago_search.errors import AgoSearchError

    with pytest.raises(AgoSearchError, match="unknown search 'bogus'"):
        TuningConfig(trials=1, search="bogus")
    with pytest.raises(AgoSearchError, match="unknown task scheduler"):
        TuningConfig(trials=1, scheduler="bogus")
    assert TuningConfig(trials=1, search="replay").search == "replay"
