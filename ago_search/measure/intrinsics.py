"""Register only the CPU tensor intrinsics, instead of TVM's whole `tvm.s_tir.tensor_intrin`.

Every `ms.TuneContext` (so every `tune_tir`, `tune_relax`, and our own tuning) runs
`import tvm.s_tir.tensor_intrin`, whose package imports the intrinsics of every backend:
about 29 s of CPU on this project's machine, 27 of them for CUDA's, once per process. A CPU
search needs the x86 ones (0.4 s; VNNI/AVX-512 dot products, which MetaSchedule's default
rules for an LLVM target with those features look up) or the Arm ones (3 s).

`register_cpu_tensor_intrinsics(target)` puts the package into `sys.modules` without running
its `__init__` and imports only the submodules the target's CPU needs; TuneContext's import
then finds the package and costs nothing. Call it once per process before tuning. Where the
full package was imported already, it does nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys

import tvm

__all__ = ["register_cpu_tensor_intrinsics"]

log = logging.getLogger(__name__)

_PACKAGE = "tvm.s_tir.tensor_intrin"


def _submodules_for(target: tvm.target.Target | None) -> tuple[str, ...]:
    if target is None:
        return ("x86", "arm_cpu")
    triple = str(target.attrs.get("mtriple", "")) if "mtriple" in target.attrs else ""
    keys = {str(key) for key in target.keys}
    if "arm_cpu" in keys or triple.startswith(("aarch64", "arm")):
        return ("arm_cpu",)
    if triple.startswith("riscv"):
        return ("riscv_cpu",)
    return ("x86",)


def register_cpu_tensor_intrinsics(target: tvm.target.Target | None = None) -> tuple[str, ...]:
    """Register the tensor intrinsics of `target`'s CPU (x86 and Arm when None).

    Returns the submodules imported now (empty if the full package is imported already).
    """
    package = sys.modules.get(_PACKAGE)
    if package is None:
        spec = importlib.util.find_spec(_PACKAGE)
        if spec is None:
            raise ImportError(f"{_PACKAGE} not found in this TVM")
        package = importlib.util.module_from_spec(spec)  # its __init__ is not run
        package.__dict__["_ago_search_partial"] = True
        sys.modules[_PACKAGE] = package
    elif not package.__dict__.get("_ago_search_partial"):
        return ()
    loaded = []
    for name in _submodules_for(target):
        qualified = f"{_PACKAGE}.{name}"
        if qualified not in sys.modules:
            importlib.import_module(qualified)
            loaded.append(name)
    log.debug("registered tensor intrinsics: %s", ", ".join(loaded) or "(already)")
    return tuple(loaded)
