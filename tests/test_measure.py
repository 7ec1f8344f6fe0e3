"""Builders, runners and device leases: fast builds, isolated measurements that never overlap."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tvm
import tvm.s_tir.meta_schedule as ms
from tir_kernels import (
    MATMUL_ARGS,
    VECTOR_ARGS,
    N,
    matmul,
    never_ends,
    writes_far_out_of_bounds,
)
from tvm.s_tir.meta_schedule.arg_info import ArgInfo
from tvm.s_tir.meta_schedule.builder import BuilderInput
from tvm.s_tir.meta_schedule.runner import RunnerInput

from ago_search.database import Status
from ago_search.devices import DeviceProfile, detect_host, load_device
from ago_search.measure import (
    DeviceLease,
    LeaseTimeoutError,
    MeasureProtocol,
    host_cpu_lease,
    measurement_leases,
)
from ago_search.measure.builders import LocalBuilder, RayBuilder, compile_candidate
from ago_search.measure.intrinsics import register_cpu_tensor_intrinsics
from ago_search.measure.local_runner import SubprocessRunner
from ago_search.measure.runner import MIN_CPU_SHARE, Measurement
from ago_search.measure.worker import IsolatedWorker, WorkerCrashed, WorkerError, WorkerTimeout

# Short enough for tests, long enough to give real times: 3 repeats of >= 5 ms.
FAST = MeasureProtocol(warmup=1, repeat=3, min_repeat_ms=5.0)


@pytest.fixture(scope="module")
def host() -> DeviceProfile:
    return detect_host()


@pytest.fixture(scope="module")
def target(host) -> tvm.target.Target:
    target = host.tvm_target()
    register_cpu_tensor_intrinsics(target)  # 0.4 s instead of TVM's 29 s import
    return target


@pytest.fixture(scope="module")
def candidates(target) -> list[tvm.IRModule]:
    """Six scheduled variants of a matmul: MetaSchedule's design spaces, sampled again."""
    context = ms.TuneContext(
        mod=matmul(),
        target=target,
        space_generator="post-order-apply",
        search_strategy="replay-trace",
        num_threads=1,
        rand_state=7,
    )
    spaces = context.generate_design_space()
    modules = []
    for seed in range(6):
        schedule = tvm.s_tir.Schedule(matmul(), seed=seed + 1)
        spaces[seed % len(spaces)].trace.apply_to_schedule(schedule, remove_postproc=True)
        modules.append(schedule.mod)
    return modules


@pytest.fixture(scope="module")
def builder():
    builder = LocalBuilder(max_workers=2)
    yield builder
    builder.close()


@pytest.fixture(scope="module")
def runner(host):
    runner = SubprocessRunner(host, protocol=FAST, timeout_sec=20)
    yield runner
    runner.close()


@pytest.fixture(scope="module")
def kernels(tmp_path_factory, target) -> dict[str, str]:
    """Libraries of a good matmul, a kernel that segfaults, and one that never ends."""
    from ago_search.measure.builders import export_candidate

    folder = tmp_path_factory.mktemp("kernels")
    modules = {
        "good": matmul(),
        "crash": tvm.IRModule({"main": writes_far_out_of_bounds}),
        "hang": tvm.IRModule({"main": never_ends}),
    }
    return {
        name: export_candidate(compile_candidate(module, target), folder)
        for name, module in modules.items()
    }


# ---- builders -----------------------------------------------------------------------------


@pytest.mark.alone  # its time limits would count the other worker's builds and measurements
def test_local_builder_builds_candidates_quickly(builder, candidates, target):
    inputs = [BuilderInput(module, target) for module in candidates]
    started = time.perf_counter()
    first = builder.build(inputs)  # includes the workers' start-up (import tvm)
    first_round = time.perf_counter() - started
    started = time.perf_counter()
    second = builder.build(inputs)
    per_candidate = (time.perf_counter() - started) / len(inputs)
    for result in first + second:
        assert result.error_msg is None, result.error_msg
        assert Path(result.artifact_path).is_file()
    # MetaSchedule's default LocalBuilder spends ~29 s importing tensor intrinsics per round.
    assert first_round < 25.0
    assert per_candidate < 2.0
    library = tvm.runtime.load_module(second[0].artifact_path)
    a, b = (np.random.rand(N, N).astype("float32") for _ in range(2))
    c = tvm.runtime.empty((N, N), "float32", tvm.cpu())
    library[library.entry_name](tvm.runtime.tensor(a), tvm.runtime.tensor(b), c)
    np.testing.assert_allclose(c.numpy(), a @ b, rtol=1e-4, atol=1e-4)


