"""Tuning through a TVM RPC tracker and servers on 127.0.0.1, as a phone would be reached."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest
import tvm
import tvm.s_tir.meta_schedule as ms
from tir_kernels import MATMUL_ARGS, N, matmul, writes_far_out_of_bounds

from ago_search.devices import DeviceProfile, RPCConnection, detect_host
from ago_search.measure import MeasureProtocol
from ago_search.measure.builders import LocalBuilder, compile_candidate, export_candidate
from ago_search.measure.intrinsics import register_cpu_tensor_intrinsics
from ago_search.measure.rpc_runner import DeviceUnavailableError, RPCRunner
from ago_search.measure.threads import tvm_thread_env

FAST = MeasureProtocol(warmup=1, repeat=3, min_repeat_ms=5.0)
STOCK_KEY = "test"  # TVM's own rpc_server
ROBUST_KEY = "robust"  # ago_search.measure.rpc_server, which survives crashed sessions
PAIR_KEY = "pair"  # two of ours under one key: two identical phones


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listed_keys(tracker_port: int) -> str:
    query = [sys.executable, "-m", "tvm.exec.query_rpc_tracker"]
    query += ["--host", "127.0.0.1", "--port", str(tracker_port)]
    done = subprocess.run(query, capture_output=True, text=True, timeout=60)
    return done.stdout if done.returncode == 0 else ""


@contextlib.contextmanager
def _processes(commands: list[list[str]], env: dict[str, str]) -> Iterator[None]:
    started = []
    try:
        for command in commands:
            started.append(
                subprocess.Popen(
                    command,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,  # a process group: TVM's server forks workers
                )
            )
        yield
    finally:
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def tracker_port() -> Iterator[int]:
    """A tracker with TVM's server under STOCK_KEY and ours under ROBUST_KEY, all local."""
    port = _free_port()
    py = sys.executable
    tracker = [py, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1"]
    tracker += ["--port", str(port), "--port-end", str(port + 1), "--silent"]
    servers = []
    ours = "ago_search.measure.rpc_server"
    kinds = [("tvm.exec.rpc_server", STOCK_KEY), (ours, ROBUST_KEY), (ours, PAIR_KEY)]
    kinds.append((ours, PAIR_KEY))
    for module, key in kinds:
        server_port = _free_port()
        servers.append(
            [py, "-m", module, "--host", "127.0.0.1", "--port", str(server_port)]
            + ["--port-end", str(server_port + 1), "--tracker", f"127.0.0.1:{port}"]
            + ["--key", key, "--silent"]
        )
    env = {**os.environ, **tvm_thread_env(detect_host().threads)}
    with _processes([tracker, *servers], env):
        deadline = time.monotonic() + 120
        listed = ""
        while time.monotonic() < deadline:
            listed = _listed_keys(port)
            if (
                f"server:{STOCK_KEY}" in listed
                and f"server:{ROBUST_KEY}" in listed
                and listed.count(f"server:{PAIR_KEY}") == 2
            ):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"RPC servers not listed by the tracker in time:\n{listed}")
        yield port


def _device(tracker_port: int, key: str) -> DeviceProfile:
    host = detect_host()
    return DeviceProfile(
        name=f"local-rpc-{key}",
        key=f"local-rpc-{key}",
        target=host.target,
        threads=host.threads,
        connection=RPCConnection(
            "127.0.0.1", tracker_port, key, session_timeout=60, shares_host_cpu=True
        ),
    )


@pytest.mark.slow
def test_tune_through_rpc_tracker(tracker_port, tmp_path):
    device = _device(tracker_port, STOCK_KEY)
    target = device.tvm_target()
    register_cpu_tensor_intrinsics(target)
    builder = LocalBuilder.for_device(device, max_workers=2)
    runner = RPCRunner(device, protocol=FAST, timeout_sec=20)
    strategy = ms.search_strategy.EvolutionarySearch(
        population_size=16, init_measured_ratio=0.0, genetic_num_iters=1
    )
    try:
        database = ms.tune_tir(
            matmul(128),
            target,
            str(tmp_path),
            max_trials_global=8,
            num_trials_per_iter=4,
            builder=builder,
            runner=runner,
            strategy=strategy,
            num_tuning_cores=1,
            seed=0,
        )
    finally:
        builder.close()
        runner.close()
    records = database.get_all_tuning_records()
    assert len(records) == 8
    times = [float(np.median([float(t) for t in r.run_secs])) for r in records if r.run_secs]
    assert len(times) == 8
    assert all(0 < t < 0.5 for t in times)  # real times, not MetaSchedule's 1e10 for failures


