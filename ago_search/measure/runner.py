"""Runners: what the local and the RPC runner share (after MetaSchedule's `runner/runner.py`).

Both runners (`local_runner.SubprocessRunner`, `rpc_runner.RPCRunner`) are MetaSchedule
`PyRunner`s (RunnerInput -> RunnerFuture of RunnerResult), so `ms.tune_tir(..., runner=...)`
and our own search use them alike. They time with the project's protocol
(`protocol.time_evaluator_kwargs`), and run every measurement in an `IsolatedWorker`
subprocess with a time-out: a kernel that crashes or hangs costs one error result, never the
tuning process. `IsolatedRunner` is that common part; this module also holds what runs in
the worker once a library is loaded (`time_module`).

Each measurement holds the device's leases exclusively (`lease.measurement_leases`): no other
measurement on the device, and for the host's cores no build either. The runners measure
synchronously, like MetaSchedule's LocalRunner: `run` returns finished futures, so the
tuning process does no search work while its candidates are timed.

Outputs: an `OutputHook` can give fixed inputs for a candidate; the runner then runs it once
on them first and hands all its arguments afterwards (inputs and outputs, numpy) to the
hook's `check`, whose complaint makes the candidate a failure with status `wrong_result`,
so MetaSchedule never picks it. `measure()` returns them directly to a caller that compares
later.

Statuses. A `Measurement` says why it failed (`status`: timeout, run_error, wrong_result)
beside its error text. MetaSchedule's `RunnerResult` has no room for it, so the runner keeps
the status of each failed result it hands out (`status.ResultStatuses`), and a measure
callback asks `runner.status_of(result)`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.runner import (
    PyRunner,
    PyRunnerFuture,
    RunnerFuture,
    RunnerInput,
    RunnerResult,
)

from ago_search.database.records import Status
from ago_search.measure.lease import DeviceLease, holding_all, host_cpu_lease, measurement_leases
from ago_search.measure.protocol import MeasureProtocol, time_evaluator_kwargs
from ago_search.measure.status import ResultStatuses
from ago_search.measure.threads import thread_cpu_seconds
from ago_search.measure.worker import IsolatedWorker, WorkerCrashed, WorkerError, WorkerTimeout

if TYPE_CHECKING:
    from ago_search.devices import DeviceProfile

__all__ = [
    "CONTENTION_RETRIES",
    "DEFAULT_RUN_TIMEOUT",
    "MIN_CPU_SHARE",
    "TUNING_PROTOCOL",
    "ArgsInfo",
    "IsolatedRunner",
    "Measurement",
    "OutputHook",
    "cpu_share",
    "time_module",
]

log = logging.getLogger(__name__)

# Candidates in a search are compared, not reported: a shorter protocol than a final
# benchmark's, still long enough (20 ms a repeat) to rise above the clock and call overhead.
TUNING_PROTOCOL = MeasureProtocol(warmup=1, number=None, repeat=5, min_repeat_ms=20.0)

# A timing during which the measuring process had its core less than this share of the time
# is repeated (up to CONTENTION_RETRIES times, pausing 0.25, 0.5, 1 s first). Undisturbed it
# is 0.98-1.0 here; beside one busy process 0.5-0.8, and the latencies of parallel kernels
# came out 1.1-3x too long; beside two, 0.02-0.06 and 20-40x.
MIN_CPU_SHARE = 0.9
CONTENTION_RETRIES = 3
_CONTENTION_PAUSE_S = 0.25

# Seconds one measurement may take, loading and allocation included.
DEFAULT_RUN_TIMEOUT = 30.0

ArgsInfo = Sequence[Sequence[Any]]  # ArgInfo.as_json(): ["TENSOR", dtype, shape]


@dataclass(frozen=True)
class Measurement:
    """One candidate's measurement: per-repeat seconds, or why there are none.

    status: OK, or why it failed (timeout, run_error, wrong_result); error: the failure's
    text for a person to read (None when OK).
    outputs: every argument of the kernel after one run on the fixed inputs (when asked for).
    wall_secs: wall time of the whole call (loading, allocation, timing; a worker's start-up
    excluded), to see the overhead per candidate. started_at/ended_at: the span of the call,
    in epoch seconds, inside the device's leases: the spans of one device never overlap.
    cpu_share: the share of the timing the measuring process had its core (`cpu_share`;
    None where not known, e.g. over RPC); attempts: timings made, more than one when the
    first ones were disturbed by other processes (the kept one is the fastest).
    """

    run_secs: tuple[float, ...] | None
    error: str | None = None
    outputs: tuple[np.ndarray, ...] | None = None
    wall_secs: float = 0.0
    started_at: float = 0.0
    ended_at: float = 0.0
    cpu_share: float | None = None
    attempts: int = 1
    status: Status = Status.OK

    def __post_init__(self) -> None:
        if (self.status is Status.OK) != (self.error is None):
            raise ValueError(f"a measurement with status {self.status} and error {self.error!r}")

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    @property
    def median(self) -> float | None:
        return float(np.median(self.run_secs)) if self.run_secs else None

    def to_runner_result(self) -> RunnerResult:
        if self.error is not None:
            return RunnerResult(None, self.error)
        return RunnerResult(list(self.run_secs or ()), None)


class OutputHook(Protocol):
    """Fixed inputs for a candidate, and a check of what it computed from them."""

    def inputs_for(self, runner_input: RunnerInput) -> Sequence[np.ndarray | None] | None:
        """One array (or None: random) per kernel argument, or None for no check."""
        ...

    def check(self, runner_input: RunnerInput, outputs: Sequence[np.ndarray]) -> str | None:
        """None if the arguments after one run are right, else what is wrong."""
        ...


# ---- what runs inside the worker subprocess ---------------------------------------------


def _allocate(
    args_info: ArgsInfo,
    device: Any,
    random_fill: Any,
    inputs: Sequence[np.ndarray | None] | None,
) -> list[Any]:
    import tvm

    if inputs is not None and len(inputs) != len(args_info):
        raise ValueError(f"{len(inputs)} fixed inputs for {len(args_info)} arguments")
    args = []
    for index, info in enumerate(args_info):
        kind, dtype, shape = info
        if kind != "TENSOR":
            raise NotImplementedError(f"argument {index} of kind {kind!r}")
        given = inputs[index] if inputs is not None else None
        if given is not None:
            given = np.ascontiguousarray(given, dtype=dtype)
            if tuple(given.shape) != tuple(shape):
                raise ValueError(f"input {index} has shape {given.shape}, expected {shape}")
            array = tvm.runtime.empty(tuple(shape), dtype, device)
            array.copyfrom(given)
        else:
            array = tvm.runtime.empty(tuple(shape), dtype, device)
            random_fill(array)
        args.append(array)
    return args


_M_PERTURB = -6  # glibc mallopt: fill new allocations with ~byte, freed memory with byte
_PERTURB_BYTE = 0x80  # new memory reads as 0x7f7f7f7f: 3.4e38 as float32


def _run_on_dirty_memory(function: Any, args: Sequence[Any], device: Any) -> None:
    """One call whose intermediate buffers hold garbage instead of zeros or old values.

    A schedule that reads an element it never wrote (TVM_NOTES.md: a padding block computed
    inside another block's tiles leaves its border unwritten) is right by luck on memory
    that happens to hold zeros (fresh pages) or a previous candidate's values (TVM's
    workspace pool keeps freed buffers, per thread). So the call runs in a new thread (a new,
    empty workspace pool: every buffer a new allocation) with glibc's malloc perturbation on
    (new allocations filled with a byte pattern). Where glibc's mallopt is missing, it is a
    plain call in a new thread.

    The new thread runs the kernel's parallel loops itself, serially (TVM_NUM_THREADS=1
    while its thread pool is created), so buffers allocated inside parallel loops are new
    and poisoned too. It must: TVM's thread pool is per calling thread, and the pool of a
    thread that has ended is never torn down. Its worker threads went on spinning for
    good, in state R: a kept measurement worker had 60 of them after 150 checks, and every
    later timing shared the cores with them (latencies up to 2x and more, measured
    2026-11-21; the traces collected before carry that noise, `ago-search remeasure`).
    """
    import ctypes
    import threading

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (AttributeError, OSError):
        mallopt = None
    failure: list[BaseException] = []

    def call() -> None:
        try:
            function(*args)
            device.sync()
        except BaseException as err:  # re-raised in the calling thread
            failure.append(err)

    threads_before = os.environ.get("TVM_NUM_THREADS")
    # read when the new thread's pool is created (its first parallel loop); this process's
    # own pool, made earlier, keeps its size
    os.environ["TVM_NUM_THREADS"] = "1"
    if mallopt is not None:
        mallopt(_M_PERTURB, _PERTURB_BYTE)
    try:
        thread = threading.Thread(target=call, name="checked-run")
        thread.start()
        thread.join()
    finally:
        if mallopt is not None:
            mallopt(_M_PERTURB, 0)
        if threads_before is None:
            os.environ.pop("TVM_NUM_THREADS", None)
        else:
            os.environ["TVM_NUM_THREADS"] = threads_before
    if failure:
        raise failure[0]


def cpu_share(
    before: dict[str, float] | None, after: dict[str, float] | None, wall: float
) -> float | None:
    """The share of `wall` the busiest thread of this process was on a CPU: about 1 when the
    timed code ran undisturbed (the calling thread computes or spins on TVM's barrier the
    whole time), less when other processes took its core (measured: 0.5-0.8 beside one busy
    process on this 2-core machine, 0.02-0.06 beside two, with latencies 1.1-40x too long)."""
    if before is None or after is None or wall <= 0:
        return None
    busy = max((after[t] - before.get(t, 0.0) for t in after), default=0.0)
    return min(busy / wall, 1.0)


def time_module(
    rt_mod: Any,
    device: Any,
    random_fill: Any,
    args_info: ArgsInfo,
    protocol: dict,
    inputs: Sequence[np.ndarray | None] | None,
    return_outputs: bool,
    dirty_memory: bool = False,
    local: bool = False,
) -> dict[str, Any]:
    """Time the entry function of a loaded library on `device` (runs in a worker).

    Returns the per-repeat seconds, the arguments after one run on `inputs` when
    `return_outputs` (that run on dirty memory when `dirty_memory`: `_run_on_dirty_memory`),
    and, when `local` (the device is this machine's CPU), the timing's `cpu_share`.
    """
    proto = MeasureProtocol.from_json(protocol)
    args = _allocate(args_info, device, random_fill, inputs)
    function = rt_mod[rt_mod.entry_name]
    outputs = None
    if return_outputs:
        if dirty_memory:
            _run_on_dirty_memory(function, args, device)
        else:
            function(*args)
            device.sync()
        outputs = [array.numpy() for array in args]
    # time_evaluator makes one untimed call itself; the protocol's other warm-up calls are ours.
    for _ in range(max(0, proto.warmup - 1)):
        function(*args)
    evaluator = rt_mod.time_evaluator(rt_mod.entry_name, device, **time_evaluator_kwargs(proto))
    device.sync()
    # on this machine's CPU, how much of the timing the process had its core(s) for
    before = thread_cpu_seconds() if local else None
    started = time.perf_counter()
    result = evaluator(*args)
    wall = time.perf_counter() - started
    share = cpu_share(before, thread_cpu_seconds(), wall) if local else None
    return {"run_secs": [float(s) for s in result.results], "outputs": outputs, "cpu_share": share}


# ---- the runner they share ---------------------------------------------------------------


def _device_type_name(device_type: str) -> str:
    """A device name the runtime knows ("cpu") for a RunnerInput's, which may be a target
    kind ("llvm")."""
    import tvm

    try:
        tvm.runtime.device(device_type, 0)
        return device_type
    except ValueError:
        number = tvm.target.Target(device_type).get_target_device_type()
        return str(tvm.runtime.device(number, 0)).split(":", 1)[0]


@derived_object
class _FinishedFuture(PyRunnerFuture):
    """A RunnerFuture whose result is already known."""

    def __init__(self, result: RunnerResult) -> None:
        super().__init__()
        self._result = result

    def done(self) -> bool:
        return True

    def result(self) -> RunnerResult:
        return self._result


class IsolatedRunner(PyRunner):
    """What both runners share: worker, leases, protocol, time-outs, output hook.

    A subclass names the worker function that measures (`_function`, "module:function"),
    gives its arguments (`_call_args`), and may prepare the worker under the leases
    (`_before_call`).
    """

    _function = ""
    _label = ""

    def _setup(
        self,
        device: DeviceProfile,
        protocol: MeasureProtocol,
        timeout_sec: float,
        output_hook: OutputHook | None,
        lease_dir: str | Path | None,
        worker: IsolatedWorker,
        contention_retries: int = 0,
        min_cpu_share: float = 0.0,
    ) -> None:
        if timeout_sec <= 0:
            raise ValueError(f"timeout_sec must be > 0, got {timeout_sec}")
        if contention_retries < 0 or not 0.0 <= min_cpu_share <= 1.0:
            raise ValueError("contention_retries must be >= 0 and min_cpu_share in [0, 1]")
        self.contention_retries = contention_retries
        self.min_cpu_share = min_cpu_share
        self.disturbed = 0  # timings still disturbed after every retry
        self.device = device
        self.protocol = protocol
        self.timeout_sec = timeout_sec
        self.output_hook = output_hook
        self.host_lease = host_cpu_lease(lease_dir)
        # One slot a device the runner measures on at once: its worker and the leases a
        # measurement holds. A runner over several devices (RPCRunner(devices=N)) has N and
        # measures on them from N threads; each thread sees its own as `worker`/`leases`.
        self._slots: list[tuple[IsolatedWorker, tuple[DeviceLease, ...]]] = [
            (worker, measurement_leases(device, lease_dir))
        ]
        self._current = threading.local()
        self._hook_lock = threading.Lock()  # the output hook is used from one thread at a time
        self.statuses = ResultStatuses()

    @property
    def worker(self) -> IsolatedWorker:
        return self._slots[getattr(self._current, "slot", 0)][0]

    @property
    def leases(self) -> tuple[DeviceLease, ...]:
        return self._slots[getattr(self._current, "slot", 0)][1]

    def status_of(self, result: RunnerResult) -> Status | None:
        """Why a RunnerResult this runner returned failed; None if it did not (or is not one
        of this runner's)."""
        return self.statuses.status_of(result)

    def _before_call(self) -> None:
        """Called under the device's leases before each measurement."""

    def _call_args(
        self,
        artifact_path: str,
        device_type: str,
        args_info: ArgsInfo,
        inputs: Sequence[np.ndarray | None] | None,
        return_outputs: bool,
    ) -> tuple:
        raise NotImplementedError

    @contextlib.contextmanager
    def _leased(self) -> Iterator[None]:
        # The worker's start-up (import tvm: seconds of CPU) happens outside the exclusive
        # lease, as shared use of the host's cores, so it neither delays nor disturbs others.
        with self.host_lease.shared():
            self.worker.ready()
        with holding_all(self.leases, exclusive=True):
            yield

    def measure(
        self,
        artifact_path: str,
        args_info: ArgsInfo,
        device_type: str = "cpu",
        inputs: Sequence[np.ndarray | None] | None = None,
        return_outputs: bool = False,
    ) -> Measurement:
        """Time one library under the device's lease; errors come back as the result.

        A timing during which the process did not have its core (`cpu_share` below
        `min_cpu_share`: another tenant of a shared machine took it) is repeated, after a
        pause outside the lease, up to `contention_retries` times; the fastest is kept.
        """
        timings: list[Measurement] = []
        for attempt in range(1 + self.contention_retries):
            if attempt:
                time.sleep(_CONTENTION_PAUSE_S * 2 ** (attempt - 1))
            result = self._measure_once(
                artifact_path, args_info, device_type, inputs, return_outputs
            )
            if not result.ok:
                return result
            timings.append(result)
            if result.cpu_share is None or result.cpu_share >= self.min_cpu_share:
                break
            log.debug(
                "%s: timing disturbed (the process had its core %.0f%% of the time), attempt %d",
                self._label,
                100 * result.cpu_share,
                attempt + 1,
            )
        else:
            self.disturbed += 1
            if self.disturbed in (1, 10, 100) or self.disturbed % 1000 == 0:
                log.warning(
                    "%s: %d timings were disturbed by other processes through %d attempts "
                    "each (the machine is busy); their latencies may be too long",
                    self._label,
                    self.disturbed,
                    1 + self.contention_retries,
                )
        fastest = min(timings, key=lambda m: m.median or 0.0)
        return dataclasses.replace(fastest, attempts=len(timings))

    def _measure_once(
        self,
        artifact_path: str,
        args_info: ArgsInfo,
        device_type: str,
        inputs: Sequence[np.ndarray | None] | None,
        return_outputs: bool,
    ) -> Measurement:
        device_type = _device_type_name(device_type)
        call_args = self._call_args(artifact_path, device_type, args_info, inputs, return_outputs)
        span = [0.0, 0.0]
        try:
            with self._leased():
                self._before_call()
                span[0] = time.time()
                started = time.perf_counter()
                try:
                    value = self.worker.call(self._function, *call_args, timeout=self.timeout_sec)
                finally:
                    wall = time.perf_counter() - started
                    span[1] = time.time()
        except WorkerTimeout:
            status, error = (
                Status.TIMEOUT,
                f"{self._label}: timeout, killed after {self.timeout_sec} s",
            )
        except WorkerCrashed as err:
            status, error = Status.RUN_ERROR, f"{self._label}: crashed: {err}"
        except WorkerError as err:
            status, error = Status.RUN_ERROR, f"{self._label}: an exception occurred\n{err}"
        else:
            outputs = value["outputs"]
            return Measurement(
                run_secs=tuple(value["run_secs"]),
                outputs=tuple(outputs) if outputs is not None else None,
                wall_secs=wall,
                started_at=span[0],
                ended_at=span[1],
                cpu_share=value.get("cpu_share"),
            )
        return Measurement(None, error, started_at=span[0], ended_at=span[1], status=status)

    def measure_input(self, runner_input: RunnerInput) -> Measurement:
        """One MetaSchedule RunnerInput, with the output hook's check when there is one."""
        args_info = [info.as_json() for info in runner_input.args_info]
        hook = self.output_hook
        with self._hook_lock:
            inputs = hook.inputs_for(runner_input) if hook is not None else None
        result = self.measure(
            str(runner_input.artifact_path),
            args_info,
            device_type=str(runner_input.device_type),
            inputs=inputs,
            return_outputs=inputs is not None,
        )
        if hook is not None and result.ok and result.outputs is not None:
            with self._hook_lock:
                problem = hook.check(runner_input, result.outputs)
            if problem is not None:
                return dataclasses.replace(
                    result,
                    run_secs=None,
                    error=f"wrong result: {problem}",
                    status=Status.WRONG_RESULT,
                )
        return result

    def run(self, runner_inputs: list[RunnerInput]) -> list[RunnerFuture]:
        if len(self._slots) == 1 or len(runner_inputs) < 2:
            return [_FinishedFuture(self._run_one(r)) for r in runner_inputs]
        # several devices: each slot's thread takes the next input until none is left
        results: list[RunnerResult | None] = [None] * len(runner_inputs)
        todo = queue.SimpleQueue()
        for index in range(len(runner_inputs)):
            todo.put(index)

        def drain(slot: int) -> None:
            self._current.slot = slot
            while True:
                try:
                    index = todo.get_nowait()
                except queue.Empty:
                    return
                results[index] = self._run_one(runner_inputs[index])

        with concurrent.futures.ThreadPoolExecutor(len(self._slots)) as pool:
            for done in [pool.submit(drain, slot) for slot in range(len(self._slots))]:
                done.result()
        return [_FinishedFuture(r) for r in results if r is not None]

    def _run_one(self, runner_input: RunnerInput) -> RunnerResult:
        measurement = self.measure_input(runner_input)
        if not measurement.ok:
            log.debug("%s: %s", self._label, (measurement.error or "").splitlines()[0])
        return self.statuses.remember(measurement.to_runner_result(), measurement.status)

    def close(self) -> None:
        """Stop the worker subprocesses (a later measurement starts new ones)."""
        for worker, _ in self._slots:
            worker.close()