def test_builder_failures_are_results(target):
    builder = LocalBuilder(max_workers=1, cross_compiler="g++")  # the path for cross compilers
    try:
        inputs = [BuilderInput(matmul(), target)]
        built = builder.build(inputs)[0]
        assert built.error_msg is None and builder.status_of(built) is None
        builder.cross_compiler = "no-such-compiler-g++"
        failed = builder.build(inputs)[0]
        assert failed.artifact_path is None
        assert "build failed" in failed.error_msg and "no-such-compiler-g++" in failed.error_msg
        assert builder.status_of(failed) is Status.BUILD_ERROR  # the builder's word, as data
        builder.cross_compiler = None
        builder.timeout_sec = 0.005
        timed_out = builder.build(inputs)[0]
        assert timed_out.artifact_path is None and "timeout" in timed_out.error_msg
        assert builder.status_of(timed_out) is Status.TIMEOUT
    finally:
        builder.close()


@pytest.mark.skipif(
    shutil.which("aarch64-linux-gnu-g++") is None, reason="no aarch64 cross compiler installed"
)
def test_cross_compiled_library_is_aarch64(tmp_path):
    phone = load_device("pixel7")
    builder = LocalBuilder.for_device(phone, max_workers=1, artifact_dir=tmp_path)
    try:
        result = builder.build([BuilderInput(matmul(), phone.tvm_target())])[0]
    finally:
        builder.close()
    assert result.error_msg is None, result.error_msg
    header = Path(result.artifact_path).read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183


@pytest.mark.slow
def test_ray_builder_builds_on_ray_workers(candidates, target, runner, tmp_path):
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        builder = RayBuilder(timeout_sec=120)
        results = builder.build([BuilderInput(module, target) for module in candidates])
        assert [r.error_msg for r in results] == [None] * len(candidates)
        paths = {r.artifact_path for r in results}
        assert len(paths) == len(candidates) and all(Path(p).is_file() for p in paths)
        measured = runner.measure(results[0].artifact_path, MATMUL_ARGS)
        assert measured.ok, measured.error
        # the whole loop: candidates built on Ray workers, measured one at a time
        records = _tune(matmul(), target, tmp_path, builder, runner)
        assert len(records) == 8 and all(r.run_secs for r in records)
    finally:
        ray.shutdown()


# ---- runners ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.alone  # a hang is caught in < 10 s, a wait for the lease included
def test_runner_survives_crash_and_hang(runner, kernels):
    good = runner.measure(kernels["good"], MATMUL_ARGS)
    assert good.ok, good.error
    assert len(good.run_secs) == FAST.repeat
    assert all(0 < t < 0.1 for t in good.run_secs)

    crashed = runner.measure(kernels["crash"], VECTOR_ARGS)
    assert not crashed.ok and crashed.run_secs is None and crashed.status is Status.RUN_ERROR
    # a write far out of bounds faults (SIGSEGV, SIGBUS) or corrupts the heap, which glibc
    # then stops with SIGABRT ("malloc_consolidate(): unaligned fastbin chunk detected")
    assert any(f"killed by {sig}" in crashed.error for sig in ("SIGSEGV", "SIGBUS", "SIGABRT"))

    again = runner.measure(kernels["good"], MATMUL_ARGS)
    assert again.ok, again.error

    runner.timeout_sec = 2.0
    try:
        started = time.perf_counter()
        hung = runner.measure(kernels["hang"], VECTOR_ARGS)
        assert time.perf_counter() - started < 10.0
    finally:
        runner.timeout_sec = 20.0
    assert not hung.ok and hung.status is Status.TIMEOUT and "timeout" in hung.error
    assert runner.measure(kernels["good"], MATMUL_ARGS).ok


