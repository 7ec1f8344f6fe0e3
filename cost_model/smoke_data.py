"""A small trace set to test the cost model on and to smoke-train its shipped default.

Six tiny tasks, labelled with three made-up model names, each tuned for a few dozen trials by
MetaSchedule with a random cost model (so the schedules are spread out, not converged), built
and timed in this process, and written as a datasets/ trace file (format 1). The task name
carries the model label: "<model>/<task>" (see `input_pipeline.model_of_task_name`).
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SMOKE_DEVICE", "SMOKE_TARGET", "generate_smoke_traces", "smoke_workloads"]

log = logging.getLogger(__name__)

SMOKE_DEVICE = "host-smoke"
SMOKE_TARGET = {"kind": "llvm", "mcpu": "znver3", "num-cores": 1}


def _matmul(n: int, m: int, k: int) -> Any:
    from tvm import te

    a = te.placeholder((n, k), name="A")
    b = te.placeholder((k, m), name="B")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((n, m), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="C")
    return te.create_prim_func([a, b, c])


def _dense_bias_relu(n: int, m: int, k: int) -> Any:
    from tvm import te, tirx

    a = te.placeholder((n, k), name="A")
    w = te.placeholder((m, k), name="W")
    bias = te.placeholder((m,), name="bias")
    r = te.reduce_axis((0, k), name="k")
    d = te.compute((n, m), lambda i, j: te.sum(a[i, r] * w[j, r], axis=r), name="D")
    e = te.compute((n, m), lambda i, j: d[i, j] + bias[j], name="E")
    f = te.compute((n, m), lambda i, j: tirx.max(e[i, j], tirx.const(0, "float32")), name="F")
    return te.create_prim_func([a, w, bias, f])


def _conv3x3_nhwc(h: int, c: int, o: int) -> Any:
    """A padded 3x3 NHWC conv written out (topi's marks its weight layout-free, and the
    layout MetaSchedule then rewrites it to no longer matches the arguments we time with)."""
    from tvm import te, tirx

    x = te.placeholder((1, h, h, c), name="X")
    w = te.placeholder((3, 3, c, o), name="W")
    pad = te.compute(
        (1, h + 2, h + 2, c),
        lambda n, i, j, k: tirx.if_then_else(
            tirx.all(i >= 1, i <= h, j >= 1, j <= h), x[n, i - 1, j - 1, k], 0.0
        ),
        name="pad",
    )
    rh = te.reduce_axis((0, 3), name="rh")
    rw = te.reduce_axis((0, 3), name="rw")
    rc = te.reduce_axis((0, c), name="rc")
    y = te.compute(
        (1, h, h, o),
        lambda n, i, j, f: te.sum(pad[n, i + rh, j + rw, rc] * w[rh, rw, rc, f], axis=[rh, rw, rc]),
        name="conv",
    )
    return te.create_prim_func([x, w, y])


def _matmul_add(n: int, m: int, k: int) -> Any:
    from tvm import te

    a = te.placeholder((n, k), name="A")
    b = te.placeholder((k, m), name="B")
    s = te.placeholder((n, m), name="S")
    r = te.reduce_axis((0, k), name="k")
    c = te.compute((n, m), lambda i, j: te.sum(a[i, r] * b[r, j], axis=r), name="C")
    d = te.compute((n, m), lambda i, j: c[i, j] + s[i, j], name="D")
    return te.create_prim_func([a, b, s, d])


def smoke_workloads() -> dict[str, Callable[[], Any]]:
    """Task name ("<model>/<task>") -> a function making its PrimFunc."""
    return {
        "model_a/matmul_64": lambda: _matmul(64, 64, 64),
        "model_a/dense_bias_relu_32x128x64": lambda: _dense_bias_relu(32, 128, 64),
        "model_b/conv3x3_nhwc_16x16x16": lambda: _conv3x3_nhwc(16, 16, 16),
        "model_b/matmul_add_128x32x32": lambda: _matmul_add(128, 32, 32),
        "model_c/dense_bias_relu_64x48x96": lambda: _dense_bias_relu(64, 48, 96),
        "model_c/conv3x3_nhwc_8x32x16": lambda: _conv3x3_nhwc(8, 32, 16),
    }


def _in_process_builder_and_runner(artifact_dir: Path) -> tuple[Any, Any]:
    """A builder and runner that work in this process: no worker start-up per round, which
    would cost more than these kernels' builds."""
    import tvm
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.s_tir.meta_schedule.runner.local_runner import LocalRunnerFuture

    @derived_object
    class Builder(ms.builder.PyBuilder):
        def build(self, build_inputs: list) -> list:
            results = []
            for build_input in build_inputs:
                try:
                    lib = tvm.tirx.build(build_input.mod, target=build_input.target)
                except Exception as err:  # a candidate's failure is a record, not an error
                    results.append(ms.builder.BuilderResult(None, str(err)[:2000]))
                    continue
                path = Path(tempfile.mkdtemp(dir=artifact_dir)) / "candidate.so"
                lib.export_library(str(path))
                results.append(ms.builder.BuilderResult(str(path), None))
            return results

    @derived_object
    class Runner(ms.runner.PyRunner):
        def run(self, runner_inputs: list) -> list:
            futures = []
            rng = np.random.default_rng(0)
            for runner_input in runner_inputs:
                lib = tvm.runtime.load_module(runner_input.artifact_path)
                args = [
                    tvm.runtime.tensor(
                        rng.standard_normal([int(d) for d in a.shape]).astype(str(a.dtype))
                    )
                    for a in runner_input.args_info
                ]
                timer = lib.time_evaluator(
                    lib.entry_name, tvm.cpu(), number=3, repeat=3, min_repeat_ms=2
                )
                futures.append(LocalRunnerFuture(res=list(timer(*args).results)))
            return futures

    return Builder(), Runner()


