"""Devices: the host CPU (detected) and device profiles from `configs/devices/*.toml`.

A `DeviceProfile` says everything the optimizer needs to know about where a model will run:
the TVM target to compile for, how many threads to run with, how to reach the device (this
process's machine, or a TVM RPC tracker and key), which cross compiler links its libraries,
and its cache sizes (features for the cost model). Its `key` names the device in the tuning
database, so records measured on one device are never mistaken for another's.

The host target names the CPU (`mcpu`, from LLVM's detection of this machine) so that code
uses its vector units, and `num-cores`, which MetaSchedule requires. The target gets no
`mtriple`: LLVM's own host triple is the right one, and the triple LLVM reports here
(`x86_64-conda-linux-gnu`, from the toolchain TVM's wheel was built with) names a vendor the
system's linker has never heard of.

A profile file looks like `configs/devices/pixel7.toml`:

    name = "pixel7"                       # defaults to the file's stem
    key = "pixel7-tensor-g2"              # database key; defaults to the name
    threads = 4                           # defaults to the target's num-cores
    cross_compiler = "aarch64-linux-gnu-g++"
    [target]                              # a TVM target dict, given to tvm.target.Target
    kind = "llvm"
    mtriple = "aarch64-linux-gnu"
    mattr = ["+neon"]
    num-cores = 4                         # defaults to threads
    [connection]
    kind = "rpc"                          # or "local"
    tracker = "127.0.0.1:9190"
    key = "pixel7"                        # the key the device's RPC server registered with
    session_timeout = 60
    [cache]
    l1d = "64K"                           # bytes, or a size with K/M/G
    l2 = "1M"
    l3 = "4M"
"""

from __future__ import annotations

import os
import platform
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tvm
from tvm.target import codegen

from ago_search.errors import AgoSearchError

__all__ = [
    "DEVICES_DIR",
    "CacheSizes",
    "DeviceProfile",
    "DeviceProfileError",
    "LocalConnection",
    "RPCConnection",
    "available_devices",
    "detect_host",
    "host_cache_sizes",
    "host_cpu_name",
    "host_mcpu",
    "host_num_cores",
    "host_target",
    "load_device",
    "parse_size",
]

# Shipped profiles; `load_device("pixel7")` reads DEVICES_DIR / "pixel7.toml".
DEVICES_DIR = Path(__file__).resolve().parents[1] / "configs" / "devices"

_SYSFS_CACHE = Path("/sys/devices/system/cpu/cpu0/cache")


class DeviceProfileError(AgoSearchError):
    """A device name or profile file that cannot be used as given."""


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


def parse_size(value: int | str) -> int:
    """Bytes from an int or a size string: 32768, '32K', '1M', '1 MiB', '4G'."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size must be >= 0, got {value}")
        return value
    if not isinstance(value, str):
        raise ValueError(f"not a size: {value!r}")
    text = value.strip().upper().replace(" ", "")
    for suffix in ("IB", "B"):
        if text.endswith(suffix) and len(text) > len(suffix):
            text = text[: -len(suffix)]
            break
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    digits = text.rstrip("KMG")
    if not digits.isdigit():
        raise ValueError(f"not a size: {value!r} (use bytes or e.g. '32K', '1M')")
    return int(digits) * scale


@dataclass(frozen=True)
class CacheSizes:
    """Data cache sizes in bytes of one core's path to memory; 0 where unknown or absent."""

    l1d: int = 0
    l2: int = 0
    l3: int = 0

    def to_json(self) -> dict:
        return {"l1d": self.l1d, "l2": self.l2, "l3": self.l3}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CacheSizes:
        return cls(**{name: parse_size(data.get(name, 0)) for name in ("l1d", "l2", "l3")})


def host_cache_sizes(sysfs: Path = _SYSFS_CACHE) -> CacheSizes:
    """CPU 0's data/unified caches from sysfs (index*/level, type, size); 0 where unreadable."""
    sizes = {1: 0, 2: 0, 3: 0}
    for index in sorted(sysfs.glob("index*")):
        try:
            level = int((index / "level").read_text())
            kind = (index / "type").read_text().strip()
            size = parse_size((index / "size").read_text())
        except (OSError, ValueError):
            continue
        if kind in ("Data", "Unified") and level in sizes:
            sizes[level] = size
    return CacheSizes(l1d=sizes[1], l2=sizes[2], l3=sizes[3])


@dataclass(frozen=True)
class LocalConnection:
    """The device is the CPU this process runs on: measured in a subprocess here."""

    kind: str = field(default="local", init=False)

    def to_json(self) -> dict:
        return {"kind": "local"}


