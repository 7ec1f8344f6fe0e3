"""What the benchmark runs in its worker processes: one runtime, opened once, timed in blocks.

`ago_search.bench` keeps one process per runtime (its thread count set in the environment
before the runtime is imported) and calls these by name: `open_onnxruntime` / `open_tvm` load
the model, run it once for its outputs, warm it up and calibrate `number` (calls per repeat)
under the given `MeasureProtocol`, and keep it in this process (`_OPEN`); `time_block` then
times some repeats of it, whenever the benchmark's turn comes round to this runtime (the
runtimes take turns, see `ago_search.bench`), and `profile_open` times each function of a TVM
build inside the model. Both runtimes time one full inference per call with inputs converted
beforehand (ORT through an IOBinding, TVM through a VM closure bound to its inputs), and count
the OS threads that used CPU time during the timed repeats.

TVM is imported only by `open_tvm`, so that the ONNX Runtime process never loads it (importing
TVM takes seconds and loads its own runtime libraries).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ago_search.measure.protocol import MeasureProtocol, calibrate_number, time_callable
from ago_search.measure.threads import busy_threads, thread_cpu_seconds

__all__ = ["open_onnxruntime", "open_tvm", "profile_open", "time_block"]

# The runtime this process opened: the call to time, the protocol, `number`, and what must
# stay alive for it (the session and its bound arrays, the VM).
_OPEN: dict[str, Any] = {}


def _open(
    fn: Callable[[], object], protocol: dict, setup_s: float, outputs: list, keep: Any
) -> dict[str, Any]:
    the_protocol = MeasureProtocol.from_json(protocol)
    for _ in range(the_protocol.warmup):
        fn()
    number = the_protocol.number or calibrate_number(fn, the_protocol.min_repeat_ms)
    _OPEN.clear()
    _OPEN.update(fn=fn, protocol=the_protocol, number=number, keep=keep)
    return {"setup_s": setup_s, "outputs": outputs, "number": number}


def time_block(repeats: int, warmup: int = 1) -> dict[str, Any]:
    """`repeats` repeats of the opened runtime (its protocol's `number` calls each) after
    `warmup` untimed calls (the runtime before this one's turn had the caches): the seconds per
    call of each repeat, and the OS threads that used CPU time meanwhile."""
    if not _OPEN:
        raise RuntimeError("time_block before open_onnxruntime/open_tvm")
    protocol = replace(_OPEN["protocol"], warmup=warmup, number=_OPEN["number"], repeat=repeats)
    before = thread_cpu_seconds()
    timing = time_callable(_OPEN["fn"], protocol)
    return {
        "samples": list(timing.samples),
        "threads_used": busy_threads(before, thread_cpu_seconds()),
    }


def profile_open(runs: int) -> dict[str, float]:
    """Each function of the opened TVM build, its seconds per inference inside the model."""
    return _OPEN["keep"].kernel_times(runs)


def open_onnxruntime(
    model: str,
    input_names: Sequence[str],
    inputs: Sequence[np.ndarray],
    threads: int,
    protocol: dict,
) -> dict[str, Any]:
    """ONNX Runtime (CPU provider, all graph optimisations) on `model` with `threads` intra-op
    threads, sequential: setup_s (session creation), outputs, number."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    start = time.perf_counter()
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    setup_s = time.perf_counter() - start
    # The binding points into these arrays: they stay alive with the session (`_OPEN`).
    feeds = {n: np.ascontiguousarray(a) for n, a in zip(input_names, inputs, strict=True)}
    outputs = session.run(None, feeds)
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_cpu_input(name, array)
    for output in session.get_outputs():
        binding.bind_output(output.name, "cpu")
    return _open(
        lambda: session.run_with_iobinding(binding),
        protocol,
        setup_s,
        outputs,
        (session, binding, feeds),
    )


def open_tvm(
    model: str,
    input_names: Sequence[str],
    inputs: Sequence[np.ndarray],
    threads: int,
    protocol: dict,
) -> dict[str, Any]:
    """A TVM library written by `build.export_executable`, its `main` on `inputs`; raises if
    TVM's pool does not have `threads` threads (the environment sets it). Same result keys
    as `open_onnxruntime` (setup_s: load + VM)."""
    from ago_search.build import VMRunner, load_executable
    from ago_search.measure.threads import tvm_num_threads

    start = time.perf_counter()
    runner = VMRunner(load_executable(model), inputs)
    setup_s = time.perf_counter() - start
    outputs = runner.outputs()
    result = _open(runner, protocol, setup_s, outputs, runner)
    # Checked only after the warm-up: asking creates TVM's thread pool, whose new threads spin
    # for about 0.1 s, which would be timed along with code that never uses the pool.
    actual = tvm_num_threads()
    if actual != threads:
        raise RuntimeError(f"TVM uses {actual} threads, {threads} were asked for")
    return result
