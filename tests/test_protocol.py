"""The measurement protocol: calibration, counts, statistics, JSON, TVM's time_evaluator form."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from ago_search.measure import protocol as protocol_module
from ago_search.measure.protocol import (
    MeasureProtocol,
    Timing,
    calibrate_number,
    flush_cpu_cache,
    time_callable,
    time_evaluator_kwargs,
)


class FakeWork:
    """A callable whose every call advances a fake clock by the next of `durations` (seconds)."""

    def __init__(self, durations):
        self.durations = list(durations)
        self.now = 0.0
        self.calls = 0
        self.sleeps: list[float] = []

    def __call__(self):
        self.now += self.durations[self.calls % len(self.durations)]
        self.calls += 1

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def test_calibration_reaches_min_repeat_ms():
    work = FakeWork([0.001])
    proto = MeasureProtocol(warmup=2, number=None, repeat=5, min_repeat_ms=10.0)
    timing = time_callable(work, proto, clock=work.clock, sleep=work.sleep)
    assert timing.number * 0.001 >= 0.010
    assert len(timing.samples) == 5
    assert timing.samples == pytest.approx([0.001] * 5)
    # warm-up, calibration batches, then exactly repeat x number timed calls
    calibration_calls = work.calls - 2 - 5 * timing.number
    assert calibration_calls >= timing.number


@pytest.mark.parametrize("per_call", [1e-7, 3e-4, 0.02, 0.5])
def test_calibrated_number_is_just_enough(per_call):
    work = FakeWork([per_call])
    number = calibrate_number(work, 50.0, clock=work.clock)
    assert number * per_call >= 0.050
    # not wildly more than needed: within the 1.6x growth step and the 10 % margin
    assert (number - 1) * per_call < 0.050 * 1.7 or number == 1


def test_fixed_number_ignores_min_repeat_ms():
    work = FakeWork([0.001])
    proto = MeasureProtocol(warmup=3, number=4, repeat=6, min_repeat_ms=1000.0)
    timing = time_callable(work, proto, clock=work.clock, sleep=work.sleep)
    assert timing.number == 4
    assert len(timing.samples) == 6
    assert work.calls == 3 + 4 * 6


def test_zero_min_repeat_means_one_call_per_repeat():
    work = FakeWork([0.001])
    timing = time_callable(
        work, MeasureProtocol(warmup=0, number=None, repeat=3, min_repeat_ms=0.0), work.clock
    )
    assert timing.number == 1
    assert work.calls == 3


def test_cooldown_between_repeats_only():
    work = FakeWork([0.001])
    proto = MeasureProtocol(warmup=0, number=2, repeat=4, cooldown_ms=5.0)
    timing = time_callable(work, proto, clock=work.clock, sleep=work.sleep)
    assert work.sleeps == [0.005] * 3
    # the cool-down is not part of any sample
    assert timing.samples == pytest.approx([0.001] * 4)


def test_cache_flush_before_every_repeat(monkeypatch):
    flushes = []
    monkeypatch.setattr(protocol_module, "flush_cpu_cache", lambda: flushes.append(1))
    work = FakeWork([0.001])
    proto = MeasureProtocol(warmup=1, number=3, repeat=4, flush_cache=True)
    time_callable(work, proto, clock=work.clock, sleep=work.sleep)
    assert len(flushes) == 4


def test_flush_cpu_cache_writes_over_twice_the_last_level_cache():
    assert max(64 << 20, 2 * protocol_module._l3_bytes()) <= protocol_module.FLUSH_BYTES
    buffer = protocol_module._flush_buffer()
    assert buffer.nbytes == protocol_module.FLUSH_BYTES
    before = float(buffer[0])  # other tests may have flushed already
    flush_cpu_cache()
    flush_cpu_cache()
    # every element of the buffer was written by each call, not a part of it
    assert buffer.min() == buffer.max() == before + 2.0


def test_median_and_statistics_of_varying_samples():
    # one call per repeat, durations 1..5 ms in shuffled order
    work = FakeWork([0.003, 0.001, 0.005, 0.002, 0.004])
    proto = MeasureProtocol(warmup=0, number=1, repeat=5)
    timing = time_callable(work, proto, clock=work.clock, sleep=work.sleep)
    assert timing.samples == pytest.approx([0.003, 0.001, 0.005, 0.002, 0.004])
    assert timing.median == pytest.approx(0.003)
    assert timing.mean == pytest.approx(0.003)
    assert timing.min == pytest.approx(0.001)
    assert timing.max == pytest.approx(0.005)
    assert timing.iqr == pytest.approx(0.002)
    assert timing.spread == pytest.approx(2 / 3)
    assert timing.stdev == pytest.approx(np.std([1, 2, 3, 4, 5], ddof=1) / 1000)


def test_real_clock_with_sleeping_callable():
    proto = MeasureProtocol(warmup=1, number=None, repeat=4, min_repeat_ms=5.0)
    timing = time_callable(lambda: time.sleep(0.001), proto)
    assert len(timing.samples) == 4
    assert timing.number >= 1
    assert timing.min <= timing.median <= timing.max
    # time.sleep never returns early, so no sample can be below the sleep
    assert timing.min >= 0.001


def test_timing_json_round_trip():
    timing = Timing(samples=(0.002, 0.001, 0.004), number=7)
    data = json.loads(json.dumps(timing.to_json()))
    assert Timing.from_json(data) == timing
    assert data["median"] == pytest.approx(0.002)
    assert data["number"] == 7


def test_timing_needs_samples():
    with pytest.raises(ValueError):
        Timing(samples=(), number=1)


def test_protocol_json_round_trip_and_validation():
    proto = MeasureProtocol(warmup=0, number=3, repeat=2, min_repeat_ms=1.5, flush_cache=True)
    assert MeasureProtocol.from_json(json.loads(json.dumps(proto.to_json()))) == proto
    for bad in ({"repeat": 0}, {"number": 0}, {"warmup": -1}, {"min_repeat_ms": -1.0}):
        with pytest.raises(ValueError):
            MeasureProtocol(**bad)


def test_time_evaluator_kwargs_shape():
    calibrated = time_evaluator_kwargs(MeasureProtocol(repeat=7, min_repeat_ms=12.5))
    assert calibrated["number"] == 1
    assert calibrated["repeat"] == 7
    assert calibrated["min_repeat_ms"] == 13
    assert calibrated["f_preproc"] == ""
    fixed = time_evaluator_kwargs(
        MeasureProtocol(number=5, repeat=2, cooldown_ms=3.0, flush_cache=True)
    )
    assert fixed["number"] == 5
    assert fixed["min_repeat_ms"] == 0
    assert fixed["cooldown_interval_ms"] == 3
    assert fixed["f_preproc"] == "cache_flush_cpu_non_first_arg"


@pytest.mark.parametrize("flush", [False, True])
def test_time_evaluator_kwargs_are_accepted_by_tvm(flush):
    import tvm
    from tvm import relax
    from tvm.script import ir as I
    from tvm.script import relax as R

    @I.ir_module
    class Module:
        @R.function
        def main(x: R.Tensor((64, 64), "float32"), y: R.Tensor((64, 64), "float32")):
            with R.dataflow():
                z = R.add(x, y)
                R.output(z)
            return z

    target = tvm.target.Target("llvm")
    ex = tvm.compile(Module, target, relax_pipeline=relax.get_default_pipeline(target))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    x = tvm.runtime.tensor(np.ones((64, 64), "float32"))
    vm.save_function("main", "bound", x, x)
    proto = MeasureProtocol(repeat=3, min_repeat_ms=2.0, flush_cache=flush)
    result = vm.time_evaluator("bound", tvm.cpu(), **time_evaluator_kwargs(proto))()
    assert len(result.results) == 3