@dataclass(frozen=True)
class RPCConnection:
    """The device serves TVM RPC through a tracker, under `key`.

    shares_host_cpu: the RPC server runs on this machine's cores (a test server on 127.0.0.1,
    an emulator): its measurements then also exclude builds and measurements on the host.
    """

    tracker_host: str
    tracker_port: int
    key: str
    session_timeout: float = 60.0
    priority: int = 1
    shares_host_cpu: bool = False
    kind: str = field(default="rpc", init=False)

    def __post_init__(self) -> None:
        if not 0 < self.tracker_port < 65536:
            raise ValueError(f"tracker port must be in 1..65535, got {self.tracker_port}")
        if not self.key:
            raise ValueError("an RPC connection needs the device's key")
        if self.session_timeout <= 0:
            raise ValueError(f"session_timeout must be > 0, got {self.session_timeout}")

    def to_json(self) -> dict:
        return {
            "kind": "rpc",
            "tracker": f"{self.tracker_host}:{self.tracker_port}",
            "key": self.key,
            "session_timeout": self.session_timeout,
            "priority": self.priority,
            "shares_host_cpu": self.shares_host_cpu,
        }


Connection = LocalConnection | RPCConnection


def _freeze_target(target: Mapping[str, Any]) -> dict[str, Any]:
    # A deep copy with lists kept as lists: the caller's dict can change, the profile's cannot.
    return {k: list(v) if isinstance(v, list | tuple) else v for k, v in target.items()}


@dataclass(frozen=True)
class DeviceProfile:
    """Where a model runs: target, threads, connection, cross compiler and cache sizes.

    target: a TVM target dict ({"kind": "llvm", "mcpu": ..., "num-cores": ...}); `tvm_target()`
    makes the Target. key: the device's name in the tuning database. cross_compiler: the
    compiler that links exported libraries (None: the host's `g++`).
    """

    name: str
    key: str
    target: dict[str, Any] = field(hash=False)
    threads: int
    connection: Connection = field(default_factory=LocalConnection)
    cross_compiler: str | None = None
    caches: CacheSizes = field(default_factory=CacheSizes)
    description: str = ""

    def __post_init__(self) -> None:
        target = _freeze_target(self.target)
        if target.get("kind") is None:
            raise ValueError("the target needs a 'kind' (e.g. 'llvm')")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        target.setdefault("num-cores", self.threads)
        object.__setattr__(self, "target", target)

    @property
    def is_local(self) -> bool:
        return isinstance(self.connection, LocalConnection)

    @property
    def num_cores(self) -> int:
        return int(self.target["num-cores"])

    def tvm_target(self) -> tvm.target.Target:
        return tvm.target.Target(dict(self.target))

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "key": self.key,
            "target": _freeze_target(self.target),
            "threads": self.threads,
            "connection": self.connection.to_json(),
            "cross_compiler": self.cross_compiler,
            "cache": self.caches.to_json(),
            "description": self.description,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeviceProfile:
        """A profile from its JSON (or TOML) form; raises ValueError naming a bad field."""
        return _profile_from_mapping(data, default_name=None)


def detect_host(threads: int | None = None) -> DeviceProfile:
    """The CPU this process runs on: mcpu and caches detected, all usable cores by default."""
    cores = threads if threads is not None else host_num_cores()
    mcpu = host_mcpu()
    return DeviceProfile(
        name="host",
        key=f"host-{mcpu}",
        target={"kind": "llvm", "mcpu": mcpu, "num-cores": cores},
        threads=cores,
        connection=LocalConnection(),
        cross_compiler=None,
        caches=host_cache_sizes(),
        description=host_cpu_name(),
    )


_TOP_FIELDS = {"name", "key", "target", "threads", "connection", "cross_compiler", "cache"}
_TOP_FIELDS |= {"description"}


class _FieldError(ValueError):
    def __init__(self, field_name: str, message: str):
        super().__init__(f"field '{field_name}': {message}")
        self.field_name = field_name


