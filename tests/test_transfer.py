"""Transfer tuning (`schedule.transfer`): a task's rounds open with similar tasks' schedules."""

from __future__ import annotations

import math

import onnx
from hypothesis import given
from hypothesis import strategies as st
from model_builders import conv, make_model, residual_block, two_conv_sizes

from ago_search.database import Status
from ago_search.devices import detect_host
from ago_search.layout import vector_lanes
from ago_search.measure import MeasureProtocol
from ago_search.pipeline import load_planned
from ago_search.schedule.config import TuningConfig
from ago_search.schedule.transfer import (
    _TILE,
    TraceShape,
    fit_tile,
    read_trace,
    vector_decisions,
)
from ago_search.schedule.tune import TuningSession
from cost_model.factory import make_cost_model

FAST = MeasureProtocol(warmup=1, repeat=3, min_repeat_ms=2.0)


@given(
    factors=st.lists(st.integers(1, 64), min_size=2, max_size=4),
    extent=st.integers(1, 3000),
    cap=st.sampled_from([None, 16, 64]),
)
def test_fitted_tiles_multiply_to_the_extent(factors, extent, cap):
    fitted = fit_tile(factors, extent, cap)
    assert len(fitted) == len(factors)
    assert math.prod(fitted) == extent
    assert all(f >= 1 for f in fitted)
    if cap:
        assert fitted[-1] <= cap


@given(factors=st.lists(st.integers(1, 16), min_size=2, max_size=4))
def test_tiles_that_fit_already_are_kept(factors):
    assert fit_tile(factors, math.prod(factors)) == factors


def _conv_tasks(model, tmp_path):
    """The host and the conv tasks of `model` (an ONNX ModelProto) under TVM's fusion."""
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    host = detect_host()
    convs = [t for t in load_planned(path, plan="tvm", device=host).tasks if "conv2d" in t.name]
    assert len(convs) == 2, [t.name for t in convs]
    return host, convs


def _config(trials: int, seed: int, **options) -> TuningConfig:
    """One round of `trials` per tuning call, fast timings, no untuned kernels."""
    return TuningConfig(
        trials=trials,
        trials_per_round=trials,
        population_size=64,
        protocol=FAST,
        measure_untuned=False,
        seed=seed,
        **options,
    )


def _tiles(shape):
    return [d for (kind, _), d in zip(shape.kinds, shape.decisions, strict=True) if kind == _TILE]


def test_a_sibling_task_opens_with_the_others_best_schedule(tmp_path):
    """The residual block's two convs are one conv with two epilogues (bias + ReLU; bias +
    residual + ReLU): the second, tuned after the first, gets the first's best tiles in its
    first round, measured and verified as its own record; the round keeps its size."""
    host, convs = _conv_tasks(residual_block(), tmp_path)
    first, second = sorted(convs, key=lambda t: "add_add" in t.name)
    # without vector seeds: the sibling's own seed would be the donor's seed, and the donor's
    # schedule would come over as that
    config = _config(4, seed=3, vector_seeds=False)
    with TuningSession(host, tmp_path / "tuning.db", config) as session:
        model = make_cost_model("xgb", seed=3)
        session.tune([first], config, cost_model=model)
        donor = session.store.best(first.key, host.key)[0]
        session.tune([second], config, cost_model=model)
        sent = session.transfer.transferred.get(second.key, set())
        records = session.store.records(second.key, host.key)
        report = session.transfer.report()
    assert report["candidates"] == len(sent) and report["tasks"] == 1
    assert sent, "nothing was transferred to the sibling"
    assert len(records) == 4
    borrowed = [r for r in records if r.trace_hash in sent]
    assert borrowed and all(r.status == Status.OK for r in borrowed)
    donor_shape = read_trace(donor.trace_json)
    got = [read_trace(r.trace_json) for r in borrowed]
    # the same loops: every decision (tiles, unroll, compute location) and the structure
    # (where the write cache sits) come over unchanged
    assert (donor_shape.decisions, donor_shape.structure) in [
        (g.decisions, g.structure) for g in got
    ]


