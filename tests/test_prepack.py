"""Weights packed by the schedule (MetaSchedule's RewriteLayout): checked, built, equal to ORT."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import te
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.arg_info import ArgInfo
from tvm.s_tir.meta_schedule.runner import RunnerInput

from ago_search.devices import detect_host
from ago_search.measure import MeasureProtocol
from ago_search.measure.builders import build_artifact
from ago_search.measure.local_runner import SubprocessRunner
from ago_search.measure.prepack import SIDECAR, pack_array, read_rewrites, weight_rewrites
from ago_search.plan.apply import LAYOUT_FREE_ATTR
from ago_search.schedule.tasks import workload_module
from ago_search.schedule.verify import ReferenceCheck

FAST = MeasureProtocol(warmup=1, repeat=2, min_repeat_ms=1.0)
N = 64


@pytest.fixture(scope="module")
def target() -> tvm.target.Target:
    return detect_host().tvm_target()


def _matmul_free_b() -> tvm.IRModule:
    """C = A @ B with B (a weight) layout-free, as `mark_prepacked` leaves a kernel."""
    a = te.placeholder((N, N), name="A")
    b = te.placeholder((N, N), name="B")
    k = te.reduce_axis((0, N), name="k")
    c = te.compute((N, N), lambda i, j: te.sum(a[i, k] * b[k, j], axis=k), name="C")
    func = te.create_prim_func([a, b, c]).with_attr(LAYOUT_FREE_ATTR, [1])
    return workload_module(func)


def _packed_schedule(mod: tvm.IRModule, target) -> tvm.IRModule:
    """A tiled schedule of the matmul, then RewriteLayout: B packed in the tiles' order."""
    sch = tvm.s_tir.Schedule(mod)
    i, j, k = sch.get_loops(sch.get_sblock("C"))
    j0, j1 = sch.split(j, [None, 16])
    k0, k1 = sch.split(k, [None, 4])
    sch.reorder(i, j0, k0, k1, j1)
    sch.vectorize(j1)
    postproc = ms.postproc.RewriteLayout()
    postproc._initialize_with_tune_context(ms.TuneContext(mod=mod, target=target))  # noqa: SLF001
    assert postproc.apply(sch)
    return sch.mod


def test_rewrites_are_read_off_the_schedule_and_pack_like_tvm(target) -> None:
    scheduled = _packed_schedule(_matmul_free_b(), target)
    (rewrite,) = weight_rewrites(scheduled)
    assert rewrite.arg == 1
    assert rewrite.shape != (N, N) and int(np.prod(rewrite.shape)) == N * N
    # the parameters the built kernel takes: B in the packed shape
    shapes = [tuple(int(d) for d in a.shape) for a in ArgInfo.from_entry_func(scheduled, True)]
    assert shapes[1] == rewrite.shape
    b = np.arange(N * N, dtype="float32").reshape(N, N)
    ours = pack_array(b, rewrite)
    theirs = rewrite.index_map.map_tensor(tvm.runtime.tensor(b)).numpy()
    np.testing.assert_array_equal(ours, theirs)
    assert not weight_rewrites(_matmul_free_b())  # an unscheduled kernel packs nothing


def _measure(runner, check, mod, library):
    info = ArgInfo.from_entry_func(mod, remove_preproc=True)
    (future,) = runner.run([RunnerInput(library, "llvm", info)])
    return future.result()


