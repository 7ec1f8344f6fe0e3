"""The local runner: times candidates on this machine's CPU (after MetaSchedule's
`runner/local_runner.py`).

`SubprocessRunner` measures in an `IsolatedWorker` with the device profile's TVM thread count
(`threads.tvm_thread_env`), set before the worker imports TVM; `measure_local` is what runs in
that worker. What the runners share (leases, contention retries, the output hook) is in
`runner`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tvm.ir.utils import derived_object

from ago_search.measure.protocol import MeasureProtocol
from ago_search.measure.runner import (
    CONTENTION_RETRIES,
    DEFAULT_RUN_TIMEOUT,
    MIN_CPU_SHARE,
    TUNING_PROTOCOL,
    ArgsInfo,
    IsolatedRunner,
    OutputHook,
    time_module,
)
from ago_search.measure.threads import tvm_thread_env
from ago_search.measure.worker import IsolatedWorker

if TYPE_CHECKING:
    from ago_search.devices import DeviceProfile

__all__ = ["SubprocessRunner", "measure_local"]


def measure_local(
    artifact_path: str,
    device_type: str,
    args_info: ArgsInfo,
    protocol: dict,
    inputs: Sequence[np.ndarray | None] | None = None,
    return_outputs: bool = False,
) -> dict[str, Any]:
    """Load a library here and time its entry function (runs in the worker subprocess)."""
    import tvm

    rt_mod = tvm.runtime.load_module(artifact_path)
    device = tvm.runtime.device(device_type, 0)
    random_fill = tvm.get_global_func("tvm.contrib.random.random_fill_for_measure")
    return time_module(
        rt_mod,
        device,
        random_fill,
        args_info,
        protocol,
        inputs,
        return_outputs,
        dirty_memory=True,
        local=True,
    )


@derived_object
class SubprocessRunner(IsolatedRunner):
    """Times candidates on this machine's CPU, each in a subprocess with a time-out.

    device: a local profile (default: the detected host); its `threads` is the worker's TVM
    thread count. fresh_process: a new subprocess for every measurement (seconds each, for
    `import tvm`) instead of one kept until a candidate crashes or hangs. A timing that
    other processes disturbed (the worker had its core less than `min_cpu_share` of the
    time) is repeated up to `contention_retries` times and the fastest kept (`measure`).
    """

    _function = f"{__name__}:measure_local"
    _label = "SubprocessRunner"

    def __init__(
        self,
        device: DeviceProfile | None = None,
        *,
        protocol: MeasureProtocol = TUNING_PROTOCOL,
        timeout_sec: float = DEFAULT_RUN_TIMEOUT,
        fresh_process: bool = False,
        output_hook: OutputHook | None = None,
        lease_dir: str | Path | None = None,
        contention_retries: int = CONTENTION_RETRIES,
        min_cpu_share: float = MIN_CPU_SHARE,
    ) -> None:
        super().__init__()
        from ago_search.devices import detect_host

        device = device if device is not None else detect_host()
        if not device.is_local:
            raise ValueError(f"device {device.name!r} is reached over RPC: use RPCRunner")
        worker = IsolatedWorker(
            preload=(__name__,),
            env=tvm_thread_env(device.threads),
            max_uses=1 if fresh_process else None,
            name="measure-worker",
        )
        self._setup(
            device,
            protocol,
            timeout_sec,
            output_hook,
            lease_dir,
            worker,
            contention_retries,
            min_cpu_share,
        )

    def _call_args(self, artifact_path, device_type, args_info, inputs, return_outputs):
        protocol = self.protocol.to_json()
        return (artifact_path, device_type, args_info, protocol, inputs, return_outputs)
