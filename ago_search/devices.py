"""Devices: for now the host CPU only (TOML device profiles come later).

The host target names the CPU (`mcpu`, from LLVM's detection of this machine) so that code
uses its vector units, and `num-cores`, which MetaSchedule requires. The target gets no
`mtriple`: LLVM's own host triple is the right one, and the triple LLVM reports here
(`x86_64-conda-linux-gnu`, from the toolchain TVM's wheel was built with) names a vendor the
system's linker has never heard of.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import tvm
from tvm.target import codegen

__all__ = ["host_cpu_name", "host_mcpu", "host_num_cores", "host_target"]


def host_num_cores() -> int:
    """Cores this process may run on (its affinity mask), which can be fewer than the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def host_mcpu() -> str:
    """LLVM's name of this CPU, e.g. 'znver4'."""
    return str(codegen.llvm_get_system_cpu())


def host_cpu_name() -> str:
    """The CPU's marketing name from /proc/cpuinfo, with LLVM's name: 'AMD EPYC (znver4)'."""
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({host_mcpu()})"


def host_target(num_cores: int | None = None) -> tvm.target.Target:
    """An LLVM target for this CPU; num_cores defaults to the cores this process may use."""
    cores = num_cores if num_cores is not None else host_num_cores()
    if cores < 1:
        raise ValueError(f"num_cores must be >= 1, got {cores}")
    return tvm.target.Target({"kind": "llvm", "mcpu": host_mcpu(), "num-cores": cores})
