"""Device leases: one measurement at a time per device, and none while a build uses its cores.

A lease is a reader-writer lock made of two files locked with `flock(2)`, so that it holds
across threads, processes and Ray workers of one machine, and is released by the kernel when
its holder dies (a crashed or killed build never leaves a device locked).

- `exclusive()` is what a measurement holds: no other measurement and no build on the same
  cores runs meanwhile.
- `shared()` is what a build holds: any number of builds run together, but not during a
  measurement.

A waiting measurement is not starved by a stream of builds: both pass a turnstile file
first, and the measurement keeps it locked while it waits for the builds already running to
end, so no new build starts in the meantime.

Leases are named: the host's cores are `HOST_CPU` (`host_cpu_lease()`), a device reached over
RPC is `rpc-<key>`; `measurement_leases(profile)` gives the ones a measurement on a device
holds. The lock files live in `$AGO_SEARCH_LEASE_DIR`, else `<tmp>/ago-search-leases`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ago_search.devices import DeviceProfile

__all__ = [
    "HOST_CPU",
    "DeviceLease",
    "LeaseTimeoutError",
    "default_lease_dir",
    "holding_all",
    "host_cpu_lease",
    "measurement_leases",
]

log = logging.getLogger(__name__)

HOST_CPU = "host-cpu"

# How often a lease with a time-out retries its non-blocking lock.
_POLL_SECONDS = 0.005


class LeaseTimeoutError(TimeoutError):
    """A lease was not granted within the time asked for."""


def default_lease_dir() -> Path:
    """$AGO_SEARCH_LEASE_DIR, else <tmp>/ago-search-leases: one place per machine."""
    configured = os.environ.get("AGO_SEARCH_LEASE_DIR")
    return Path(configured) if configured else Path(tempfile.gettempdir()) / "ago-search-leases"


def _open_lock_file(path: Path) -> int:
    # Every acquisition opens its own descriptor: flock locks belong to an open file
    # description, so two threads of one process exclude each other as two processes do.
    # Read-only is enough for flock, so a lock file another user created serves as well.
    return os.open(path, os.O_RDONLY | os.O_CREAT, 0o666)


def _make_lock_dir(directory: Path) -> None:
    if directory.is_dir():
        return
    directory.mkdir(parents=True, exist_ok=True)
    if directory == default_lease_dir():
        # Shared by every user of the machine, like /tmp itself.
        with contextlib.suppress(OSError):
            directory.chmod(0o1777)


def _flock(fd: int, operation: int, deadline: float | None, what: str) -> None:
    if deadline is None:
        fcntl.flock(fd, operation)
        return
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            raise LeaseTimeoutError(f"lease {what} not granted in time")
        time.sleep(_POLL_SECONDS)


class DeviceLease:
    """A named reader-writer lease held across processes (see the module docstring).

    name: letters, digits and -_. (a device key, HOST_CPU); lock_dir: where its files live.
    """

    def __init__(self, name: str, lock_dir: Path | str | None = None):
        if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
            raise ValueError(f"a lease name takes letters, digits and -_. only, got {name!r}")
        self.name = name
        directory = Path(lock_dir) if lock_dir is not None else default_lease_dir()
        _make_lock_dir(directory)
        self.lock_path = directory / f"{name}.lock"
        self.turnstile_path = directory / f"{name}.turnstile"

    def __repr__(self) -> str:
        return f"DeviceLease({self.name!r}, lock_dir={str(self.lock_path.parent)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DeviceLease) and other.lock_path == self.lock_path

    def __hash__(self) -> int:
        return hash(self.lock_path)

    @contextlib.contextmanager
    def exclusive(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the lease alone (a measurement); raises LeaseTimeoutError after `timeout` s."""
        with self._hold(fcntl.LOCK_EX, timeout, "exclusive"):
            yield

    @contextlib.contextmanager
    def shared(self, timeout: float | None = None) -> Iterator[None]:
        """Hold the lease with other sharers (a build); never during an exclusive holder."""
        with self._hold(fcntl.LOCK_SH, timeout, "shared"):
            yield

    @contextlib.contextmanager
    def _hold(self, operation: int, timeout: float | None, mode: str) -> Iterator[None]:
        deadline = None if timeout is None else time.monotonic() + timeout
        what = f"{self.name} ({mode})"
        started = time.monotonic()
        turnstile = _open_lock_file(self.turnstile_path)
        lock = None
        try:
            _flock(turnstile, fcntl.LOCK_EX, deadline, what)
            try:
                lock = _open_lock_file(self.lock_path)
                _flock(lock, operation, deadline, what)
            finally:
                fcntl.flock(turnstile, fcntl.LOCK_UN)
            waited = time.monotonic() - started
            if waited > 1.0:
                log.debug("lease %s granted after %.1f s", what, waited)
            yield
        finally:
            if lock is not None:
                os.close(lock)  # closing the last descriptor releases the lock
            os.close(turnstile)


def host_cpu_lease(lock_dir: Path | str | None = None) -> DeviceLease:
    """The lease of this machine's cores: builds share it, local measurements own it."""
    return DeviceLease(HOST_CPU, lock_dir)


def _rpc_lease_name(key: str) -> str:
    return "rpc-" + re.sub(r"[^A-Za-z0-9_.\-]", "_", key)


def measurement_leases(
    profile: DeviceProfile, lock_dir: Path | str | None = None, slot: int = 0
) -> tuple[DeviceLease, ...]:
    """The leases a measurement on `profile` holds exclusively, in the order to take them.

    A local device is the host's cores. A device over RPC is its own lease (by its RPC key;
    `slot` i > 0: the i-th of several devices under that key a runner measures on at once);
    when its server runs on this machine's cores, the host's lease comes after it.
    """
    from ago_search.devices import RPCConnection

    connection = profile.connection
    if isinstance(connection, RPCConnection):
        name = _rpc_lease_name(connection.key) + (f"-{slot}" if slot else "")
        own = DeviceLease(name, lock_dir)
        if connection.shares_host_cpu:
            return (own, host_cpu_lease(lock_dir))
        return (own,)
    return (host_cpu_lease(lock_dir),)


@contextlib.contextmanager
def holding_all(
    leases: Sequence[DeviceLease], exclusive: bool = True, timeout: float | None = None
) -> Iterator[None]:
    """Hold several leases, taken in the given order (keep one order everywhere)."""
    with contextlib.ExitStack() as stack:
        for lease in leases:
            hold = lease.exclusive if exclusive else lease.shared
            stack.enter_context(hold(timeout))
        yield
