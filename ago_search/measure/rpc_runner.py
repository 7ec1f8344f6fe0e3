"""The RPC runner: times candidates on a device behind a TVM RPC tracker (after
MetaSchedule's `runner/rpc_runner.py`).

`RPCRunner`'s worker is the RPC client; it keeps its session between candidates (2-3 ms of
overhead a candidate on 127.0.0.1, against about 0.1 s for a fresh session from the tracker,
as MetaSchedule's RPCRunner takes) and replaces it before the server's session time-out
would end it. Libraries must be linked for the device (`LocalBuilder.for_device`). TVM's own
Python RPC server stops serving after a session crashes; `ago_search.measure.rpc_server`
does not. `open_rpc_session` and `measure_rpc` are what runs in the worker. What the runners
share (leases, the output hook) is in `runner`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tvm.ir.utils import derived_object

from ago_search.errors import AgoSearchError
from ago_search.measure.lease import measurement_leases
from ago_search.measure.protocol import MeasureProtocol
from ago_search.measure.runner import (
    DEFAULT_RUN_TIMEOUT,
    TUNING_PROTOCOL,
    ArgsInfo,
    IsolatedRunner,
    OutputHook,
    time_module,
)
from ago_search.measure.worker import IsolatedWorker, WorkerCrashed, WorkerError, WorkerTimeout

if TYPE_CHECKING:
    from ago_search.devices import DeviceProfile, RPCConnection

__all__ = [
    "DeviceUnavailableError",
    "RPCRunner",
    "measure_rpc",
    "open_rpc_session",
    "tracker_device_count",
]

log = logging.getLogger(__name__)


class DeviceUnavailableError(AgoSearchError):
    """The device cannot be reached (no RPC server under its key): not a candidate's error."""


# The RPC client worker's session with the device, and when it was opened. One per worker.
_SESSION: dict[str, Any] = {}


def _session_key(connection: dict) -> tuple:
    return (connection["tracker_host"], int(connection["tracker_port"]), connection["key"])


def open_rpc_session(connection: dict, reuse: bool) -> bool:
    """Make sure the worker holds a session with the device; True if the kept one will do.

    A kept session is used while younger than half the session time-out (the server ends a
    session at its time-out, and a measurement must not be cut by that). Runs in the worker.
    connection: tracker_host, tracker_port, key, session_timeout, priority.
    """
    from tvm import rpc

    lifetime = float(connection["session_timeout"])
    kept = _SESSION.get("session")
    if (
        reuse
        and kept is not None
        and _SESSION.get("key") == _session_key(connection)
        and time.monotonic() - _SESSION["opened"] < 0.5 * lifetime
    ):
        return True
    _SESSION.clear()
    tracker = rpc.connect_tracker(connection["tracker_host"], int(connection["tracker_port"]))
    session = tracker.request(
        connection["key"],
        priority=int(connection.get("priority", 1)),
        session_timeout=lifetime,
    )
    _SESSION.update(session=session, key=_session_key(connection), opened=time.monotonic())
    return False


def measure_rpc(
    connection: dict,
    artifact_path: str,
    device_type: str,
    args_info: ArgsInfo,
    protocol: dict,
    inputs: Sequence[np.ndarray | None] | None = None,
    return_outputs: bool = False,
    reuse_session: bool = True,
) -> dict[str, Any]:
    """Upload a library to the device and time it there, in the session `open_rpc_session`
    opened (runs in the worker subprocess)."""
    if "session" not in _SESSION:
        open_rpc_session(connection, reuse_session)
    session = _SESSION["session"]
    remote_name = Path(artifact_path).name
    try:
        try:
            session.upload(artifact_path, remote_name)
        except Exception:
            # A kept session that died since (a server restart, the last candidate crashed
            # it) is not this candidate's fault: once more with a fresh session.
            open_rpc_session(connection, reuse=False)
            session = _SESSION["session"]
            session.upload(artifact_path, remote_name)
        rt_mod = session.load_module(remote_name)
        device = session.device(device_type, 0)
        random_fill = session.get_function("tvm.contrib.random.random_fill_for_measure")
        result = time_module(
            rt_mod, device, random_fill, args_info, protocol, inputs, return_outputs
        )
        with contextlib.suppress(Exception):
            session.remove(remote_name)
    except BaseException:
        _SESSION.clear()  # whatever state the session is in, the next candidate gets a new one
        raise
    if not reuse_session:
        _SESSION.clear()
    return result


