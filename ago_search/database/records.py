"""Records: one measurement of one schedule of one task on one device, as plain data.

A `Record` is what the database stores and what the `datasets/` trace files carry (one JSON
line each, see datasets/README.md). Its identity is (task key, device key, target, trace
hash): the same schedule of the same task measured on the same device is one record, so a
resumed search can ask whether a trace was measured before instead of measuring it again.
Failures are records too (`Status`), and never count as a best.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import statistics
import time
from dataclasses import dataclass, field
from enum import StrEnum
from functools import lru_cache
from typing import Any

import numpy as np

from ago_search.database.keys import target_string

__all__ = [
    "MS_FAILURE_SECONDS",
    "Record",
    "Status",
    "TaskEntry",
    "canonical_json",
    "canonical_target",
    "decode_features",
    "encode_features",
    "trace_hash",
    "trace_to_json",
]

# MetaSchedule's stand-in run time of a candidate that failed to build or run
# (`SortTuningRecordByMeanRunSecs::kMaxMeanTime`); its databases never rank such a record.
MS_FAILURE_SECONDS = 1e10


class Status(StrEnum):
    """Outcome of one measurement. Only `OK` records have a meaningful latency."""

    OK = "ok"
    BUILD_ERROR = "build_error"
    RUN_ERROR = "run_error"
    TIMEOUT = "timeout"
    WRONG_RESULT = "wrong_result"


def canonical_json(obj: Any) -> str:
    """Compact JSON with sorted keys: the same text for equal JSON values."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _plain(obj: Any) -> Any:
    """TVM's JSON-style values (IntImm, FloatImm, Array, Map, String) as plain Python."""
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, list | tuple):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    import tvm
    import tvm_ffi

    if isinstance(obj, tvm.tirx.IntImm | tvm.tirx.FloatImm):
        return obj.value
    if isinstance(obj, tvm_ffi.Array):
        return [_plain(x) for x in obj]
    if isinstance(obj, tvm_ffi.Map):
        return {str(k): _plain(v) for k, v in obj.items()}
    raise TypeError(f"a trace holds a {type(obj).__name__}, which has no JSON form")


def trace_to_json(trace: Any) -> str:
    """A TVM schedule `Trace` as canonical JSON text, postprocessing included, as MetaSchedule
    stores traces: integers and floats plain, index maps as `tvm.ir.save_json` text (what
    `Trace.as_json` gives them as). `Trace.apply_json_to_schedule` replays it."""
    return canonical_json(_plain(trace.as_json(remove_postproc=False)))


def _trace_text(trace: Any) -> str:
    if isinstance(trace, str):
        return canonical_json(json.loads(trace))
    if isinstance(trace, list | dict):
        return canonical_json(_plain(trace))
    return trace_to_json(trace)


def trace_hash(trace: Any) -> str:
    """Identity of a schedule trace: 32 hex digits of sha256 over its canonical JSON.

    Takes a TVM `Trace`, its JSON text or its JSON value. Pass the whole trace (with its
    postprocessing, as `trace_to_json` gives it): one without it hashes differently.
    """
    return _hash_canonical(_trace_text(trace))