def test_the_check_packs_its_inputs_as_the_candidate_does(target, tmp_path) -> None:
    task = _matmul_free_b()
    scheduled = _packed_schedule(task, target)
    library = build_artifact(tvm.ir.save_json(scheduled), dict(target.export()), str(tmp_path))
    assert [r.shape for r in read_rewrites(library)] == [
        r.shape for r in weight_rewrites(scheduled)
    ]
    sidecar = Path(library).parent / SIDECAR

    check = ReferenceCheck()
    check.add("mm", task)
    runner = SubprocessRunner(detect_host(), protocol=FAST, timeout_sec=60, output_hook=check)
    try:
        check.select("mm")
        right = _measure(runner, check, scheduled, library)
        assert right.error_msg is None, right.error_msg
        assert [o.ok for o in check.outcomes] == [True]

        # the same library said to pack B transposed: the check, packing its inputs that
        # way, sees the kernel compute something else
        data = json.loads(sidecar.read_text())
        (entry,) = data
        index_map = tvm.ir.load_json(entry["index_map"])
        swapped = list(reversed(index_map.initial_indices))
        transposed = tvm.tirx.IndexMap(
            list(index_map.initial_indices), list(index_map.map_indices(swapped)), None
        )
        entry["index_map"] = tvm.ir.save_json(transposed)
        sidecar.write_text(json.dumps([entry]))
        check.select("mm")
        wrong = _measure(runner, check, scheduled, library)
        assert wrong.run_secs is None
        assert wrong.error_msg.startswith("wrong result: argument 2"), wrong.error_msg
    finally:
        runner.close()


# ---- a model: weights marked, candidates checked, packed at compile time, equal to ORT -----


def test_a_tuned_model_packs_its_weights_and_matches_onnxruntime(tmp_path, caplog) -> None:
    import logging

    import onnx
    import onnxruntime as ort
    from model_builders import two_conv_sizes

    from ago_search.build import apply_schedules, compile_plan_tuned, pack_weights, run_executable
    from ago_search.database import SqliteDatabase, Status, TuningDatabase
    from ago_search.frontend import random_inputs
    from ago_search.measure.compare import compare_outputs
    from ago_search.pipeline import load_planned
    from ago_search.schedule.config import TuningConfig
    from ago_search.schedule.tune import tune_tasks
    from cost_model.factory import make_cost_model
    from cost_model.features import replay_trace

    path = tmp_path / "two_conv.onnx"
    onnx.save(two_conv_sizes(), path)
    host = detect_host()
    planned = load_planned(path, plan="tvm", device=host)
    convs = [t for t in planned.tasks if t.complex_ops > 0]
    assert len(convs) == 2
    for task in convs:  # the weight and the bias, never the activation
        assert list(task.prim_func.attrs[LAYOUT_FREE_ATTR]) == [1, 2]

    db = tmp_path / "tuning.db"
    config = TuningConfig(trials=8 * len(convs), trials_per_round=4, protocol=FAST, seed=5)
    with caplog.at_level(logging.WARNING, logger="ago_search.schedule.verify"):
        tune_tasks(convs, host, db, config, cost_model=make_cost_model("xgb", seed=5))
    assert "without a check" not in caplog.text  # every packed candidate was checked

    target = host.tvm_target()
    with TuningDatabase(db, read_only=True) as store:
        packing = 0
        for task in convs:
            for record in store.records(task.key, host.key, Status.OK):
                if record.extra.get("source") != "untuned":
                    packing += bool(weight_rewrites(replay_trace(task.mod, record.trace_json).mod))
        assert packing > 0, "no measured schedule packed its weights"
        database = SqliteDatabase(store, host.key, target)
        scheduled, _, _ = apply_schedules(planned.fused, target, database)
        build = compile_plan_tuned(
            planned.prepared.legalized,
            planned.prepared.graph,
            planned.plan,
            target,
            database,
            fused=planned.fused,
        )
    packed = pack_weights(scheduled, target)
    names = [gv.name_hint for gv in packed.get_global_vars()]
    assert any(n.endswith("_prepacked") for n in names), names
    assert not any(n.endswith("_weight_prepack") for n in names), names  # folded away

    feeds = random_inputs(planned.imported.inputs, seed=0)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)
    actual = run_executable(build.executable, [feeds[s.name] for s in planned.imported.inputs])
    checks = compare_outputs(actual, expected, planned.imported.output_names)
    assert all(c.ok for c in checks), checks