@pytest.mark.slow
def test_rpc_outputs_and_a_crash_costs_one_result(tracker_port, tmp_path):
    device = _device(tracker_port, ROBUST_KEY)
    target = device.tvm_target()
    good = export_candidate(compile_candidate(matmul(), target), tmp_path)
    crash = export_candidate(
        compile_candidate(tvm.IRModule({"main": writes_far_out_of_bounds}), target), tmp_path
    )
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((N, N)).astype("float32") for _ in range(2))
    runner = RPCRunner(device, protocol=FAST, timeout_sec=20)
    try:
        first = runner.measure(good, MATMUL_ARGS, inputs=[a, b, None], return_outputs=True)
        assert first.ok, first.error
        np.testing.assert_allclose(first.outputs[2], a @ b, rtol=1e-4, atol=1e-4)
        assert runner.measure(good, MATMUL_ARGS).ok  # in the kept session

        crashed = runner.measure(crash, [["TENSOR", "float32", [16]]])
        assert not crashed.ok and crashed.run_secs is None

        after = runner.measure(good, MATMUL_ARGS)  # a new session; the server lives on
        assert after.ok, after.error
        assert all(0 < t < 0.1 for t in after.run_secs)
    finally:
        runner.close()


@pytest.mark.slow
def test_a_round_is_measured_on_every_device_under_the_key(tracker_port, tmp_path):
    device = _device(tracker_port, PAIR_KEY)
    artifact = export_candidate(compile_candidate(matmul(), device.tvm_target()), tmp_path)
    runner = RPCRunner(device, protocol=FAST, timeout_sec=20)
    try:
        assert runner.devices == 2  # what the tracker lists under the key
        args = [ms.arg_info.ArgInfo.from_json(arg) for arg in MATMUL_ARGS]
        inputs = [ms.runner.RunnerInput(artifact, "cpu", args) for _ in range(6)]
        results = [future.result() for future in runner.run(inputs)]
        assert len(results) == 6
        assert all(r.error_msg is None and len(r.run_secs) == 3 for r in results)
        # each device's client worker (and session) took a share of the round
        assert all(worker.pid is not None for worker, _ in runner._slots)
    finally:
        runner.close()
    assert RPCRunner(device, devices=1).devices == 1


@pytest.mark.slow
def test_missing_device_raises_instead_of_recording(tracker_port, tmp_path):
    device = _device(tracker_port, "nobody")
    artifact = export_candidate(compile_candidate(matmul(), device.tvm_target()), tmp_path)
    runner = RPCRunner(device, protocol=FAST, timeout_sec=10, connect_timeout=2.0)
    try:
        with pytest.raises(DeviceUnavailableError, match="nobody"):
            runner.measure(artifact, MATMUL_ARGS)
    finally:
        runner.close()


def _listening_on(command: list[str]) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket listening in a process started with `command`."""
    import psutil

    found = set()
    for process in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if process.cmdline()[1:] == command[1:]:
                for conn in process.net_connections(kind="tcp"):
                    if conn.status == psutil.CONN_LISTEN:
                        found.add((conn.laddr.ip, conn.laddr.port))
    return found


def test_rpc_server_listens_on_loopback_by_default():
    from ago_search.measure import rpc_server

    assert rpc_server._parser().parse_args([]).host == "127.0.0.1"
    port = _free_port()
    command = [sys.executable, "-m", "ago_search.measure.rpc_server", "--port", str(port)]
    command += ["--port-end", str(port + 1), "--silent"]
    with _processes([command], dict(os.environ)):
        deadline = time.monotonic() + 120
        listening: set[tuple[str, int]] = set()
        while time.monotonic() < deadline and not listening:
            time.sleep(0.5)
            listening = _listening_on(command)
    assert listening == {("127.0.0.1", port)}


def test_rpc_server_warns_when_listening_beyond_loopback(monkeypatch, caplog):
    from tvm.rpc import server

    from ago_search.measure import rpc_server

    class _Done:
        thread = type("T", (), {"join": staticmethod(lambda: None)})

    monkeypatch.setattr(server, "_popen_start_rpc_server", lambda *a, **k: 9091)
    monkeypatch.setattr(server.PopenRPCServerState, "current", _Done, raising=False)
    monkeypatch.setattr(server, "_serving", server._serving)  # the wrapper is undone after
    with caplog.at_level("WARNING", logger=rpc_server.__name__):
        rpc_server.serve("127.0.0.1", 9091, 9092, None, "")
        assert not caplog.records
        rpc_server.serve("0.0.0.0", 9091, 9092, None, "")
    assert "0.0.0.0:9091" in caplog.text and "upload and run native code" in caplog.text
    assert rpc_server.is_loopback("localhost") and rpc_server.is_loopback("::1")
    assert not rpc_server.is_loopback("192.168.1.2")