LEAK_SCRIPT = textwrap.dedent(
    """
    import os, time, numpy as np, tvm
    from tvm.script import tirx as T
    from ago_search.measure.runner import _run_on_dirty_memory

    @T.prim_func
    def add(a: T.handle, b: T.handle):
        T.func_attr({"global_symbol": "main"})
        A = T.match_buffer(a, (1 << 20,), "float32")
        B = T.match_buffer(b, (1 << 20,), "float32")
        for i in T.parallel(1 << 20):
            B[i] = A[i] + T.float32(1)

    f = tvm.tirx.build(tvm.IRModule({"main": add}), target="llvm")
    dev = tvm.cpu()
    a = tvm.runtime.tensor(np.zeros(1 << 20, "float32"), dev)
    b = tvm.runtime.empty((1 << 20,), "float32", dev)
    before = len(os.listdir("/proc/self/task"))
    for _ in range(10):
        _run_on_dirty_memory(f, [a, b], dev)
    # Python's join returns just before the OS thread is gone: give the last check's
    # thread a moment to leave /proc (leaked pool threads would stay for good)
    deadline = time.monotonic() + 5
    while len(os.listdir("/proc/self/task")) > before and time.monotonic() < deadline:
        time.sleep(0.05)
    after = len(os.listdir("/proc/self/task"))
    f(a, b)
    pool = int(tvm.get_global_func("runtime.NumThreads")())
    print(before, after, pool, bool((b.numpy() == 1).all()))
    """
)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_checked_runs_leave_no_threads_behind(tmp_path):
    """A checked run of a parallel kernel in a new thread used to leave TVM pool threads
    spinning for good (one pool per calling thread, never torn down): ten checks, ten more
    threads, each taking CPU from every later timing. Now none is left, and the process's
    own pool still gets its configured size."""
    env = {**os.environ, "TVM_NUM_THREADS": "2", "TVM_BIND_THREADS": "0"}
    script = tmp_path / "checks.py"  # TVMScript reads the function's source from its file
    script.write_text(LEAK_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    before, after, pool, right = done.stdout.split()[-4:]
    assert int(after) == int(before), (before, after)
    assert int(pool) == 2 and right == "True"


@pytest.mark.alone  # it loads every core on purpose
def test_runner_repeats_timings_other_processes_disturb(host, kernels):
    """With twice as many busy processes as cores, the worker has its core well under
    MIN_CPU_SHARE of the time: the runner sees it, times again, and says it stayed disturbed."""
    runner = SubprocessRunner(host, protocol=FAST, timeout_sec=20, contention_retries=1)
    try:
        quiet = runner.measure(kernels["good"], MATMUL_ARGS)  # also starts the worker
        assert quiet.ok and quiet.cpu_share is not None and 0 < quiet.cpu_share <= 1
        hogs = [
            subprocess.Popen([sys.executable, "-c", "while True: pass"])
            for _ in range(2 * len(os.sched_getaffinity(0)))
        ]
        try:
            time.sleep(0.5)
            busy = runner.measure(kernels["good"], MATMUL_ARGS)
        finally:
            for hog in hogs:
                hog.kill()
                hog.wait()
    finally:
        runner.close()
    assert busy.ok, busy.error
    # the first timing was disturbed, so it timed again; the retry is disturbed too as a
    # rule (then counted), but the kernel's scheduler may give the worker its core back
    assert busy.attempts == 2
    assert runner.disturbed in (0, 1)
    if runner.disturbed:
        assert busy.cpu_share < MIN_CPU_SHARE


class MatmulCheck:
    """Fixed inputs for the matmul, and the reference product to compare with."""

    def __init__(self, wrong: bool = False):
        rng = np.random.default_rng(0)
        self.a, self.b = (rng.standard_normal((N, N)).astype("float32") for _ in range(2))
        self.wrong = wrong

    def inputs_for(self, runner_input):
        return [self.a, self.b, None]

    def check(self, runner_input, outputs):
        expected = self.a @ self.b + (1.0 if self.wrong else 0.0)
        error = float(np.abs(outputs[2] - expected).max())
        return None if error < 1e-3 else f"max abs error {error:.3g}"


def test_runner_output_hook(runner, kernels):
    info = ArgInfo.from_prim_func(matmul()["main"])
    runner_input = RunnerInput(kernels["good"], "llvm", info)
    check = MatmulCheck()
    measured = runner.measure(
        kernels["good"], MATMUL_ARGS, inputs=[check.a, check.b, None], return_outputs=True
    )
    assert measured.ok
    np.testing.assert_allclose(measured.outputs[2], check.a @ check.b, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(measured.outputs[0], check.a)
    try:
        runner.output_hook = MatmulCheck()
        (future,) = runner.run([runner_input])
        assert future.result().error_msg is None and len(future.result().run_secs) == FAST.repeat
        runner.output_hook = MatmulCheck(wrong=True)
        (future,) = runner.run([runner_input])
        assert future.result().run_secs is None
        assert future.result().error_msg.startswith("wrong result: max abs error")
        assert runner.status_of(future.result()) is Status.WRONG_RESULT
    finally:
        runner.output_hook = None


def _disjoint(spans: list[tuple[float, float]]) -> bool:
    ordered = sorted(spans)
    return all(end <= next_start for (_, end), (next_start, _) in itertools.pairwise(ordered))


@pytest.mark.slow
def test_measurements_of_two_runners_never_overlap(runner, host, kernels, builder, target):
    other = SubprocessRunner(host, protocol=FAST, timeout_sec=20)
    other.worker.ready()
    results: list[Measurement] = []

    def measure_three(which):
        for _ in range(3):
            results.append(which.measure(kernels["good"], MATMUL_ARGS))

    threads = [threading.Thread(target=measure_three, args=(r,)) for r in (runner, other)]
    builds = threading.Thread(target=builder.build, args=([BuilderInput(matmul(), target)] * 4,))
    try:
        for thread in [*threads, builds]:
            thread.start()
        for thread in [*threads, builds]:
            thread.join(timeout=120)
    finally:
        other.close()
    assert len(results) == 6 and all(m.ok for m in results)
    assert _disjoint([(m.started_at, m.ended_at) for m in results])


def _tune(module, target, work_dir, builder, runner) -> list:
    """8 trials of MetaSchedule with our builder and runner; the tuning records."""
    strategy = ms.search_strategy.EvolutionarySearch(
        population_size=16, init_measured_ratio=0.0, genetic_num_iters=1
    )
    database = ms.tune_tir(
        module,
        target,
        str(work_dir),
        max_trials_global=8,
        num_trials_per_iter=4,
        builder=builder,
        runner=runner,
        strategy=strategy,
        num_tuning_cores=1,
        seed=0,
    )
    return list(database.get_all_tuning_records())


@pytest.mark.slow
def test_tune_tir_end_to_end(builder, runner, target, tmp_path):
    records = _tune(matmul(128), target, tmp_path, builder, runner)
    assert len(records) == 8
    times = [float(np.median([float(t) for t in r.run_secs])) for r in records if r.run_secs]
    assert len(times) == 8
    assert all(0 < t < 0.5 for t in times)  # real times, not MetaSchedule's 1e10 for failures


# ---- the isolated worker ------------------------------------------------------------------


def test_worker_reports_errors_crashes_and_timeouts():
    worker = IsolatedWorker(preload=(), name="test-worker")
    try:
        pid = worker.call("os:getpid")
        assert pid == worker.pid != os.getpid()
        with pytest.raises(WorkerError, match="math domain error"):
            worker.call("math:sqrt", -1.0)
        assert worker.call("os:getpid") == pid  # an exception keeps the worker
        with pytest.raises(WorkerCrashed, match="SIGABRT"):
            worker.call("os:abort")
        with pytest.raises(WorkerTimeout):
            worker.call("time:sleep", 10, timeout=0.2)
        assert worker.call("math:sqrt", 4.0) == 2.0
    finally:
        worker.close()


def test_fresh_worker_per_call():
    worker = IsolatedWorker(preload=(), max_uses=1, name="test-fresh")
    try:
        assert worker.call("os:getpid") != worker.call("os:getpid")
    finally:
        worker.close()


# ---- leases -------------------------------------------------------------------------------

_HOLDER = textwrap.dedent(
    """
    import json, sys, time
    from ago_search.measure.lease import DeviceLease
    lease = DeviceLease("dev", sys.argv[1])
    mode, count, hold = sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    for _ in range(count):
        with (lease.exclusive() if mode == "exclusive" else lease.shared()):
            start = time.time()
            time.sleep(hold)
            print(json.dumps([mode, start, time.time()]), flush=True)
    """
)


def _holder(lock_dir: Path, mode: str, count: int, hold: float) -> subprocess.Popen:
    command = [sys.executable, "-c", _HOLDER, str(lock_dir), mode, str(count), str(hold)]
    return subprocess.Popen(command, stdout=subprocess.PIPE, text=True)


def test_lease_exclusive_spans_never_overlap_across_processes_and_threads(tmp_path):
    processes = [_holder(tmp_path, "exclusive", 4, 0.02) for _ in range(3)]
    processes += [_holder(tmp_path, "shared", 4, 0.03) for _ in range(2)]
    spans: list[tuple[str, float, float]] = []
    lease = DeviceLease("dev", tmp_path)

    def hold_in_thread():
        for _ in range(4):
            with lease.exclusive():
                start = time.time()
                time.sleep(0.02)
                spans.append(("exclusive", start, time.time()))

    threads = [threading.Thread(target=hold_in_thread) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for process in processes:
        out, _ = process.communicate(timeout=60)
        spans += [tuple(json.loads(line)) for line in out.splitlines()]
    exclusive = [(s, e) for mode, s, e in spans if mode == "exclusive"]
    shared = [(s, e) for mode, s, e in spans if mode == "shared"]
    assert len(exclusive) == 5 * 4 and len(shared) == 2 * 4
    assert _disjoint(exclusive)
    for start, end in exclusive:
        assert all(end <= s or e <= start for s, e in shared)


def test_shared_holders_run_together(tmp_path):
    lease = DeviceLease("dev", tmp_path)
    # the two builds and this thread meet while both builds hold the lease: if a sharer
    # excluded the other, the second would time out and the meeting would never happen
    inside = threading.Barrier(3, timeout=30)
    done = threading.Event()
    errors: list[BaseException] = []

    def build():
        try:
            with lease.shared(timeout=10):
                inside.wait()
                done.wait(timeout=30)
        except BaseException as exc:
            errors.append(exc)
            inside.abort()

    builds = [threading.Thread(target=build) for _ in range(2)]
    for thread in builds:
        thread.start()
    try:
        inside.wait()
        # they really hold it: a measurement is not granted meanwhile
        with pytest.raises(LeaseTimeoutError), lease.exclusive(timeout=0.2):
            pass
    finally:
        done.set()
        for thread in builds:
            thread.join(timeout=30)
    assert errors == []
    with lease.exclusive(timeout=10):
        pass  # and is, once both builds have left


def test_waiting_measurement_blocks_new_builds(tmp_path):
    lease = DeviceLease("dev", tmp_path)
    granted = threading.Event()

    def measure():
        with lease.exclusive():
            granted.set()

    with lease.shared():
        waiting = threading.Thread(target=measure)
        waiting.start()
        time.sleep(0.2)
        assert not granted.is_set()
        with pytest.raises(LeaseTimeoutError), lease.shared(timeout=0.2):
            pass  # a new build queues behind the waiting measurement
    waiting.join(timeout=10)
    assert granted.is_set()


def test_lease_of_a_killed_holder_is_released(tmp_path):
    holder = _holder(tmp_path, "exclusive", 1, 60.0)
    lease = DeviceLease("dev", tmp_path)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # until the holder has it
            try:
                with lease.exclusive(timeout=0.05):
                    pass
            except LeaseTimeoutError:
                break
            time.sleep(0.05)
        with pytest.raises(LeaseTimeoutError), lease.exclusive(timeout=0.2):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=10)
    with lease.exclusive(timeout=5.0):
        pass


def test_which_leases_a_measurement_holds(tmp_path):
    host = detect_host()
    assert measurement_leases(host, tmp_path) == (host_cpu_lease(tmp_path),)
    phone = load_device("pixel7")
    (own,) = measurement_leases(phone, tmp_path)
    assert own.name == "rpc-pixel7"
    with pytest.raises(ValueError):
        DeviceLease("bad name/../x", tmp_path)
