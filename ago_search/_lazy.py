"""Cheap imports: lazy attributes for package `__init__`s (names whose modules load TVM or
MetaSchedule are imported on first use), and processes that start TVM without PyTorch."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_getattr", "without_torch"]


def lazy_getattr(package: str, lazy: Mapping[str, str], namespace: dict[str, Any]) -> Callable:
    """A module `__getattr__` for `package` that imports `lazy[name]` (a submodule name) on
    first access of `name` and caches the value in `namespace` (the package's globals())."""

    def __getattr__(name: str) -> Any:
        module = lazy.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        namespace[name] = value
        return value

    return __getattr__


def without_torch() -> None:
    """Keep PyTorch out of this process: tvm_ffi imports it whenever it is installed (the zoo
    extra installs it), 2.1 of `import tvm`'s 4.1 s on a 2-core EPYC, and nothing of ours
    needs it. A None in sys.modules makes `import torch` raise ImportError, which tvm_ffi
    expects. Only for processes of our own (workers, the command), before TVM is imported; a
    torch imported already is left alone."""
    sys.modules.setdefault("torch", None)  # type: ignore[arg-type]
