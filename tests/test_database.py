"""The tuning database: records and workloads round-trip, best-of ignores failures, devices are
kept apart, merges are idempotent, trace files round-trip, a SIGKILLed writer loses nothing,
two processes write at once, and MetaSchedule tunes into it and applies what it finds."""

from __future__ import annotations

import gzip
import json
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from ago_search.database import (
    DatabaseError,
    Record,
    Status,
    TuningDatabase,
    canonical_target,
    export_jsonl,
    import_jsonl,
    trace_hash,
)

TARGET = {"kind": "llvm", "mcpu": "znver3", "num-cores": 1}


@pytest.fixture(scope="module")
def target() -> str:
    return canonical_target(TARGET)


@pytest.fixture
def db(tmp_path: Path) -> TuningDatabase:
    with TuningDatabase(tmp_path / "tuning.db") as database:
        yield database


def _record(target: str, i: int, **fields) -> Record:
    """A record of a made-up trace number i (traces differ by their decision)."""
    defaults = {
        "task_key": "task-a",
        "device_key": "host",
        "target": target,
        "trace_json": [[["SamplePerfectTile", [], [4, 64], ["v0"]]], [[0, [i, 64 // (i + 1)]]]],
        "latencies": (1e-3 * (i + 1), 1.1e-3 * (i + 1), 0.9e-3 * (i + 1)),
        "measured_at": 1_700_000_000.0 + i,
    }
    return Record(**{**defaults, **fields})


def _matmul_module(n: int = 64):
    import tvm
    from tvm import te

    a = te.placeholder((n, n), name="A")
    b = te.placeholder((n, n), name="B")
    k = te.reduce_axis((0, n), name="k")
    c = te.compute((n, n), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    return tvm.IRModule({"main": te.create_prim_func([a, b, c])})


# ------------------------------------------------------------------------ records


def test_record_json_round_trip(target: str) -> None:
    features = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    record = _record(
        target,
        3,
        layout="NHWC",
        features=features,
        build_seconds=0.21,
        extra={"number": 10, "runner": "local"},
    )
    again = Record.from_json(json.loads(json.dumps(record.to_json())))
    assert again == record
    assert again.trace_hash == record.trace_hash
    np.testing.assert_array_equal(again.features, features)
    assert record.median == pytest.approx(4e-3)


def test_record_normalises_target_and_trace(target: str) -> None:
    a = _record(target, 1)
    b = _record(TARGET, 1, trace_json=json.dumps(a.to_json()["trace"], indent=2))
    assert a.target == b.target == target
    assert a.trace_hash == b.trace_hash == trace_hash(a.trace_json)
    assert json.loads(target)["keys"] == ["cpu"]  # TVM's defaults are filled in
    with pytest.raises(ValueError, match="needs latencies"):
        _record(target, 1, latencies=())


def test_records_round_trip_through_the_file(tmp_path: Path, target: str) -> None:
    path = tmp_path / "tuning.db"
    features = np.linspace(0, 1, 172, dtype=np.float32).reshape(1, 172)
    written = [
        _record(target, 0, features=features, layout="NCHW8c", build_seconds=0.1),
        _record(target, 1, status=Status.BUILD_ERROR, latencies=(), error="LLVM said no"),
        _record(target, 2, status="timeout", latencies=(), error="killed after 10 s"),
    ]
    with TuningDatabase(path) as db:
        assert [db.commit_record(r) for r in written] == [True, True, True]
        assert not db.commit_record(written[0])  # the same trace again is not a new record
    with TuningDatabase(path) as db:
        read = db.records("task-a", "host")
        assert read == written
        np.testing.assert_array_equal(read[0].features, features)
        assert [r.status for r in read] == [Status.OK, Status.BUILD_ERROR, Status.TIMEOUT]
        assert len(db) == 3


def test_workload_round_trip(tmp_path: Path, target: str) -> None:
    import tvm_ffi

    mod = _matmul_module(32)
    path = tmp_path / "tuning.db"
    with TuningDatabase(path) as db:
        db.commit_task("mm32", target, mod, name="matmul")
        wid = db.find_workload(mod)
        assert wid is not None and db.commit_workload(_matmul_module(32)) == wid
        assert db.find_workload(_matmul_module(16)) is None
    with TuningDatabase(path) as db:
        stored = db.workload("mm32")
        assert tvm_ffi.structural_equal(stored, mod)
        (task,) = db.tasks()
        assert task.task_key == "mm32" and task.name == "matmul" and task.target == target
        assert task.workload_hash == int(tvm_ffi.structural_hash(mod))
        assert db.workload("unknown") is None


def test_best_ignores_failures(db: TuningDatabase, target: str) -> None:
    for i in range(4):
        db.commit_record(_record(target, i))
    # faster than all, but failures: never a best
    db.commit_record(_record(target, 10, latencies=(1e-6,), status=Status.WRONG_RESULT))
    db.commit_record(_record(target, 11, latencies=(), status=Status.RUN_ERROR, error="crash"))
    best = db.best("task-a", "host", k=3)
    assert [r.median for r in best] == pytest.approx([1e-3, 2e-3, 3e-3])
    # a check that finds the best wrong demotes it
    db.set_status("task-a", "host", best[0].trace_hash, Status.WRONG_RESULT, "max abs err 285")
    assert db.best("task-a", "host")[0].median == pytest.approx(2e-3)
    counts = db.status_counts("task-a", "host")
    assert counts[Status.OK] == 3 and counts[Status.WRONG_RESULT] == 2
    assert counts[Status.RUN_ERROR] == 1 and counts[Status.TIMEOUT] == 0
    assert db.best("task-a", "host", k=0) == [] and db.best("task-b", "host") == []


def test_latencies_come_in_commit_order_with_failures_as_none(db: TuningDatabase, target: str):
    """What the search's tuning curve is fitted on: each task's medians as measured."""
    db.commit_record(_record(target, 2))
    db.commit_record(_record(target, 0))
    db.commit_record(_record(target, 1, status=Status.WRONG_RESULT))
    db.commit_record(_record(target, 0, task_key="task-b"))
    db.commit_record(_record(target, 3, device_key="pixel7"))
    seqs = db.latencies_in_order("host")
    assert seqs.keys() == {"task-a", "task-b"}
    assert seqs["task-a"][0] == pytest.approx(3e-3) and seqs["task-a"][1] == pytest.approx(1e-3)
    assert seqs["task-a"][2] is None and len(seqs["task-b"]) == 1
    assert db.latencies_in_order("nowhere") == {}


def test_devices_have_separate_bests(db: TuningDatabase, target: str) -> None:
    db.commit_record(_record(target, 0, device_key="host-znver3", latencies=(5e-3,)))
    db.commit_record(_record(target, 1, device_key="host-znver3", latencies=(1e-3,)))
    db.commit_record(_record(target, 0, device_key="pixel7", latencies=(2e-3,)))
    db.commit_record(_record(target, 1, device_key="pixel7", latencies=(9e-3,)))
    fast_here = db.best("task-a", "host-znver3")[0]
    fast_there = db.best("task-a", "pixel7")[0]
    assert fast_here.trace_hash != fast_there.trace_hash
    assert db.devices() == ["host-znver3", "pixel7"]
    assert [t.task_key for t in db.tasks("pixel7")] == ["task-a"] and db.tasks("other") == []


def test_has_measured_covers_failures(db: TuningDatabase, target: str) -> None:
    ok = _record(target, 0)
    failed = _record(target, 1, status=Status.BUILD_ERROR, latencies=())
    db.commit_record(ok)
    db.commit_record(failed)
    assert db.has_measured("task-a", "host", ok.trace_hash)
    assert db.has_measured("task-a", "host", failed.trace_hash, target=TARGET)
    assert not db.has_measured("task-a", "pixel7", ok.trace_hash)
    assert not db.has_measured("task-a", "host", _record(target, 2).trace_hash)
    assert db.measured("task-a", "host") == {
        ok.trace_hash: Status.OK,
        failed.trace_hash: Status.BUILD_ERROR,
    }


def test_workload_queries_span_its_tasks(db: TuningDatabase, target: str) -> None:
    """What MetaSchedule asks for by workload: every task of it, one device, one target."""
    other = canonical_target({**TARGET, "num-cores": 2})
    mod = _matmul_module(32)
    db.commit_task("mm32-a", target, mod)
    db.commit_task("mm32-b", target, _matmul_module(32))  # the same workload, another key
    db.commit_task("mm32-wide", other, mod)
    db.commit_task("mm16", target, _matmul_module(16))
    db.commit_record(_record(target, 2, task_key="mm32-a"))
    db.commit_record(_record(target, 0, task_key="mm32-b"))
    db.commit_record(_record(target, 1, task_key="mm32-a", status="run_error", latencies=()))
    db.commit_record(_record(other, 3, task_key="mm32-wide"))
    db.commit_record(_record(target, 4, task_key="mm32-a", device_key="pixel7"))
    db.commit_record(_record(target, 5, task_key="bare"))  # no workload: MetaSchedule can't see
    wid = db.find_workload(mod)
    assert db.workload_ids() == [wid, db.find_workload(_matmul_module(16))]
    assert db.workload_ids(other) == [wid]

    mine = db.workload_records(wid, "host", target)
    assert [(r.task_key, r.status) for r in mine] == [
        ("mm32-a", Status.OK),
        ("mm32-b", Status.OK),
        ("mm32-a", Status.RUN_ERROR),
    ]
    assert len(db.workload_records(wid, "host")) == 4  # any target
    best = db.workload_best(wid, "host", k=5, target=target)
    assert [r.median for r in best] == pytest.approx([1e-3, 3e-3])  # failures never
    assert db.workload_best(wid, "host", k=1, target=TARGET) == best[:1]
    assert db.workload_best(wid, "host", k=0) == []
    assert [r.task_key for r in db.workload_best(wid, "pixel7")] == ["mm32-a"]
    assert db.workload_record_count("host") == 4
    assert db.workload_record_count("host", other) == 1
    assert db.workload_record_count("pixel7", target) == 1


# ------------------------------------------------------------------------ merge and files


def test_merge_is_idempotent(tmp_path: Path, target: str) -> None:
    mod = _matmul_module(32)
    with TuningDatabase(tmp_path / "a.db") as a, TuningDatabase(tmp_path / "b.db") as b:
        a.commit_task("mm32", target, mod)
        b.commit_task("mm32", target, _matmul_module(32))  # equal module, stored once after merge
        b.commit_task("mm16", target, _matmul_module(16))
        for i in range(5):
            a.commit_record(_record(target, i, task_key="mm32"))
        for i in range(3, 8):  # 3 and 4 are in both
            b.commit_record(_record(target, i, task_key="mm32"))
        b.commit_record(_record(target, 0, task_key="mm16", device_key="pixel7"))

        assert a.merge_from(b.path) == 4
        assert a.merge_from(b.path) == 0
        assert a.merge_from(a.path) == 0
        assert len(a) == 9
        assert len(a._query("SELECT id FROM workloads")) == 2
        assert {t.task_key for t in a.tasks()} == {"mm16", "mm32"}
        assert a.workload("mm16") is not None
        assert a.best("mm32", "host")[0].median == pytest.approx(1e-3)
    with TuningDatabase(tmp_path / "c.db") as c:  # from closed files, read without writing
        assert c.merge_from(tmp_path / "a.db") == 9
        assert c.merge_from(tmp_path / "b.db") == 0
        assert sorted(c.records(), key=_identity) == sorted(
            TuningDatabase(tmp_path / "a.db", read_only=True).records(), key=_identity
        )
    with pytest.raises(DatabaseError, match="no such tuning database"):
        TuningDatabase(tmp_path / "c.db").merge_from(tmp_path / "missing.db")


def _identity(record: Record) -> tuple:
    return (record.task_key, record.device_key, record.trace_hash)


def test_jsonl_round_trip(tmp_path: Path, target: str) -> None:
    import tvm_ffi

    mod = _matmul_module(32)
    source = TuningDatabase(tmp_path / "source.db")
    source.commit_task("mm32", target, mod, name="matmul")
    features = np.ones((2, 164), dtype=np.float32)
    written = [
        _record(target, 0, task_key="mm32", features=features),
        _record(target, 1, task_key="mm32", status=Status.BUILD_ERROR, latencies=(), error="x"),
        _record(target, 2, task_key="mm32", device_key="pixel7"),
        _record(target, 3, task_key="bare"),  # a task without a stored module
    ]
    for record in written:
        source.commit_record(record)

    path = tmp_path / "traces" / "host.jsonl.gz"
    assert export_jsonl(source, path) == 4
    with open(path, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"
    with gzip.open(path, "rt") as f:
        lines = [json.loads(line) for line in f]
    assert lines[0]["kind"] == "header" and lines[0]["format"] == 1
    assert [line["kind"] for line in lines[1:]].count("task") == 2  # each task once

    copy = TuningDatabase(tmp_path / "copy.db")
    assert import_jsonl(copy, path) == 4
    assert import_jsonl(copy, path) == 0
    assert sorted(copy.records(), key=lambda r: r.measured_at) == written
    assert tvm_ffi.structural_equal(copy.workload("mm32"), mod)
    assert copy.task("mm32").name == "matmul" and copy.workload("bare") is None

    one_device = tmp_path / "pixel7.jsonl"
    assert export_jsonl(source, one_device, device_key="pixel7", compress=False) == 1
    assert json.loads(one_device.read_text().splitlines()[0])["device_key"] == "pixel7"


def test_jsonl_rejects_what_it_cannot_read(tmp_path: Path, db: TuningDatabase) -> None:
    newer = tmp_path / "newer.jsonl"
    newer.write_text(json.dumps({"kind": "header", "format": 2}) + "\n")
    with pytest.raises(DatabaseError, match="upgrade ago-search"):
        import_jsonl(db, newer)
    headless = tmp_path / "headless.jsonl"
    headless.write_text(json.dumps({"kind": "record"}) + "\n")
    with pytest.raises(DatabaseError, match="no header"):
        import_jsonl(db, headless)
    not_a_db = tmp_path / "not.db"
    not_a_db.write_text("hello, this is not SQLite" * 100)
    with pytest.raises(DatabaseError, match="not a usable SQLite"):
        TuningDatabase(not_a_db)


# ------------------------------------------------------------------------ processes

_WRITER = textwrap.dedent(
    """
    import os, sys, time
    from ago_search.database import Record, TuningDatabase

    path, target, first, last = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    db = TuningDatabase(path, busy_timeout_s=30)
    pause = 0.0
    if len(sys.argv) > 5:  # start when told to, and pace the commits, so two writers overlap
        print("ready", flush=True)
        while not os.path.exists(sys.argv[5]):
            time.sleep(0.005)
        pause = 0.002
    new = 0
    for i in range(first, last):
        trace = [[["SamplePerfectTile", [], [4, 64], ["v0"]]], [[0, [i]]]]
        record = Record("task-p", "host", target, trace, latencies=(1e-3 + i * 1e-6,))
        new += db.commit_record(record)
        print(i + 1 - first, flush=True)  # committed, and durable, by now
        time.sleep(pause)
    print("new", new, flush=True)
    """
)


def _writer(
    path: Path, target: str, first: int, last: int, go: Path | None = None
) -> subprocess.Popen:
    args = [sys.executable, "-c", _WRITER, str(path), target, str(first), str(last)]
    if go is not None:
        args.append(str(go))
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True)


def test_sigkill_loses_nothing_committed(tmp_path: Path, target: str) -> None:
    path = tmp_path / "tuning.db"
    writer = _writer(path, target, 0, 10**9)
    reported = 0
    assert writer.stdout is not None
    for line in writer.stdout:
        reported = int(line)
        if reported >= 300:
            break
    writer.send_signal(signal.SIGKILL)
    # what it reported after we stopped reading was committed too
    for line in writer.stdout:
        if line.strip().isdigit():
            reported = int(line)
    assert writer.wait(timeout=30) == -signal.SIGKILL
    with TuningDatabase(path) as db:
        measured = db.measured("task-p", "host")
        assert len(measured) >= reported
        for i in range(reported):
            trace = [[["SamplePerfectTile", [], [4, 64], ["v0"]]], [[0, [i]]]]
            assert trace_hash(trace) in measured
        assert db._query("PRAGMA integrity_check")[0][0] == "ok"


def test_two_processes_write_at_once(tmp_path: Path, target: str) -> None:
    path = tmp_path / "tuning.db"
    go = tmp_path / "go"
    writers = [_writer(path, target, 0, 300, go), _writer(path, target, 200, 500, go)]
    for writer in writers:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    go.touch()
    outputs = [w.communicate(timeout=120)[0] for w in writers]
    assert [w.returncode for w in writers] == [0, 0]
    new = [int(out.splitlines()[-1].split()[1]) for out in outputs]
    assert sum(new) == 500  # the 100 traces both wrote were stored once
    with TuningDatabase(path) as db:
        assert len(db) == 500
        assert db.best("task-p", "host")[0].median == pytest.approx(1e-3)
        # the writers' commits interleaved: their spans of time overlap
        times = {rec.latencies[0]: rec.measured_at for rec in db.records("task-p", "host")}
        span_a = [t for lat, t in times.items() if lat < 1e-3 + 200e-6 - 1e-9]
        span_b = [t for lat, t in times.items() if lat > 1e-3 + 300e-6 - 1e-9]
        assert min(span_b) < max(span_a) and min(span_a) < max(span_b)


# ------------------------------------------------------------------------ MetaSchedule


def _in_process_builder_and_runner(artifact_dir: Path, fail_build: int):
    """A MetaSchedule builder and runner that work in this process (no worker pools, whose
    start-up would dominate this test); the builder fails its `fail_build`-th candidate."""
    import tvm
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture

    @derived_object
    class Builder(ms.builder.PyBuilder):
        def __init__(self) -> None:
            self.count = 0

        def build(self, build_inputs):
            results = []
            for build_input in build_inputs:
                self.count += 1
                if self.count == fail_build:
                    results.append(ms.builder.BuilderResult(None, "injected build failure"))
                    continue
                lib = tvm.tirx.build(build_input.mod, target=build_input.target)
                # MetaSchedule's RemoveBuildArtifact deletes the folder of each artifact
                path = Path(tempfile.mkdtemp(dir=artifact_dir)) / "candidate.so"
                lib.export_library(str(path))
                results.append(ms.builder.BuilderResult(str(path), None))
            return results

    @derived_object
    class Runner(ms.runner.PyRunner):
        def run(self, runner_inputs):
            futures = []
            for runner_input in runner_inputs:
                lib = tvm.runtime.load_module(runner_input.artifact_path)
                args = [
                    tvm.runtime.tensor(np.zeros([int(d) for d in a.shape], str(a.dtype)))
                    for a in runner_input.args_info
                ]
                timer = lib.time_evaluator(lib.entry_name, tvm.cpu(), number=2, repeat=3)
                futures.append(LocalRunnerFuture(res=list(timer(*args).results)))
            return futures

    return Builder(), Runner()


def test_our_records_apply_through_metaschedule(tmp_path: Path) -> None:
    """A schedule our search committed is what MetaScheduleApplyDatabase puts in a model."""
    import tvm
    from tvm import relax

    from ago_search.database import SqliteDatabase
    from ago_search.schedule.tasks import extract_tasks

    target = tvm.target.Target(TARGET)
    x = relax.Var("x", relax.TensorType((64, 64), "float32"))
    y = relax.Var("y", relax.TensorType((64, 64), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x, y]):
        with bb.dataflow():
            product = bb.emit(relax.op.matmul(x, y))
            out = bb.emit_output(relax.op.nn.relu(product))
        bb.emit_func_output(out)
    fused = tvm.transform.Sequential(
        [
            relax.transform.LegalizeOps(),
            relax.transform.AnnotateTIROpPattern(),
            relax.transform.FuseOps(),
            relax.transform.FuseTIR(),
        ]
    )(bb.get())
    (task,) = extract_tasks(fused, target)

    sch = tvm.s_tir.Schedule(task.mod)
    i, j, _ = sch.get_loops(sch.get_sblock("matmul"))
    sch.split(j, [None, 16])
    sch.parallel(i)
    store = TuningDatabase(tmp_path / "tuning.db")
    store.commit_task(task.key, target, task.mod, name=task.name)
    store.commit_record(Record(task.key, "host", target, sch.trace, latencies=(1e-5,)))

    with target, SqliteDatabase(store, "host"):
        applied = relax.transform.MetaScheduleApplyDatabase()(fused)
    assert "T.parallel" in applied[task.name].script()  # the record was applied
    vm = relax.VirtualMachine(tvm.compile(applied, target), tvm.cpu())
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((64, 64), dtype=np.float32) for _ in range(2))
    got = vm["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b)).numpy()
    np.testing.assert_allclose(got, np.maximum(a @ b, 0), rtol=1e-4, atol=1e-4)

    with target, SqliteDatabase(store, "pixel7"):  # another device's records: none
        untouched = relax.transform.MetaScheduleApplyDatabase()(fused)
    assert "T.parallel" not in untouched[task.name].script()


@pytest.mark.timeout(300)
def test_metaschedule_tunes_into_it_and_applies_its_best(tmp_path: Path) -> None:
    import tvm
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    from ago_search.database import SqliteDatabase, task_key
    from ago_search.measure import register_cpu_tensor_intrinsics
    from ago_search.schedule.tasks import workload_module

    target = tvm.target.Target(TARGET)
    register_cpu_tensor_intrinsics(target)  # TuneContext's import of every backend's: ~30 s
    mod = _matmul_module(64)
    key = task_key(int(tvm_ffi.structural_hash(workload_module(mod["main"]))), target)
    path = tmp_path / "tuning.db"
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    db = SqliteDatabase(path, "host-test", target)
    builder, runner = _in_process_builder_and_runner(artifacts, fail_build=2)
    started = time.perf_counter()
    ms.tune_tir(
        mod,
        target,
        str(tmp_path / "work"),
        max_trials_global=8,
        num_trials_per_iter=4,
        builder=builder,
        runner=runner,
        database=db,
        cost_model="random",
        measure_callbacks=[
            db.measure_callback(),
            *ms.measure_callback.MeasureCallback.create("default"),
        ],
        strategy=ms.search_strategy.EvolutionarySearch(population_size=16),
        num_tuning_cores=1,
    )
    tuning_seconds = time.perf_counter() - started

    # every candidate is a record in SQLite, the injected failure with its reason
    store = TuningDatabase(path)
    records = store.records(key, "host-test")
    assert 4 <= len(records) <= 8, tuning_seconds
    assert len(db) == len(records) == len(db.get_all_tuning_records())
    failed = [r for r in records if not r.ok]
    assert [(r.status, r.error) for r in failed] == [(Status.BUILD_ERROR, "injected build failure")]
    assert all(r.extra["source"] == "metaschedule" for r in records)

    # MetaSchedule's best is ours, and it reads failures as 1e10 s
    best = store.best(key, "host-test")[0]
    top = db.get_top_k(db.commit_workload(workload_module(mod["main"])), 2)
    assert [float(s) for s in top[0].run_secs] == pytest.approx(best.latencies)
    assert sorted(float(r.run_secs[0]) for r in db.get_all_tuning_records())[-1] == 1e10

    # a fresh view of the file finds the schedule, and it computes the product
    fresh = SqliteDatabase(path, "host-test")
    sch = fresh.query_schedule(mod, target, "main")
    assert sch is not None
    assert trace_hash(sch.trace) == best.trace_hash
    lib = tvm.tirx.build(sch.mod, target=target)
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((64, 64), dtype=np.float32) for _ in range(2))
    c = tvm.runtime.tensor(np.zeros((64, 64), "float32"))
    lib["main"](tvm.runtime.tensor(a), tvm.runtime.tensor(b), c)
    np.testing.assert_allclose(c.numpy(), a @ b, rtol=1e-4, atol=1e-4)

    # demoting the best (a wrong result) makes MetaSchedule pick the runner-up; other devices
    # and other targets see nothing
    store.set_status(key, "host-test", best.trace_hash, Status.WRONG_RESULT)
    again = SqliteDatabase(path, "host-test").query_tuning_record(mod, target, "main")
    assert again is not None
    assert trace_hash(again.trace) != best.trace_hash
    assert SqliteDatabase(path, "pixel7").query_schedule(mod, target, "main") is None
    other_target = tvm.target.Target({**TARGET, "num-cores": 2})
    assert fresh.query_schedule(mod, other_target, "main") is None
    with_host = tvm.target.Target(TARGET, host=TARGET)  # as tvm.compile's targets come
    assert fresh.query_schedule(mod, with_host, "main") is not None