def test_a_conv_of_another_size_gets_tiles_fitted_to_its_loops(tmp_path):
    """The second conv reads 16 channels where the first reads 8: the first's best schedule
    comes over with its tiles fitted to the second's loops, and runs right."""
    host, convs = _conv_tasks(two_conv_sizes(), tmp_path)
    config = _config(4, seed=5, vector_seeds=False)
    with TuningSession(host, tmp_path / "tuning.db", config) as session:
        model = make_cost_model("xgb", seed=5)
        session.tune([convs[0]], config, cost_model=model)
        donor = read_trace(session.store.best(convs[0].key, host.key)[0].trace_json)
        session.tune([convs[1]], config, cost_model=model)
        sent = session.transfer.transferred.get(convs[1].key, set())
        borrowed = [
            r for r in session.store.records(convs[1].key, host.key) if r.trace_hash in sent
        ]
    assert len(borrowed) == 1 and borrowed[0].status == Status.OK
    got = read_trace(borrowed[0].trace_json)
    assert got.extents != donor.extents  # another conv
    expected = [
        fit_tile(theirs, extent, cap or None)
        for theirs, extent, cap in zip(_tiles(donor), got.extents, got.caps, strict=True)
    ]
    assert _tiles(got) == expected


def test_without_transfer_nothing_is_sent(tmp_path):
    host, convs = _conv_tasks(residual_block(), tmp_path)
    config = _config(2, seed=3, transfer=False)
    with TuningSession(host, tmp_path / "tuning.db", config) as session:
        model = make_cost_model("xgb", seed=3)
        for task in convs:
            session.tune([task], config, cost_model=model)
        assert not session.transfer.transferred


@given(
    extents=st.lists(st.sampled_from([1, 3, 7, 14, 16, 24, 56, 144, 1000]), min_size=1, max_size=4),
    reductions=st.lists(st.sampled_from([1, 3, 32]), max_size=2),
    lanes=st.sampled_from([4, 8, 16]),
)
def test_vector_seeds_tile_every_loop_and_vectorise_the_innermost(extents, reductions, lanes):
    """Multi-level tiling's loops (4 parts spatial, 2 parts reduction): every seed's tiles
    multiply to their loops' extents; the innermost spatial loop longer than 1 is tiled
    innermost by a multiple of the lanes wherever its extent has one within the cap."""
    kinds = [(_TILE, 4)] * len(extents) + [(_TILE, 2)] * len(reductions)
    all_extents = list(extents) + list(reductions)
    shape = TraceShape(
        ("conv2d_nhwc",),
        tuple(kinds),
        tuple(all_extents),
        tuple([None] * len(kinds)),
        (64,) * len(extents) + (0,) * len(reductions),
    )
    decisions = vector_decisions(shape, lanes, block=4, width=2, jobs=4)
    long = [e for e in extents if e > 1]
    if not long:
        assert decisions is None
        return
    assert decisions is not None
    for tiles, extent in zip(decisions, all_extents, strict=True):
        assert math.prod(tiles) == extent
    vectorised = max(i for i, e in enumerate(extents) if e > 1)
    innermost = decisions[vectorised][-1]
    if any(d % lanes == 0 for d in range(lanes, 65, lanes) if extents[vectorised] % d == 0):
        assert innermost % lanes == 0 and innermost <= 64
    else:
        assert innermost <= 2 * lanes


def test_a_depthwise_convs_first_round_opens_vectorised_along_its_channels(tmp_path):
    """An NHWC depthwise conv's first round holds a vector seed: its own design space with
    the channels (the contiguous axis) tiled innermost by a multiple of the lanes, measured and
    verified as its record."""
    node, weights = conv("dw", "x", 48, 48, 3, pad=1, group=48)
    model = make_model(
        [node, onnx.helper.make_node("Relu", ["dw"], ["y"])],
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 48, 14, 14])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 48, 14, 14])],
        weights,
    )
    path = tmp_path / "dw.onnx"
    onnx.save(model, path)
    host = detect_host()
    (task,) = [
        t for t in load_planned(path, plan="tvm/NHWC", device=host).tasks if "conv2d" in t.name
    ]
    config = _config(4, seed=1)
    with TuningSession(host, tmp_path / "tuning.db", config) as session:
        session.tune([task], config, cost_model=make_cost_model("xgb", seed=1))
        seeds = session.transfer.seeds.get(task.key, set())
        records = session.store.records(task.key, host.key)
        report = session.transfer.report()
    assert seeds and report["vector_seeds"] == len(seeds)
    assert len(records) == 4  # the round kept its size
    seeded = [r for r in records if r.trace_hash in seeds]
    assert seeded and all(r.status == Status.OK for r in seeded)
    lanes = vector_lanes(task.target_object())
    tiles = _tiles(read_trace(seeded[0].trace_json))
    spatial = [t for t in tiles if len(t) == 4]
    # (n, h, w, c, the group's one channel): c, 48 long, innermost by a multiple of the lanes
    channels = [t for t in spatial if math.prod(t) == 48][-1]
    assert channels[-1] % lanes == 0
