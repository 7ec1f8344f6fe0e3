"""ORT vs TVM default build: results, verification, JSON, table, failures, thread control."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import psutil
import pytest
from onnx import TensorProto, helper

from ago_search.bench import ORT, TVM_DEFAULT, BenchResult, bench_model
from ago_search.build import build_default, run_executable
from ago_search.devices import host_cpu_name, host_target
from ago_search.frontend import import_onnx, random_inputs
from ago_search.measure import MeasureProtocol
from ago_search.measure.compare import OutputCheck, compare_output, compare_outputs
from ago_search.measure.threads import tvm_thread_env
from ago_search.report import format_bench

REPO = Path(__file__).resolve().parent.parent
FAST = MeasureProtocol(warmup=1, number=None, repeat=3, min_repeat_ms=2.0)


def _weight(name, shape, seed):
    rng = np.random.default_rng(seed)
    return onnx.numpy_helper.from_array(rng.uniform(-0.5, 0.5, shape).astype(np.float32), name)


def conv_relu_matmul() -> onnx.ModelProto:
    """x[N,3,8,8] -> Conv 3x3 -> Relu -> Flatten -> MatMul -> y[N,10]; second output r."""
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("Flatten", ["r"], ["f"]),
            helper.make_node("MatMul", ["f", "M"], ["y"]),
        ],
        "conv_relu_matmul",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10]),
            helper.make_tensor_value_info("r", TensorProto.FLOAT, ["N", 8, 8, 8]),
        ],
        [_weight("W", (8, 3, 3, 3), 0), _weight("B", (8,), 1), _weight("M", (512, 10), 2)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "conv_relu_matmul.onnx"
    onnx.save(conv_relu_matmul(), path)
    return import_onnx(path, {"x": (1, 3, 8, 8)})


@pytest.fixture(scope="module")
def result(imported) -> BenchResult:
    return bench_model(imported, threads=[1, 2], protocol=FAST, seed=0)


def test_both_runtimes_at_each_thread_count(result):
    assert result.thread_counts == (1, 2)
    for threads in (1, 2):
        for runtime in (ORT, TVM_DEFAULT):
            run = result.run(runtime, threads)
            assert run is not None, (runtime, threads)
            assert run.error is None
            assert run.timing is not None and len(run.timing.samples) == FAST.repeat
            assert run.timing.min <= run.timing.median <= run.timing.max
            assert run.threads_used >= 1
            assert run.setup_s >= 0


def test_tvm_outputs_match_ort(result):
    assert result.verified
    for threads in (1, 2):
        run = result.run(TVM_DEFAULT, threads)
        assert run.verified
        assert [c.name for c in run.checks] == ["y", "r"]
        assert all(c.ok and c.max_rel_err < 1e-4 for c in run.checks)
        assert all(c.ref_max_abs > 0 for c in run.checks)
    # ORT on the folded graph computes what ORT on the file computes
    assert result.source_checks and all(c.ok for c in result.source_checks)


def test_speedups_and_context(result):
    assert set(result.speedups) == {1, 2}
    assert all(s is not None and s > 0 for s in result.speedups.values())
    assert result.speedup(ORT, 1) == pytest.approx(1.0)
    assert result.versions["tvm"].startswith("0.27")
    assert "onnxruntime" in result.versions
    assert "llvm" in result.target
    assert result.cpu == host_cpu_name()
    assert result.compile_s > 0


def test_json_round_trip(result):
    text = json.dumps(result.to_json())
    back = BenchResult.from_json(json.loads(text))
    assert back == result
    assert back.verified == result.verified
    assert json.loads(text)["speedup_tvm_default_over_ort"].keys() == {"1", "2"}


def test_table_has_a_row_per_runtime_and_thread_count(result):
    table = format_bench(result.to_json())
    rows = [line for line in table.splitlines() if line.startswith((ORT, TVM_DEFAULT))]
    assert len(rows) == 4
    assert sum(line.rstrip().endswith("yes") for line in rows) == 2
    assert sum(line.rstrip().endswith("reference") for line in rows) == 2


def test_perturbed_tvm_output_is_not_verified(result):
    reference = [np.linspace(-1, 1, 50, dtype=np.float32).reshape(5, 10)]
    perturbed = [reference[0].copy()]
    perturbed[0][2, 3] += 0.05  # 5 % of the largest |value|
    checks = compare_outputs(perturbed, reference, ["y"])
    assert not checks[0].ok
    assert checks[0].max_abs_err == pytest.approx(0.05, rel=1e-5)
    assert checks[0].max_rel_err == pytest.approx(0.05, rel=1e-5)
    assert checks[0].mismatched == pytest.approx(1 / 50)

    tvm_run = dataclasses.replace(result.run(TVM_DEFAULT, 1), checks=checks)
    assert not tvm_run.verified
    broken = dataclasses.replace(
        result, runs=tuple(tvm_run if r is result.run(TVM_DEFAULT, 1) else r for r in result.runs)
    )
    assert not broken.verified
    table = format_bench(broken.to_json())
    assert any(line.rstrip().endswith("NO") for line in table.splitlines())
    assert "output 'y' differs from ORT's: 2.0% of elements" in table


def test_compare_output_rules():
    ref = np.array([[0.0, 1e-8, -2.0, 4.0]], dtype=np.float32)
    same = compare_output("o", ref.copy(), ref)
    assert same.ok and same.max_abs_err == 0.0 and same.ref_max_abs == 4.0
    # float32-sized noise passes even where the reference is ~0 (relative to max |ref|)
    noisy = compare_output("o", ref + np.float32(1e-6), ref)
    assert noisy.ok and noisy.max_rel_err < 1e-6
    wrong_shape = compare_output("o", ref[:, :3], ref)
    assert not wrong_shape.ok and wrong_shape.max_abs_err == math.inf
    assert OutputCheck.from_json(json.loads(json.dumps(wrong_shape.to_json()))) == wrong_shape
    with_nan = ref.copy()
    with_nan[0, 1] = np.nan
    assert not compare_output("o", with_nan, ref).ok  # NaN where the reference is finite
    assert compare_output("o", with_nan, with_nan).ok  # NaN in both places
    ints = np.array([1, 2, 3], dtype=np.int64)
    assert compare_output("i", ints, ints).ok
    assert not compare_output("i", ints + np.array([0, 0, 1]), ints).ok  # exact for integers
    zeros = np.zeros(4, np.float32)
    assert compare_output("z", zeros, zeros).ok
    assert not compare_output("z", zeros + 1.0, zeros).ok
    # a missing output is a failed check, not a silent pass
    missing = compare_outputs([ref], [ref, ref], ["a", "b"])
    assert not all(c.ok for c in missing)


def test_failing_runtime_is_a_record_not_an_exception(imported):
    failed = bench_model(imported, threads=[1], protocol=FAST, timeout_s=0.01)
    assert not failed.verified
    for run in failed.runs:
        assert run.timing is None and "timed out" in run.error
    table = format_bench(failed.to_json())
    assert "failed" in table and "timed out" in table
    assert BenchResult.from_json(json.loads(json.dumps(failed.to_json()))) == failed


def test_build_default_runs_and_matches_numpy_reference(imported):
    feeds = random_inputs(imported.inputs, seed=3)
    executable = build_default(imported.mod, host_target())
    y, r = run_executable(executable, [feeds["x"]])
    assert y.shape == (1, 10) and r.shape == (1, 8, 8, 8)
    matmul = onnx.numpy_helper.to_array(_weight("M", (512, 10), 2))
    np.testing.assert_allclose(y, r.reshape(1, -1) @ matmul, rtol=1e-4, atol=1e-5)
    assert (r >= 0).all()


def test_host_target():
    target = host_target(3)
    assert target.kind.name == "llvm"
    assert target.attrs["num-cores"] == 3
    assert target.attrs["mcpu"] == host_target().attrs["mcpu"]
    assert host_target().attrs["num-cores"] == len(os.sched_getaffinity(0))


# Runs a parallel TIR loop after each step in argv ("env": as started, N: set_tvm_threads(N))
# whose every iteration stores the id of the OS thread that ran it (gettid), and reports
# [TVM's thread count, distinct OS threads that ran iterations], or the error. TVM hands each
# pool thread one static chunk of the loop, so the count does not depend on the machine's load.
_THREAD_PROBE = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tvm
    from tvm import te
    from ago_search.measure.threads import set_tvm_threads, tvm_num_threads

    ids = te.compute((64,), lambda i: tvm.tirx.call_extern("int32", "gettid"), name="ids")
    sch = tvm.s_tir.Schedule(te.create_prim_func([ids]))
    sch.parallel(sch.get_loops(sch.get_sblock("ids"))[0])
    f = tvm.compile(sch.mod, target="llvm")

    def threads_that_ran():
        out = tvm.runtime.tensor(np.zeros(64, "int32"))
        f(out)
        ids = out.numpy()
        assert (ids > 0).all(), ids  # every iteration ran
        return len(set(ids.tolist()))

    report = []
    for step in sys.argv[1:]:
        try:
            if step != "env":
                set_tvm_threads(int(step))
            report.append([tvm_num_threads(), threads_that_ran()])
        except RuntimeError as exc:
            report.append(str(exc))
    print(json.dumps(report))
    """
)