def generate_smoke_traces(out_path: str | Path, trials_per_task: int = 40, seed: int = 0) -> Path:
    """Tune each smoke workload for `trials_per_task` random-model trials and export the
    records (device `SMOKE_DEVICE`) as a trace file at `out_path` (.jsonl.gz)."""
    import tvm
    import tvm_ffi
    from tvm.s_tir import meta_schedule as ms

    from ago_search.database import SqliteDatabase, TuningDatabase, export_jsonl, task_key
    from ago_search.measure import register_cpu_tensor_intrinsics
    from ago_search.schedule.tasks import workload_module

    target = tvm.target.Target(SMOKE_TARGET)
    register_cpu_tensor_intrinsics(target)
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        store = TuningDatabase(tmp_dir / "tuning.db")
        artifacts = tmp_dir / "artifacts"
        artifacts.mkdir()
        builder, runner = _in_process_builder_and_runner(artifacts)
        for i, (name, make) in enumerate(smoke_workloads().items()):
            mod = workload_module(make())
            key = task_key(int(tvm_ffi.structural_hash(mod)), target)
            store.commit_task(key, target, mod, name=name)
            db = SqliteDatabase(store, SMOKE_DEVICE, target)
            log.info("smoke traces: tuning %s (%d trials)", name, trials_per_task)
            ms.tune_tir(
                mod,
                target,
                str(tmp_dir / f"work{i}"),
                max_trials_global=trials_per_task,
                num_trials_per_iter=trials_per_task // 2,
                builder=builder,
                runner=runner,
                database=db,
                cost_model="random",
                measure_callbacks=[
                    db.measure_callback(),
                    *ms.measure_callback.MeasureCallback.create("default"),
                ],
                strategy=ms.search_strategy.EvolutionarySearch(population_size=32),
                num_tuning_cores=1,
                seed=seed + i,
            )
        export_jsonl(store, out_path, device_key=SMOKE_DEVICE)
        store.close()
    return out_path
