"""Compile Relax modules for a target, and run the result on numpy inputs.

`build_default` is TVM's own default build: legalize, fold constants, fuse (FuseOps +
FuseTIR), no schedules. It is the baseline every plan is compared with. `VMRunner` runs an
executable with its inputs already on the device, so that one call is one inference and
nothing else.

Threads of TVM's runtime (found by trying on TVM 0.27, counting per-thread CPU time from
/proc/self/task on a parallel matmul, not by timings). Generated code's `parallel` loops run
on one pool per process, created on first use with TVM_NUM_THREADS, else OMP_NUM_THREADS,
else *half* the hardware threads on x86 (TVM assumes hyper-threading: 1 thread on a 2-core
machine without SMT). Once created, the pool never grows: `runtime.config_threadpool(mode,
n)` can only lower the count. Mode 1 (big cores) also pins the calling Python thread to the
first cores (core 0 alone where the pool has 1 thread), and threads created later inherit
that mask: an ONNX Runtime session made afterwards with 2 threads ran both on core 0. Mode -3
(threads share all listed cores) pins nothing, and when it is the first use of the pool it
creates the pool with one thread per listed core. So: `tvm_thread_env(n)` gives a fresh
process a pool of exactly n threads (how the benchmark runs TVM); `set_tvm_threads(n)`
changes the count in this process, up to all cores if called before any parallel TVM code,
else up to the pool's first size, and raises if TVM does not report n afterwards. In both,
TVM's pinning of pool threads is off (TVM_BIND_THREADS=0 or mode -3).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tvm
import tvm_ffi
from tvm import relax

__all__ = [
    "VMRunner",
    "build_default",
    "export_executable",
    "load_executable",
    "run_executable",
    "set_tvm_threads",
    "tvm_num_threads",
    "tvm_thread_env",
]

log = logging.getLogger(__name__)

# Name under which VMRunner saves `main` bound to its inputs.
_SAVED_MAIN = "ago_search_main_bound"


def build_default(mod: tvm.IRModule, target: tvm.target.Target) -> relax.VMExecutable:
    """TVM's default fused build of a Relax module (untuned kernels).

    Without `relax_pipeline`, tvm.compile on a CPU legalizes but does not fuse.
    """
    return tvm.compile(mod, target, relax_pipeline=relax.get_default_pipeline(target))


def export_executable(executable: relax.VMExecutable, path: str | Path) -> Path:
    """Write an executable as a shared library that the TVM runtime alone can load."""
    path = Path(path)
    executable.export_library(str(path))
    return path


def load_executable(path: str | Path) -> tvm.runtime.Module:
    """Load a library written by `export_executable`; VMRunner accepts the result."""
    return tvm.runtime.load_module(str(path))


def _to_numpy(value: object) -> list[np.ndarray]:
    """Outputs of a VM call as a flat list of numpy arrays (tuples flattened in order)."""
    if isinstance(value, tvm.runtime.Tensor):
        return [value.numpy()]
    if isinstance(value, tvm_ffi.Array | list | tuple):
        return [array for item in value for array in _to_numpy(item)]
    raise TypeError(f"unexpected VM output of type {type(value).__name__}")


class VMRunner:
    """Runs `main` of an executable on fixed inputs, converted to TVM tensors once.

    Calling the runner is one full inference (outputs allocated, not copied back): the thing
    to time. `outputs()` runs once more and returns numpy arrays.
    """

    def __init__(
        self,
        executable: relax.VMExecutable | tvm.runtime.Module,
        inputs: Sequence[np.ndarray],
        device: tvm.runtime.Device | None = None,
    ):
        self.device = device if device is not None else tvm.cpu()
        self._vm = relax.VirtualMachine(executable, self.device)
        self._args = [tvm.runtime.tensor(np.ascontiguousarray(a), self.device) for a in inputs]
        self._vm.save_function("main", _SAVED_MAIN, *self._args)
        self._main = self._vm[_SAVED_MAIN]

    def __call__(self) -> object:
        return self._main()

    def outputs(self) -> list[np.ndarray]:
        return _to_numpy(self._main())


def run_executable(
    executable: relax.VMExecutable | tvm.runtime.Module, inputs: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Run `main` once on numpy inputs (in parameter order); outputs as numpy arrays."""
    return VMRunner(executable, inputs).outputs()


def tvm_thread_env(num_threads: int) -> dict[str, str]:
    """Environment for a fresh process whose TVM thread pool has exactly num_threads threads.

    Pinning is off, as ONNX Runtime's threads are not pinned either, and on a shared machine
    a pinned thread waits for its core while another core is idle.
    """
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    return {
        "TVM_NUM_THREADS": str(num_threads),
        "OMP_NUM_THREADS": str(num_threads),
        "TVM_BIND_THREADS": "0",
    }


def tvm_num_threads() -> int:
    """Threads TVM's pool uses for parallel loops in this process (creates the pool)."""
    return int(tvm_ffi.get_global_func("runtime.NumThreads")())


def set_tvm_threads(num_threads: int) -> None:
    """Set the threads of this process's TVM pool; they share all cores, nothing is pinned.

    The pool cannot grow past its size at creation (see the module docstring): call this
    before any parallel TVM code runs to be able to use every core. Raises RuntimeError if
    TVM does not report the requested count afterwards.
    """
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1, got {num_threads}")
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = list(range(os.cpu_count() or 1))
    # Mode -3 = kSpecifyThreadShareAllCore: no pinning; sizes a new pool by the core list.
    config = tvm_ffi.get_global_func("runtime.config_threadpool")
    config(-3, num_threads, [str(core) for core in cores])
    actual = tvm_num_threads()
    if actual != num_threads:
        raise RuntimeError(f"asked TVM for {num_threads} threads, it uses {actual}")
    log.debug("TVM thread pool: %d threads over cores %s", num_threads, cores)
