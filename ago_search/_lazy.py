"""Lazy attributes for package `__init__`s: names whose modules load TVM or MetaSchedule are
imported on first use, so importing the package stays cheap."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_getattr"]


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
