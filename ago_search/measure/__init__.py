"""Measurement: the protocol every timing follows, device leases, builders and runners.

`protocol` and `lease` are imported eagerly (no TVM); the rest on first use of their names:
the builders (`builders`), the runners (`runner`: what they share, `local_runner`,
`rpc_runner`), the statuses of their failed results (`status`), output comparison
(`compare`) and TVM's thread settings (`threads`).
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
    "Measurement": "runner",
    "OutputHook": "runner",
    "ResultStatuses": "status",
    "TUNING_PROTOCOL": "runner",
    "DEFAULT_RUN_TIMEOUT": "runner",
    "MIN_CPU_SHARE": "runner",
    "SubprocessRunner": "local_runner",
    "RPCRunner": "rpc_runner",
    "DeviceUnavailableError": "rpc_runner",
    "register_cpu_tensor_intrinsics": "intrinsics",
    "DEFAULT_TOLERANCE": "compare",
    "OutputCheck": "compare",
    "compare_output": "compare",
    "compare_outputs": "compare",
    "set_tvm_threads": "threads",
    "tvm_num_threads": "threads",
    "tvm_thread_env": "threads",
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
