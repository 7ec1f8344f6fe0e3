"""The measurement protocol: the one definition of how anything is timed in ago-search.

A protocol is warm-up calls, then `repeat` repeats of `number` back-to-back calls each; the
time of a repeat divided by `number` is one sample. `number` is either fixed or calibrated so
that one repeat lasts at least `min_repeat_ms` (short kernels are otherwise below the clock's
useful resolution and dominated by call overhead). Between repeats the protocol can sleep
(`cooldown_ms`) and flush the CPU caches (`flush_cache`), so that each repeat starts from the
same cold state rather than from the previous repeat's warm one.

`time_callable` applies the protocol to any zero-argument Python callable (ONNX Runtime,
a TVM VM closure, ...); `time_evaluator_kwargs` states the same protocol as arguments of TVM's
own `time_evaluator`, for runners that time compiled kernels inside TVM.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np

__all__ = [
    "FLUSH_BYTES",
    "MeasureProtocol",
    "Timing",
    "calibrate_number",
    "flush_cpu_cache",
    "time_callable",
    "time_evaluator_kwargs",
]

log = logging.getLogger(__name__)

# Calibration stops growing `number` here: a callable this fast is measuring Python, not work.
_MAX_NUMBER = 1_000_000


def _l3_bytes() -> int:
    """Size of the last-level cache of CPU 0 from sysfs, 0 where it cannot be read."""
    for index in (3, 2):
        path = Path(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size")
        try:
            text = path.read_text().strip().upper()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            return int(digits) * scale
    return 0


# Writing over twice the last-level cache (at least 64 MiB) evicts everything a repeat used.
FLUSH_BYTES = max(64 << 20, 2 * _l3_bytes())


@cache
def _flush_buffer() -> np.ndarray:
    return np.zeros(FLUSH_BYTES // 8, dtype=np.float64)


def flush_cpu_cache() -> None:
    """Evict the CPU caches by writing over a buffer larger than the last-level cache."""
    buffer = _flush_buffer()
    buffer += 1.0


@dataclass(frozen=True)
class MeasureProtocol:
    """How to time one thing; the same protocol for every runtime and every candidate.

    number: calls per repeat; None calibrates it so that one repeat lasts >= min_repeat_ms
    (min_repeat_ms is used only then).
    cooldown_ms: sleep between repeats (not counted), as TVM's `cooldown_interval_ms`.
    flush_cache: flush the CPU caches before every repeat (not counted); with a calibrated
    `number` only the first call of a repeat then starts cold, so use number=1 to time cold
    calls only.
    """

    warmup: int = 3
    number: int | None = None
    repeat: int = 10
    min_repeat_ms: float = 50.0
    cooldown_ms: float = 0.0
    flush_cache: bool = False

    def __post_init__(self) -> None:
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.number is not None and self.number < 1:
            raise ValueError(f"number must be >= 1 or None (calibrate), got {self.number}")
        if self.repeat < 1:
            raise ValueError(f"repeat must be >= 1, got {self.repeat}")
        if self.min_repeat_ms < 0 or self.cooldown_ms < 0:
            raise ValueError("min_repeat_ms and cooldown_ms must be >= 0")

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> MeasureProtocol:
        return cls(**data)


@dataclass(frozen=True)
class Timing:
    """Every sample of one measurement: per-call seconds of each repeat, and `number`."""

    samples: tuple[float, ...]  # seconds per call, one per repeat, in measurement order
    number: int  # calls per repeat

    def __post_init__(self) -> None:
        if not self.samples:
            raise ValueError("a Timing needs at least one sample")
        object.__setattr__(self, "samples", tuple(float(s) for s in self.samples))

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.samples)

    @property
    def min(self) -> float:
        return min(self.samples)

    @property
    def max(self) -> float:
        return max(self.samples)

    @property
    def stdev(self) -> float:
        return statistics.stdev(self.samples) if len(self.samples) > 1 else 0.0

    @property
    def iqr(self) -> float:
        """Interquartile range (75th - 25th percentile, linear interpolation), seconds."""
        q25, q75 = np.percentile(self.samples, [25, 75])
        return float(q75 - q25)

    @property
    def spread(self) -> float:
        """IQR relative to the median: the noise figure of this measurement (0.05 = 5 %)."""
        median = self.median
        return self.iqr / median if median > 0 else 0.0

    def to_json(self) -> dict:
        # The statistics are written for readers of the file; from_json recomputes them.
        return {
            "samples": list(self.samples),
            "number": self.number,
            "median": self.median,
            "mean": self.mean,
            "min": self.min,
            "max": self.max,
            "stdev": self.stdev,
            "iqr": self.iqr,
            "spread": self.spread,
        }

    @classmethod
    def from_json(cls, data: dict) -> Timing:
        return cls(samples=tuple(data["samples"]), number=int(data["number"]))


def _timed_batch(fn: Callable[[], object], number: int, clock: Callable[[], float]) -> float:
    start = clock()
    for _ in range(number):
        fn()
    return clock() - start


def calibrate_number(
    fn: Callable[[], object],
    min_repeat_ms: float,
    clock: Callable[[], float] = time.perf_counter,
) -> int:
    """Smallest tried `number` whose batch of calls, measured, lasted >= min_repeat_ms.

    Grows the guess from each batch's measured per-call time (with a 10 % margin, and at least
    x1.6 a step, as TVM's time_evaluator does) until a whole batch is long enough.
    """
    if min_repeat_ms <= 0:
        return 1
    target = min_repeat_ms / 1000.0
    number = 1
    while True:
        elapsed = _timed_batch(fn, number, clock)
        if elapsed >= target or number >= _MAX_NUMBER:
            return number
        if elapsed > 0:
            needed = math.ceil(number * target / elapsed * 1.1)
            number = max(needed, math.ceil(number * 1.6))
        else:
            number *= 10
        number = min(number, _MAX_NUMBER)


def time_callable(
    fn: Callable[[], object],
    protocol: MeasureProtocol,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
) -> Timing:
    """Time a zero-argument callable under `protocol`; every call is one full unit of work.

    Prepare inputs before calling this: whatever `fn` does is what is measured. `clock` and
    `sleep` are injectable for tests; the default clock is `time.perf_counter`.
    """
    for _ in range(protocol.warmup):
        fn()
    number = protocol.number
    if number is None:
        number = calibrate_number(fn, protocol.min_repeat_ms, clock)
    samples = []
    for index in range(protocol.repeat):
        if index > 0 and protocol.cooldown_ms > 0:
            sleep(protocol.cooldown_ms / 1000.0)
        if protocol.flush_cache:
            flush_cpu_cache()
        samples.append(_timed_batch(fn, number, clock) / number)
    timing = Timing(samples=tuple(samples), number=number)
    log.debug(
        "timed %d x %d calls: median %.4g ms, spread %.1f %%",
        protocol.repeat,
        number,
        timing.median * 1e3,
        timing.spread * 100,
    )
    return timing


def time_evaluator_kwargs(protocol: MeasureProtocol) -> dict:
    """The protocol as keyword arguments of TVM's `time_evaluator` (Module's and the VM's).

    TVM calibrates `number` itself from min_repeat_ms (starting from the given `number`), and
    always makes one untimed warm-up call; more warm-up calls are the caller's to make. Its
    cache flush, `cache_flush_cpu_non_first_arg`, evicts the arguments after the first (the
    inputs and weights of a kernel whose first argument is its output) before each repeat,
    where `time_callable` overwrites a buffer larger than the cache: both start every repeat
    with cold inputs. TVM takes whole milliseconds.
    """
    return {
        "number": protocol.number or 1,
        "repeat": protocol.repeat,
        "min_repeat_ms": 0 if protocol.number is not None else math.ceil(protocol.min_repeat_ms),
        "cooldown_interval_ms": math.ceil(protocol.cooldown_ms),
        "repeats_to_cooldown": 1,
        "f_preproc": "cache_flush_cpu_non_first_arg" if protocol.flush_cache else "",
    }
