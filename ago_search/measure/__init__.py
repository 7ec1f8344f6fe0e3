"""Measurement: the protocol every timing follows (and, later, builders and runners)."""

from ago_search.measure.protocol import (
    FLUSH_BYTES,
    MeasureProtocol,
    Timing,
    calibrate_number,
    flush_cpu_cache,
    time_callable,
    time_evaluator_kwargs,
)

__all__ = [
    "FLUSH_BYTES",
    "MeasureProtocol",
    "Timing",
    "calibrate_number",
    "flush_cpu_cache",
    "time_callable",
    "time_evaluator_kwargs",
]