def tracker_device_count(connection: RPCConnection) -> int:
    """How many servers the tracker lists under the connection's key (1 when the tracker
    cannot be asked: the first measurement then says what is wrong)."""
    from tvm import rpc

    try:
        tracker = rpc.connect_tracker(connection.tracker_host, int(connection.tracker_port))
        servers = tracker.summary()["server_info"]
    except Exception as err:  # noqa: BLE001 - an unreachable tracker is reported on first use
        log.debug("tracker at %s:%s: %s", connection.tracker_host, connection.tracker_port, err)
        return 1
    wanted = f"server:{connection.key}"
    return max(1, sum(1 for item in servers if str(item.get("key", "")) == wanted))


@derived_object
class RPCRunner(IsolatedRunner):
    """Times candidates on a device behind a TVM RPC tracker (the profile's connection).

    The RPC client runs in a subprocess with a time-out, so a server that hangs costs one
    error result. reuse_session: keep the session between candidates (see the module
    docstring); False asks the tracker for a new one every time. devices: how many devices
    under the key to measure on at once, each with its own client worker and session (None:
    every server the tracker lists under the key, so a cluster of identical phones measures a
    round in parallel). connect_timeout: seconds to
    get a session; past it, the device is taken for gone and DeviceUnavailableError raised
    (a missing device is no candidate's failure, so it is no record either).
    """

    _function = f"{__name__}:measure_rpc"
    _label = "RPCRunner"

    def __init__(
        self,
        device: DeviceProfile,
        *,
        protocol: MeasureProtocol = TUNING_PROTOCOL,
        timeout_sec: float = DEFAULT_RUN_TIMEOUT,
        reuse_session: bool = True,
        connect_timeout: float = 60.0,
        output_hook: OutputHook | None = None,
        lease_dir: str | Path | None = None,
        devices: int | None = None,
    ) -> None:
        super().__init__()
        from ago_search.devices import RPCConnection

        if not isinstance(device.connection, RPCConnection):
            raise ValueError(f"device {device.name!r} has no RPC connection: use SubprocessRunner")
        if reuse_session and timeout_sec > 0.5 * device.connection.session_timeout:
            log.warning(
                "RPCRunner: timeout_sec %.0f s is over half the session time-out (%.0f s): a "
                "kept session may end during a measurement",
                timeout_sec,
                device.connection.session_timeout,
            )
        self.reuse_session = reuse_session
        self.connect_timeout = connect_timeout
        self.connection: RPCConnection = device.connection
        worker = IsolatedWorker(preload=(__name__,), name="rpc-client")
        self._setup(device, protocol, timeout_sec, output_hook, lease_dir, worker)
        if devices is None:
            devices = tracker_device_count(self.connection)
        if devices < 1:
            raise ValueError(f"devices must be >= 1, got {devices}")
        for slot in range(1, devices):
            self._slots.append(
                (
                    IsolatedWorker(preload=(__name__,), name=f"rpc-client-{slot}"),
                    measurement_leases(device, lease_dir, slot),
                )
            )
        self.devices = devices
        if devices > 1:
            log.info(
                "RPCRunner: measuring on %d devices under key %r", devices, self.connection.key
            )

    def _connection_json(self) -> dict:
        return {
            "tracker_host": self.connection.tracker_host,
            "tracker_port": self.connection.tracker_port,
            "key": self.connection.key,
            "session_timeout": self.connection.session_timeout,
            "priority": self.connection.priority,
        }

    def _before_call(self) -> None:
        try:
            self.worker.call(
                f"{__name__}:open_rpc_session",
                self._connection_json(),
                self.reuse_session,
                timeout=self.connect_timeout,
            )
        except (WorkerError, WorkerTimeout, WorkerCrashed) as err:
            connection = self.connection
            where = f"{connection.tracker_host}:{connection.tracker_port}"
            raise DeviceUnavailableError(
                f"device {self.device.name!r}: no RPC session with key {connection.key!r} "
                f"from the tracker at {where} within {self.connect_timeout:.0f} s "
                f"({str(err).splitlines()[0]}); check that its server is registered: "
                f"python -m tvm.exec.query_rpc_tracker --host {connection.tracker_host} "
                f"--port {connection.tracker_port}"
            ) from err

    def _call_args(self, artifact_path, device_type, args_info, inputs, return_outputs):
        protocol = self.protocol.to_json()
        return (
            self._connection_json(),
            artifact_path,
            device_type,
            args_info,
            protocol,
            inputs,
            return_outputs,
            self.reuse_session,
        )
