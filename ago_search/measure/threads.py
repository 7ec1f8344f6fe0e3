"""Threads: how many TVM uses, and how many of a process's threads actually ran.

TVM's thread pool (found by trying on TVM 0.27, counting per-thread CPU time from
/proc/self/task on a parallel matmul, not by timings). Generated code's `parallel` loops run
on one pool per process, created on first use with TVM_NUM_THREADS, else OMP_NUM_THREADS,
else *half* the hardware threads on x86 (TVM assumes hyper-threading: 1 thread on a 2-core
machine without SMT). Once created, the pool never grows: `runtime.config_threadpool(mode,
n)` can only lower the count. Mode 1 (big cores) also pins the calling Python thread to the
first cores (core 0 alone where the pool has 1 thread), and threads created later inherit
that mask: an ONNX Runtime session made afterwards with 2 threads ran both on core 0. Mode -3
(threads share all listed cores) pins nothing, and when it is the first use of the pool it
creates the pool with one thread per listed core. So: `tvm_thread_env(n)` gives a fresh
process a pool of exactly n threads (how the runners and the benchmark run TVM);
`set_tvm_threads(n)` changes the count in this process, up to all cores if called before any
parallel TVM code, else up to the pool's first size, and raises if TVM does not report n
afterwards. In both, TVM's pinning of pool threads is off (TVM_BIND_THREADS=0 or mode -3).

`thread_cpu_seconds` reads the CPU time of each thread of this process; from two readings,
`busy_threads` counts the threads that did work in between.

TVM is imported only by the functions that ask it, so that a process timing another runtime
(ONNX Runtime) can use this module without loading TVM.
"""

from __future__ import annotations

import logging
import os

__all__ = [
    "busy_threads",
    "set_tvm_threads",
    "thread_cpu_seconds",
    "tvm_num_threads",
    "tvm_thread_env",
]

log = logging.getLogger(__name__)

# A thread "did work" between two readings when it got at least this share of the process's
# CPU time; keeps a thread that woke once from counting.
_BUSY_SHARE = 0.05


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
    import tvm_ffi

    return int(tvm_ffi.get_global_func("runtime.NumThreads")())


def set_tvm_threads(num_threads: int) -> None:
    """Set the threads of this process's TVM pool; they share all cores, nothing is pinned.

    The pool cannot grow past its size at creation (see the module docstring): call this
    before any parallel TVM code runs to be able to use every core. Raises RuntimeError if
    TVM does not report the requested count afterwards.
    """
    import tvm_ffi

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


def thread_cpu_seconds() -> dict[str, float] | None:
    """CPU seconds each thread of this process has run, from /proc/self/task/*/schedstat
    (None where the kernel does not give it)."""
    seconds = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as stat:
                seconds[tid] = int(stat.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
    return seconds or None


def busy_threads(before: dict[str, float] | None, after: dict[str, float] | None) -> int:
    """Threads that used CPU time between two `thread_cpu_seconds` readings (0 where not
    known); a span too short to see counts as the calling thread's alone."""
    if before is None or after is None:
        return 0
    deltas = [after[t] - before.get(t, 0.0) for t in after]
    total = sum(deltas)
    if total <= 0:
        return 1
    return sum(1 for d in deltas if d > 0 and d >= _BUSY_SHARE * total)