def _require_int(value: Any, field_name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _FieldError(field_name, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _connection_from(data: Any) -> Connection:
    if data is None:
        return LocalConnection()
    if not isinstance(data, Mapping):
        raise _FieldError("connection", "must be a table with kind = 'local' or 'rpc'")
    kind = data.get("kind", "local")
    if kind == "local":
        extra = set(data) - {"kind"}
        if extra:
            raise _FieldError(
                f"connection.{sorted(extra)[0]}", "a local connection takes no options"
            )
        return LocalConnection()
    if kind != "rpc":
        raise _FieldError("connection.kind", f"must be 'local' or 'rpc', got {kind!r}")
    known = {"kind", "tracker", "tracker_host", "tracker_port", "key", "session_timeout"}
    known |= {"priority", "shares_host_cpu"}
    extra = set(data) - known
    if extra:
        raise _FieldError(f"connection.{sorted(extra)[0]}", f"unknown; known: {sorted(known)}")
    if "tracker" in data:
        tracker = data["tracker"]
        host, sep, port = str(tracker).rpartition(":")
        if not sep or not host or not port.isdigit():
            raise _FieldError("connection.tracker", f"must be 'host:port', got {tracker!r}")
        tracker_host, tracker_port = host, int(port)
    else:
        if "tracker_host" not in data or "tracker_port" not in data:
            raise _FieldError("connection.tracker", "an RPC connection needs tracker = 'host:port'")
        tracker_host = str(data["tracker_host"])
        tracker_port = _require_int(data["tracker_port"], "connection.tracker_port")
    key = data.get("key")
    if not isinstance(key, str) or not key:
        raise _FieldError("connection.key", "an RPC connection needs the server's key (a string)")
    timeout = data.get("session_timeout", 60.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise _FieldError("connection.session_timeout", f"must be seconds > 0, got {timeout!r}")
    shares = data.get("shares_host_cpu", False)
    if not isinstance(shares, bool):
        raise _FieldError("connection.shares_host_cpu", f"must be true or false, got {shares!r}")
    try:
        return RPCConnection(
            tracker_host=tracker_host,
            tracker_port=tracker_port,
            key=key,
            session_timeout=float(timeout),
            priority=_require_int(data.get("priority", 1), "connection.priority", 0),
            shares_host_cpu=shares,
        )
    except ValueError as err:
        raise _FieldError("connection", str(err)) from err


def _profile_from_mapping(data: Mapping[str, Any], default_name: str | None) -> DeviceProfile:
    extra = set(data) - _TOP_FIELDS
    if extra:
        raise _FieldError(sorted(extra)[0], f"unknown; known fields: {sorted(_TOP_FIELDS)}")
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise _FieldError("name", "a profile needs a name (a non-empty string)")
    key = data.get("key", name)
    if not isinstance(key, str) or not key:
        raise _FieldError("key", f"must be a non-empty string, got {key!r}")

    target = data.get("target")
    if not isinstance(target, Mapping):
        raise _FieldError("target", "a profile needs a [target] table (a TVM target dict)")
    if "kind" not in target:
        raise _FieldError("target.kind", "missing (e.g. kind = 'llvm')")
    cores = target.get("num-cores")
    threads = data.get("threads", cores)
    if threads is None:
        raise _FieldError("threads", "give threads or target.num-cores")
    threads = _require_int(threads, "threads")
    if cores is not None:
        _require_int(cores, "target.num-cores")
    target = _freeze_target(target)
    target.setdefault("num-cores", threads)
    try:
        tvm.target.Target(dict(target))
    except Exception as err:  # TVM raises ValueError or its own errors for a bad target
        raise _FieldError("target", f"TVM rejects it: {str(err).splitlines()[0]}") from err

    compiler = data.get("cross_compiler")
    if compiler is not None and (not isinstance(compiler, str) or not compiler):
        raise _FieldError("cross_compiler", f"must be a compiler command, got {compiler!r}")

    cache = data.get("cache", {})
    if not isinstance(cache, Mapping):
        raise _FieldError("cache", "must be a table with l1d, l2, l3")
    sizes = {}
    for level, value in cache.items():
        if level not in ("l1d", "l2", "l3"):
            raise _FieldError(f"cache.{level}", "unknown; known: l1d, l2, l3")
        try:
            sizes[level] = parse_size(value)
        except ValueError as err:
            raise _FieldError(f"cache.{level}", str(err)) from err

    description = data.get("description", "")
    if not isinstance(description, str):
        raise _FieldError("description", "must be a string")
    return DeviceProfile(
        name=name,
        key=key,
        target=target,
        threads=threads,
        connection=_connection_from(data.get("connection")),
        cross_compiler=compiler,
        caches=CacheSizes(**sizes),
        description=description,
    )


def _load_profile_file(path: Path) -> DeviceProfile:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as err:
        raise DeviceProfileError(f"{path}: cannot read the device profile ({err})") from err
    except tomllib.TOMLDecodeError as err:
        raise DeviceProfileError(f"{path}: not valid TOML ({err}); fix the file") from err
    try:
        return _profile_from_mapping(data, default_name=path.stem)
    except ValueError as err:
        raise DeviceProfileError(
            f"{path}: {err}; see configs/devices/pixel7.toml for a complete profile"
        ) from err


def available_devices() -> list[str]:
    """Names `load_device` accepts besides paths: 'host' and the shipped profiles."""
    shipped = sorted(p.stem for p in DEVICES_DIR.glob("*.toml")) if DEVICES_DIR.is_dir() else []
    return ["host", *[name for name in shipped if name != "host"]]


def load_device(name_or_path: str | os.PathLike[str]) -> DeviceProfile:
    """'host' (detected), a path to a TOML profile, or the name of one in configs/devices/.

    Raises DeviceProfileError (an AgoSearchError) naming the file and the bad field.
    """
    text = str(name_or_path)
    if text == "host":
        return detect_host()
    path = Path(text).expanduser()
    if path.suffix == ".toml" or path.exists() or os.sep in text:
        if not path.is_file():
            raise DeviceProfileError(f"{path}: no such device profile file")
        return _load_profile_file(path)
    shipped = DEVICES_DIR / f"{text}.toml"
    if shipped.is_file():
        return _load_profile_file(shipped)
    raise DeviceProfileError(
        f"unknown device {text!r}: give 'host', a path to a .toml profile, or one of "
        f"{', '.join(available_devices())}"
    )