def _hash_canonical(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@lru_cache(maxsize=256)
def _canonical_target_text(text: str) -> str:
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = None
        # a target TVM exported (kind, keys and tag present) in canonical form is taken as
        # it is, so that reading records needs no TVM
        is_exported = isinstance(parsed, dict) and {"kind", "keys", "tag"} <= parsed.keys()
        if is_exported and canonical_json(parsed) == text:
            return text
    import tvm

    stripped = text.strip()
    spec: Any = json.loads(stripped) if stripped.startswith("{") else stripped
    return target_string(tvm.target.Target(spec))


def canonical_target(target: Any) -> str:
    """A target as the canonical JSON string tasks are keyed by (`keys.target_string`).

    Takes a `tvm.target.Target`, a target dict or its JSON text (TVM 0.27 no longer parses
    "llvm -mcpu=..." strings); equal targets give equal strings, with TVM's defaults (keys,
    tag) filled in, so a record's target matches the one MetaSchedule records.
    """
    if isinstance(target, str):
        return _canonical_target_text(target)
    if isinstance(target, dict):
        return _canonical_target_text(canonical_json(target))
    return target_string(target)


def encode_features(features: np.ndarray) -> tuple[bytes, list[int]]:
    """Features as little-endian float32 bytes and their shape."""
    array = np.ascontiguousarray(features, dtype="<f4")
    return array.tobytes(), list(array.shape)


def decode_features(data: bytes, shape: list[int] | tuple[int, ...]) -> np.ndarray:
    """The inverse of `encode_features`: a read-only float32 array."""
    array = np.frombuffer(data, dtype="<f4").reshape(tuple(shape)).astype(np.float32)
    array.flags.writeable = False
    return array


def _json_float(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class Record:
    """One measurement of one schedule (a trace) of one task on one device.

    task_key: the task (`keys.task_key`: workload hash @ target digest).
    device_key: the device it was measured on ("host-znver3", "pixel7").
    target: the compilation target, canonical JSON (`canonical_target`; any target form is
        accepted and normalised).
    trace_json: the schedule trace: a TVM `Trace`, its JSON text or its JSON value (see
        `trace_to_json`), stored as canonical JSON text; `trace_hash` is derived from it.
    status: the outcome; only OK records are ever a best.
    latencies: seconds per call of every repeat, in measurement order.
    median: the median of `latencies` (filled in when None).
    error: what went wrong, for failures.
    layout: the group's layout choice, e.g. "NHWC" (informational: a layout is part of the
        task's PrimFunc, so it is part of the task key already).
    features: a cost-model feature matrix (float32), if one was computed; not part of equality.
    measured_at: Unix time of the measurement.
    build_seconds: compile time of the candidate.
    extra: any further JSON-able facts (protocol, number, runner, ...); treat as read-only.
    """

    task_key: str
    device_key: str
    target: str
    trace_json: str
    status: Status = Status.OK
    latencies: tuple[float, ...] = ()
    median: float | None = None
    error: str | None = None
    layout: str | None = None
    features: np.ndarray | None = field(default=None, compare=False, repr=False)
    measured_at: float = field(default_factory=time.time)
    build_seconds: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, hash=False)
    trace_hash: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.task_key or not self.device_key:
            raise ValueError("a Record needs a task_key and a device_key")
        set_ = object.__setattr__
        set_(self, "status", Status(self.status))
        set_(self, "target", canonical_target(self.target))
        set_(self, "trace_json", _trace_text(self.trace_json))
        set_(self, "trace_hash", _hash_canonical(self.trace_json))
        latencies = tuple(float(x) for x in self.latencies)
        set_(self, "latencies", latencies)
        if self.status is Status.OK and not latencies:
            raise ValueError(f"an ok record of task {self.task_key} needs latencies")
        if self.median is None and latencies:
            set_(self, "median", statistics.median(latencies))
        elif self.median is not None:
            set_(self, "median", float(self.median))
        if self.features is not None:
            set_(self, "features", decode_features(*encode_features(self.features)))
        set_(self, "measured_at", float(self.measured_at))
        if self.build_seconds is not None:
            set_(self, "build_seconds", float(self.build_seconds))
        set_(self, "extra", dict(self.extra))

    @property
    def ok(self) -> bool:
        return self.status is Status.OK

    def to_json(self) -> dict[str, Any]:
        """A JSON-able dict (the record part of a datasets/ trace line)."""
        features = None
        if self.features is not None:
            data, shape = encode_features(self.features)
            features = {
                "dtype": "float32",
                "shape": shape,
                "data": base64.b64encode(data).decode("ascii"),
            }
        return {
            "task_key": self.task_key,
            "device_key": self.device_key,
            "target": json.loads(self.target),
            "trace": json.loads(self.trace_json),
            "trace_hash": self.trace_hash,
            "status": str(self.status),
            "latencies": list(self.latencies),
            "median": _json_float(self.median),
            "error": self.error,
            "layout": self.layout,
            "features": features,
            "measured_at": self.measured_at,
            "build_seconds": self.build_seconds,
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Record:
        features = data.get("features")
        array = None
        if features is not None:
            if features.get("dtype", "float32") != "float32":
                raise ValueError(f"features of dtype {features['dtype']}: only float32 is read")
            array = decode_features(base64.b64decode(features["data"]), features["shape"])
        record = cls(
            task_key=data["task_key"],
            device_key=data["device_key"],
            target=data["target"],
            trace_json=data["trace"],
            status=Status(data["status"]),
            latencies=tuple(data.get("latencies") or ()),
            median=data.get("median"),
            error=data.get("error"),
            layout=data.get("layout"),
            features=array,
            measured_at=data["measured_at"],
            build_seconds=data.get("build_seconds"),
            extra=data.get("extra") or {},
        )
        stated = data.get("trace_hash")
        if stated is not None and stated != record.trace_hash:
            raise ValueError(
                f"record of task {record.task_key}: trace_hash {stated} does not match its "
                f"trace ({record.trace_hash})"
            )
        return record


@dataclass(frozen=True)
class TaskEntry:
    """A task the database knows: its key, target, and workload (if its module is stored).

    workload_hash: MetaSchedule's structural hash of the task's IRModule, None when only
    records (no module) were committed for it.
    """

    task_key: str
    target: str
    workload_hash: int | None = None
    name: str | None = None
