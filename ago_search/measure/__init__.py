"""Measurement: the protocol every timing follows, device leases, builders and runners.

`protocol` and `lease` are imported eagerly (no TVM); the builders and runners, which import
TVM's MetaSchedule, are imported on first use of their names.
"""

from __future__ import annotations

from ago_search._lazy import lazy_getattr
from ago_search.measure.lease import (
    HOST_CPU,
    DeviceLease,
    LeaseTimeoutError,
    holding_all,
    host_cpu_lease,
    measurement_leases,
)
from ago_search.measure.protocol import (
    FLUSH_BYTES,
    MeasureProtocol,
    Timing,
    calibrate_number,
    flush_cpu_cache,
    time_callable,
    time_evaluator_kwargs,
)

_LAZY = {
    "LocalBuilder": "builders",
    "RayBuilder": "builders",
    "DEFAULT_BUILD_TIMEOUT": "builders",
    "SubprocessRunner": "runners",
    "RPCRunner": "runners",
    "Measurement": "runners",
    "OutputHook": "runners",
    "TUNING_PROTOCOL": "runners",
    "DEFAULT_RUN_TIMEOUT": "runners",
    "DeviceUnavailableError": "runners",
    "register_cpu_tensor_intrinsics": "intrinsics",
}

__all__ = [
    "FLUSH_BYTES",
    "HOST_CPU",
    "DeviceLease",
    "LeaseTimeoutError",
    "MeasureProtocol",
    "Timing",
    "calibrate_number",
    "flush_cpu_cache",
    "holding_all",
    "host_cpu_lease",
    "measurement_leases",
    "time_callable",
    "time_evaluator_kwargs",
    *_LAZY,
]


__getattr__ = lazy_getattr(__name__, _LAZY, globals())
