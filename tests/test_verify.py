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

from ago_search.database import Status, TuningDatabase
from ago_search.devices import detect_host
from ago_search.measure import MeasureProtocol
from ago_search.measure.builders import compile_candidate, export_candidate
from ago_search.measure.runners import SubprocessRunner
from ago_search.schedule.tasks import task_key, workload_module
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


def test_wrong_results_are_stored_as_wrong_result(tmp_path, target) -> None:
    """CommitMeasurements maps the runner's "wrong result: ..." to Status.WRONG_RESULT."""
    store = TuningDatabase(tmp_path / "tuning.db")
    db = store.metaschedule("host-test", target)
    mod = _matmul()
    key = task_key(int(tvm_ffi.structural_hash(mod)), target)
    store.commit_task(key, target, mod)
    schedules = []
    for factor in (4, 8, 16):
        sch = tvm.s_tir.Schedule(mod)
        sch.split(sch.get_loops(sch.get_sblock("C"))[0], [None, factor])
        schedules.append(sch)
    candidates = [ms.MeasureCandidate(s, ArgInfo.from_entry_func(mod)) for s in schedules]
    built = [BuilderResult("lib.so", None)] * 3
    ran = [
        RunnerResult([1e-4, 1e-4], None),
        RunnerResult(None, "wrong result: argument 2 (float32[64x64]): max abs error 3"),
        RunnerResult(None, "SubprocessRunner: timeout, killed after 30 s"),
    ]
    scheduler = SimpleNamespace(
        tasks_=[SimpleNamespace(ctx=SimpleNamespace(target=target, mod=mod))]
    )
    # the Python side of the callback, as MetaSchedule's loop calls it
    db.measure_callback()._inst.apply(scheduler, 0, candidates, built, ran)
    statuses = [r.status for r in store.records(key, "host-test")]
    assert statuses == [Status.OK, Status.WRONG_RESULT, Status.TIMEOUT]
    # a wrong result is never a best, and MetaSchedule never gets it as a top record
    (best,) = store.best(key, "host-test", k=5)
    assert best.status is Status.OK
    assert len(db.get_top_k(db.commit_workload(mod), 5)) == 1
