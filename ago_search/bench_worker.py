"""What the benchmark runs in its worker processes: one runtime, timed, with its outputs.

`ago_search.bench` calls these by name in an `IsolatedWorker` (one fresh process per runtime
and thread count, its thread count set in the environment before the runtime is imported).
Both time one full inference per call with inputs converted beforehand (ORT through an
IOBinding, TVM through a VM closure bound to its inputs), under the given `MeasureProtocol`,
and count the OS threads that used CPU time during the timed repeats.

TVM is imported only by `run_tvm`, so that the ONNX Runtime process never loads it (importing
TVM takes seconds and loads its own runtime libraries).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ago_search.measure.protocol import MeasureProtocol, Timing, time_callable
from ago_search.measure.threads import busy_threads, thread_cpu_seconds

__all__ = ["run_onnxruntime", "run_tvm"]


def _timed(fn: Callable[[], object], protocol: MeasureProtocol) -> tuple[Timing, int]:
    before = thread_cpu_seconds()
    timing = time_callable(fn, protocol)
    return timing, busy_threads(before, thread_cpu_seconds())


def run_onnxruntime(
    model: str,
    input_names: Sequence[str],
    inputs: Sequence[np.ndarray],
    threads: int,
    protocol: dict,
) -> dict[str, Any]:
    """ONNX Runtime (CPU provider, all graph optimisations) on `model` with `threads` intra-op
    threads, sequential: setup_s (session creation), timing, threads_used, outputs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    start = time.perf_counter()
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    setup_s = time.perf_counter() - start
    # The binding points into these arrays: they live as long as this frame does.
    feeds = {n: np.ascontiguousarray(a) for n, a in zip(input_names, inputs, strict=True)}
    outputs = session.run(None, feeds)
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_cpu_input(name, array)
    for output in session.get_outputs():
        binding.bind_output(output.name, "cpu")
    timing, busy = _timed(
        lambda: session.run_with_iobinding(binding), MeasureProtocol.from_json(protocol)
    )
    return {"setup_s": setup_s, "timing": timing, "threads_used": busy, "outputs": outputs}


def run_tvm(
    model: str,
    input_names: Sequence[str],
    inputs: Sequence[np.ndarray],
    threads: int,
    protocol: dict,
    profile_runs: int = 0,
) -> dict[str, Any]:
    """A TVM library written by `build.export_executable`, its `main` on `inputs`; raises if
    TVM's pool does not have `threads` threads (the environment sets it). Same result keys
    as `run_onnxruntime` (setup_s: load + VM), and with `profile_runs` "kernels": each
    function's time per inference inside the model (`VMRunner.kernel_times`), after the
    timing (the hook never runs while it is timed)."""
    from ago_search.build import VMRunner, load_executable
    from ago_search.measure.threads import tvm_num_threads

    start = time.perf_counter()
    runner = VMRunner(load_executable(model), inputs)
    setup_s = time.perf_counter() - start
    outputs = runner.outputs()
    timing, busy = _timed(runner, MeasureProtocol.from_json(protocol))
    # Checked only now: asking creates TVM's thread pool, whose new threads spin for about
    # 0.1 s, which would be timed along with code that never uses the pool.
    actual = tvm_num_threads()
    if actual != threads:
        raise RuntimeError(f"TVM uses {actual} threads, {threads} were asked for")
    result = {"setup_s": setup_s, "timing": timing, "threads_used": busy, "outputs": outputs}
    if profile_runs > 0:
        try:
            result["kernels"] = runner.kernel_times(profile_runs)
        except Exception as exc:  # noqa: BLE001 - an extra: the timing and outputs stand
            result["kernels_error"] = f"{type(exc).__name__}: {exc}"
    return result
