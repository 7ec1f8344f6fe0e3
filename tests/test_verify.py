"""The output check of measured candidates: right kernels pass, wrong ones are wrong_result."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import tvm
import tvm_ffi
from tvm import te
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.arg_info import ArgInfo
from tvm.s_tir.meta_schedule.builder import BuilderResult
from tvm.s_tir.meta_schedule.runner import RunnerInput, RunnerResult
from tvm.script import tirx as T

from ago_search.database import SqliteDatabase, Status, TuningDatabase, task_key, trace_hash
from ago_search.devices import detect_host
from ago_search.measure import MeasureProtocol
from ago_search.measure.builders import compile_candidate, export_candidate
from ago_search.measure.local_runner import SubprocessRunner
from ago_search.measure.status import ResultStatuses
from ago_search.schedule.tasks import workload_module
from ago_search.schedule.verify import (
    ReferenceCheck,
    compare_arguments,
    compute_reference,
    fixed_inputs,
    task_seed,
)

FAST = MeasureProtocol(warmup=1, repeat=2, min_repeat_ms=1.0)
N = 64


def _matmul(plus_one: bool = False) -> tvm.IRModule:
    a = te.placeholder((N, N), name="A")
    b = te.placeholder((N, N), name="B")
    k = te.reduce_axis((0, N), name="k")
    c = te.compute((N, N), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    if plus_one:  # computes something else with the same arguments
        c = te.compute((N, N), lambda i, j: c[i, j] + 1.0, name="D")
    return workload_module(te.create_prim_func([a, b, c]))


# A 1-D "same" convolution through a padded copy of x: the right kernel writes the padding
# (zeros), the broken one leaves it unwritten and reads whatever that memory holds, the way
# the wrong schedules of TVM_NOTES.md do. On fresh (zero) memory both give the same output.
@T.prim_func(s_tir=True)
def conv1d_padded(x: T.Buffer((4096,), "float32"), y: T.Buffer((4096,), "float32")):
    T.func_attr({"global_symbol": "main", "tirx.noalias": True})
    pad = T.sblock_alloc_buffer((4098,), "float32")
    for i in range(4098):
        with T.sblock("pad"):
            vi = T.axis.remap("S", [i])
            pad[vi] = T.if_then_else(vi >= 1 and vi < 4097, x[vi - 1], T.float32(0))
    for i in range(4096):
        with T.sblock("conv"):
            vi = T.axis.remap("S", [i])
            y[vi] = pad[vi] + pad[vi + 1] * T.float32(2) + pad[vi + 2]


@T.prim_func(s_tir=True)
def conv1d_padding_unwritten(x: T.Buffer((4096,), "float32"), y: T.Buffer((4096,), "float32")):
    T.func_attr({"global_symbol": "main", "tirx.noalias": True})
    pad = T.sblock_alloc_buffer((4098,), "float32")
    for i in range(4096):
        with T.sblock("pad"):
            vi = T.axis.remap("S", [i])
            pad[vi + 1] = x[vi]
    for i in range(4096):
        with T.sblock("conv"):
            vi = T.axis.remap("S", [i])
            y[vi] = pad[vi] + pad[vi + 1] * T.float32(2) + pad[vi + 2]


@pytest.fixture(scope="module")
def target() -> tvm.target.Target:
    return detect_host().tvm_target()


@pytest.fixture(scope="module")
def check() -> ReferenceCheck:
    return ReferenceCheck()


@pytest.fixture(scope="module")
def runner(check):
    runner = SubprocessRunner(detect_host(), protocol=FAST, timeout_sec=60, output_hook=check)
    yield runner
    runner.close()


def _library(mod: tvm.IRModule, target, folder) -> str:
    return export_candidate(compile_candidate(mod, target), folder)


def _scheduled_matmul() -> tvm.IRModule:
    sch = tvm.s_tir.Schedule(_matmul())
    i, j, _ = sch.get_loops(sch.get_sblock("C"))
    i0, _ = sch.split(i, [None, 8])
    sch.parallel(i0)
    sch.vectorize(sch.split(j, [None, 8])[1])
    return sch.mod


def _measure(runner, check, key, mod, library):
    check.select(key)
    info = ArgInfo.from_entry_func(mod, remove_preproc=True)
    (future,) = runner.run([RunnerInput(library, "llvm", info)])
    return future.result()


def test_fixed_inputs_are_seeded_by_the_task() -> None:
    args = [["TENSOR", "float32", [3, 4]], ["TENSOR", "int64", [5]], ["TENSOR", "bool", [2]]]
    first, again = fixed_inputs(args, task_seed("a@b")), fixed_inputs(args, task_seed("a@b"))
    other = fixed_inputs(args, task_seed("c@b"))
    for x, y in zip(first, again, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(first[0], other[0])
    assert first[1].dtype == np.int64 and set(np.unique(first[1])) <= {0, 1}
    assert np.abs(first[0]).max() <= 1.0


def _take_row() -> tvm.IRModule:
    """x[i] with a 0-d index (the `take` of ViT's attention that picks q, k or v)."""
    x = te.placeholder((3, N), name="x")
    i = te.placeholder((), name="i", dtype="int64")
    y = te.compute((N,), lambda j: x[i[()], j], name="y")
    return workload_module(te.create_prim_func([x, i, y]))


def test_a_scalar_argument_keeps_its_zero_dimensions() -> None:
    args = [["TENSOR", "float32", [3, N]], ["TENSOR", "int64", []]]
    assert fixed_inputs(args, 1)[1].shape == ()
    reference = compute_reference(_take_row(), 1)
    x, i, y = reference.outputs
    np.testing.assert_array_equal(y, x[int(i)])


def test_reference_is_the_untuned_kernel() -> None:
    reference = compute_reference(_matmul(), 7)
    a, b, c = reference.outputs
    np.testing.assert_array_equal(a, reference.inputs[0])  # inputs untouched
    np.testing.assert_allclose(c, a @ b, rtol=1e-4, atol=1e-4)
    assert all(e.ok for e in compare_arguments(reference, reference.outputs))
    wrong = list(reference.outputs)
    wrong[2] = wrong[2] + 1.0
    errors = compare_arguments(reference, wrong)
    assert [e.ok for e in errors] == [True, True, False]
    assert errors[2].max_abs_err == pytest.approx(1.0, rel=1e-3)


def test_runner_flags_wrong_kernels_and_passes_right_ones(runner, check, target, tmp_path) -> None:
    matmul = _matmul()
    check.add("matmul", matmul)
    right = _measure(
        runner, check, "matmul", matmul, _library(_scheduled_matmul(), target, tmp_path)
    )
    assert right.error_msg is None and len(right.run_secs) == FAST.repeat

    other = _library(_matmul(plus_one=True), target, tmp_path)
    wrong = _measure(runner, check, "matmul", matmul, other)
    assert wrong.run_secs is None
    assert wrong.error_msg.startswith("wrong result: argument 2 (float32[64x64]): max abs error 1")
    assert [o.ok for o in check.outcomes] == [True, False]

    # a kernel that reads memory it never wrote: right only by luck on zeroed memory, so the
    # runner gives it garbage there (a fresh thread, glibc's malloc perturbation)
    padded = workload_module(conv1d_padded)
    check.add("conv1d", padded)
    good = _measure(runner, check, "conv1d", padded, _library(padded, target, tmp_path))
    assert good.error_msg is None, good.error_msg
    unwritten = _library(workload_module(conv1d_padding_unwritten), target, tmp_path)
    broken = _measure(runner, check, "conv1d", padded, unwritten)
    assert broken.error_msg is not None and broken.error_msg.startswith("wrong result:")
    assert "argument 1" in broken.error_msg

    # nothing selected: measured unchecked
    check.select(None)
    (future,) = runner.run([RunnerInput(other, "llvm", ArgInfo.from_entry_func(matmul))])
    assert future.result().error_msg is None


def _matmul_task(store: TuningDatabase, target) -> tuple[tvm.IRModule, str]:
    mod = _matmul()
    key = task_key(int(tvm_ffi.structural_hash(mod)), target)
    store.commit_task(key, target, mod)
    return mod, key


def _candidates(mod: tvm.IRModule, count: int) -> list[ms.MeasureCandidate]:
    """`count` distinct schedules of `mod` (distinct traces: distinct records)."""
    candidates = []
    for factor in (2, 4, 8, 16, 32)[:count]:
        sch = tvm.s_tir.Schedule(mod)
        sch.split(sch.get_loops(sch.get_sblock("C"))[0], [None, factor])
        candidates.append(ms.MeasureCandidate(sch, ArgInfo.from_entry_func(mod)))
    return candidates


def _scheduler_of(mod: tvm.IRModule, target) -> SimpleNamespace:
    """What CommitMeasurements reads of MetaSchedule's task scheduler."""
    return SimpleNamespace(tasks_=[SimpleNamespace(ctx=SimpleNamespace(target=target, mod=mod))])


def test_records_take_the_status_the_builder_and_runner_give(tmp_path, target) -> None:
    """CommitMeasurements stores the status a builder or runner gives a failed result, as
    data: the error text, kept for a person, decides nothing (here it says otherwise)."""
    store = TuningDatabase(tmp_path / "tuning.db")
    db = SqliteDatabase(store, "host-test", target)
    mod, key = _matmul_task(store, target)
    builder, runner = ResultStatuses(), ResultStatuses()  # what ours keep, as they keep it
    built = [BuilderResult("lib.so", None)] * 4 + [
        builder.remember(BuilderResult(None, "LocalBuilder: build failed"), Status.TIMEOUT)
    ]
    ran = [
        RunnerResult([1e-4, 1e-4], None),
        runner.remember(RunnerResult(None, "max abs error 3"), Status.WRONG_RESULT),
        runner.remember(RunnerResult(None, "wrong result: no"), Status.TIMEOUT),
        runner.remember(RunnerResult(None, "timeout? no: SIGSEGV"), Status.RUN_ERROR),
        RunnerResult(None, "not run"),
    ]
    # through an FFI array, as MetaSchedule's loop hands them on: the same objects
    built, ran = list(tvm_ffi.Array(built)), list(tvm_ffi.Array(ran))
    callback = db.measure_callback(builder, runner)
    callback._inst.apply(_scheduler_of(mod, target), 0, _candidates(mod, 5), built, ran)
    records = store.records(key, "host-test")
    by_error = {r.error: r.status for r in records}
    assert by_error == {
        None: Status.OK,
        "max abs error 3": Status.WRONG_RESULT,
        "wrong result: no": Status.TIMEOUT,
        "timeout? no: SIGSEGV": Status.RUN_ERROR,
        "LocalBuilder: build failed": Status.TIMEOUT,
    }
    # a wrong result is never a best, and MetaSchedule never gets it as a top record
    (best,) = store.best(key, "host-test", k=5)
    assert best.status is Status.OK
    assert len(db.get_top_k(db.commit_workload(mod), 5)) == 1

    # a builder or runner that gives no status (MetaSchedule's own): build_error, run_error
    plain = SqliteDatabase(TuningDatabase(tmp_path / "plain.db"), "host-test", target)
    _matmul_task(plain.store, target)
    failed = [RunnerResult(None, "wrong result: timeout")] * 4
    plain.measure_callback()._inst.apply(
        _scheduler_of(mod, target), 0, _candidates(mod, 5)[1:], built[1:], failed
    )
    statuses = sorted(str(r.status) for r in plain.store.records())
    assert statuses == ["build_error", "run_error", "run_error", "run_error"]


def test_wrong_result_timeout_and_crash_land_with_their_status(runner, check, target, tmp_path):
    """Our runner's wrong result, time-out and crash, each committed with its own status."""
    from tir_kernels import never_ends, writes_far_out_of_bounds

    store = TuningDatabase(tmp_path / "tuning.db")
    db = SqliteDatabase(store, "host-test", target)
    mod, key = _matmul_task(store, target)
    check.add(key, mod)
    check.select(key)
    matmul_args = ArgInfo.from_entry_func(mod, remove_preproc=True)
    vector_args = ArgInfo.from_prim_func(never_ends)
    libraries = [
        (_library(_scheduled_matmul(), target, tmp_path), matmul_args),
        (_library(_matmul(plus_one=True), target, tmp_path), matmul_args),
        (_library(tvm.IRModule({"main": never_ends}), target, tmp_path), vector_args),
        (_library(tvm.IRModule({"main": writes_far_out_of_bounds}), target, tmp_path), vector_args),
    ]
    built = [BuilderResult(path, None) for path, _ in libraries]
    runner.timeout_sec = 3.0
    try:
        futures = runner.run([RunnerInput(path, "llvm", args) for path, args in libraries])
        ran = [future.result() for future in futures]
    finally:
        runner.timeout_sec = 60
    callback = db.measure_callback(None, runner)
    callback._inst.apply(_scheduler_of(mod, target), 0, _candidates(mod, 4), built, ran)
    by_trace = {r.trace_hash: r for r in store.records(key, "host-test")}
    records = [by_trace[trace_hash(c.sch.trace)] for c in _candidates(mod, 4)]
    assert [r.status for r in records] == [
        Status.OK,
        Status.WRONG_RESULT,
        Status.TIMEOUT,
        Status.RUN_ERROR,
    ]
    assert records[0].error is None and len(records[0].latencies) == FAST.repeat
    # the text a person reads is kept with each failure
    assert records[1].error.startswith("wrong result: argument 2")
    assert "killed after 3.0 s" in records[2].error
    assert "SIGSEGV" in records[3].error or "SIGBUS" in records[3].error