def _probe(env_threads: int, *steps: str) -> list:
    env = {**os.environ, **tvm_thread_env(env_threads), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", _THREAD_PROBE, *steps],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_tvm_thread_count_really_changes():
    # Counted as OS threads that ran the loop's iterations, not from timings or CPU time. A
    # fresh process gets the pool that tvm_thread_env asks for, and set_tvm_threads can
    # shrink and regrow it ...
    assert _probe(2, "env", "1", "2") == [[2, 2], [1, 1], [2, 2]]
    # ... and, called before TVM's pool exists, create it with every core whatever the env.
    assert _probe(1, "2", "1") == [[2, 2], [1, 1]]
    # A pool that exists cannot grow past its first size: an error, not a silent 1 thread.
    one, grown = _probe(1, "env", "2")
    assert one == [1, 1]
    assert "asked TVM for 2 threads, it uses 1" in grown


def test_thread_env_rejects_zero():
    with pytest.raises(ValueError):
        tvm_thread_env(0)


def test_a_builds_kernels_are_timed_inside_the_model(imported):
    """`profile_runs`: every function of a build timed where the model runs it (the VM's
    instrument hook), beside the end-to-end timing, which the hook never touches."""
    executable = build_default(imported.mod, host_target())
    timed = bench_model(
        imported,
        threads=[1],
        protocol=FAST,
        builds={"mine": executable},
        tvm_default=False,
        profile_runs=5,
    )
    mine = next(r for r in timed.runs if r.runtime == "mine")
    assert mine.verified and mine.kernels
    assert all(not name.startswith("vm.builtin") for name in mine.kernels)
    assert all(t >= 0 for t in mine.kernels.values())
    # the kernels run inside the inference: together no longer than it (with slack for noise)
    assert 0 < sum(mine.kernels.values()) < 3 * mine.timing.median
    back = BenchResult.from_json(json.loads(json.dumps(timed.to_json())))
    assert next(r for r in back.runs if r.runtime == "mine").kernels == mine.kernels
    assert all(r.kernels is None for r in timed.runs if r.runtime != "mine")


def test_kernel_times_name_every_kernel_of_a_plan(imported):
    """The VM reports a plan's kernels by the names its tasks give their call sites, which is
    how the search maps in-model times to tasks."""
    from ago_search.build import VMRunner, compile_plan
    from ago_search.pipeline import plan_model, prepare_model

    prepared = prepare_model(imported, host_target())
    planned = plan_model(prepared, "tvm")
    executable = compile_plan(prepared.legalized, planned.graph, planned.plan, prepared.target)
    feeds = random_inputs(imported.inputs, seed=0)
    times = VMRunner(executable, [feeds[s.name] for s in imported.inputs]).kernel_times(runs=3)
    names = {name for task in planned.tasks for name in task.groups}
    # a reshape-only group may become a VM builtin: every other call site is a kernel timed
    missing = {n for n in names - times.keys() if "reshape" not in n}
    assert not missing, (missing, sorted(times))
    assert all(not k.startswith("vm.builtin") for k in times)


@pytest.mark.alone  # idle runtimes must use no CPU while another is timed
def test_runtimes_take_turns_each_with_its_own_protocol(imported, monkeypatch):
    """Every runtime opened once and timed in rounds: each gets its own protocol's repeats
    (TVM's default build the shorter `default_protocol`), and none of them spun while another
    was timed (its process's CPU time did not grow during the others' turns)."""
    from ago_search import bench

    executable = build_default(imported.mod, host_target())
    short = MeasureProtocol(warmup=1, number=1, repeat=2, min_repeat_ms=0.0)
    spun: list[float] = []
    turn = bench._Contender.turn
    contenders: list = []
    opened = bench._Contender.__init__

    def remember(self, *args, **kwargs):
        opened(self, *args, **kwargs)
        contenders.append(self)

    def cpu(contender) -> float:
        return sum(psutil.Process(contender.worker.pid).cpu_times()[:2])

    def watched(self, repeats):
        others = [c for c in contenders if c is not self and c.worker.pid]
        before = [cpu(c) for c in others]
        turn(self, repeats)
        spun.extend(cpu(c) - b for c, b in zip(others, before, strict=True))

    monkeypatch.setattr(bench._Contender, "__init__", remember)
    monkeypatch.setattr(bench._Contender, "turn", watched)
    timed = bench_model(
        imported,
        threads=[2],
        protocol=FAST,
        builds={"mine": executable},
        default_protocol=short,
    )
    counts = {r.runtime: len(r.timing.samples) for r in timed.runs}
    assert counts == {ORT: FAST.repeat, TVM_DEFAULT: short.repeat, "mine": FAST.repeat}
    assert timed.verified
    assert len(spun) == (2 * FAST.repeat + short.repeat) * 2
    # CPU time is counted in clock ticks (10 ms): none while the others were timed
    assert max(spun) < 0.02, spun
