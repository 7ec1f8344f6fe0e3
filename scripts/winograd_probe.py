"""Is Winograd worth it here? ResNet-18's 3x3 stride-1 convs (NHWC) tuned as direct convs and as
Winograd F(m, 3) convs with the weights transformed at compile time, same trials each, one
TuningSession, beside ONNX Runtime running the same conv alone:

    .venv/bin/python scripts/winograd_probe.py --trials 32 --tiles 2,4

Prints per shape the best tuned kernel of each variant and ORT's time for the conv. One run on
this machine: a comparison, not a figure for another session.

Run of 2026-12-07 (2-core AMD EPYC znver3, 2 threads, MetaSchedule's XGB guide, 427 s of
tuning; `results/winograd_probe.json`), ORT / direct / F(2,3) / F(4,3) in ms: 56x56x64 1.28 /
1.22 / 1.67 / 1.22; 28x28x128 1.24 / 1.22 / 1.20 / 0.83; 14x14x256 1.21 / 1.74 / 1.32 / 0.65;
7x7x512 1.18 / 1.72 / 1.25 / 1.16.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))
os.environ.setdefault("TVM_NUM_THREADS", "2")

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import tvm_ffi  # noqa: E402
from onnx import TensorProto, helper  # noqa: E402
from tvm import te, topi  # noqa: E402

from ago_search.database.keys import target_string, task_key  # noqa: E402
from ago_search.devices import detect_host  # noqa: E402
from ago_search.graph.winograd import winograd_conv2d  # noqa: E402
from ago_search.layout import ACT, parse_layout, transform_primfunc  # noqa: E402
from ago_search.schedule.config import TuningConfig  # noqa: E402
from ago_search.schedule.tasks import Task, _flops, count_complex_blocks, workload_module  # noqa: E402
from ago_search.schedule.tune import TuningSession  # noqa: E402
from cost_model.factory import make_cost_model  # noqa: E402

SHAPES = [(56, 64), (28, 128), (14, 256), (7, 512)]  # (H=W, C) of ResNet-18's 3x3 s1 convs


def direct(hw: int, c: int):
    data = te.placeholder((1, hw, hw, c), name="data")
    weight = te.placeholder((3, 3, c, c), name="weight")
    out = topi.nn.conv2d_nhwc(data, weight, 1, 1, 1, out_dtype="float32")
    return [data, weight, out]


def winograd(hw: int, c: int, m: int):
    """ago_search's Winograd conv (NCHW in and out, the filter transformed), stored in NHWC the
    way a plan's NHWC group stores it."""
    data = te.placeholder((1, c, hw, hw), name="data")
    kernel_pack = te.placeholder(((m + 2) ** 2, c, c), name="kernel_pack")
    return [data, kernel_pack, winograd_conv2d(data, kernel_pack, m, (1, 1, 1, 1))]


def make_task(name: str, tensors, target, nhwc: bool = False) -> Task:
    func = te.create_prim_func(tensors)
    if nhwc:
        func = transform_primfunc(func, [ACT, None, ACT], parse_layout("NHWC"))
    func = func.with_attr("layout_free_buffers", [1])
    mod = workload_module(func)
    workload = int(tvm_ffi.structural_hash(mod))
    tstr = target_string(target)
    return Task(
        key=task_key(workload, tstr),
        workload=workload,
        target=tstr,
        name=name,
        groups=(name,),
        nodes=((),),
        weight=1,
        flops=_flops(mod),
        complex_ops=count_complex_blocks(mod["main"]),
        mod=mod,
    )


def ort_conv_ms(hw: int, c: int, threads: int) -> float:
    w = np.random.default_rng(0).standard_normal((c, c, 3, 3)).astype("float32")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, hw, hw])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, hw, hw])],
        [helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.ravel())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).standard_normal((1, c, hw, hw)).astype("float32")
    for _ in range(5):
        sess.run(None, {"x": x})
    times = []
    for _ in range(30):
        t = time.perf_counter()
        sess.run(None, {"x": x})
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=32)
    parser.add_argument("--tiles", default="2,4")
    parser.add_argument("--shapes", default="0,1,2,3")
    parser.add_argument("--json", type=Path, default=REPO / "results" / "winograd_probe.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    host = detect_host()
    target = host.tvm_target()
    tiles = [int(t) for t in args.tiles.split(",")]
    shapes = [SHAPES[int(i)] for i in args.shapes.split(",")]
    tasks = []
    for hw, c in shapes:
        with target:
            tasks.append(make_task(f"direct_{hw}_{c}", direct(hw, c), target))
            for m in tiles:
                tasks.append(
                    make_task(f"winograd{m}_{hw}_{c}", winograd(hw, c, m), target, nhwc=True)
                )
    config = TuningConfig(
        trials=args.trials * len(tasks), trials_per_round=16, seed=0, measure_untuned=False
    )
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        with TuningSession(host, Path(tmp) / "tuning.db", config, work_dir=tmp) as session:
            report = session.tune(tasks, config, cost_model=make_cost_model("xgb", seed=0))
        wall = time.perf_counter() - started
    best = {t.name: r.best_seconds for t, r in zip(tasks, report.tasks, strict=True)}
    rows = []
    for hw, c in shapes:
        row = {
            "shape": f"{hw}x{hw}x{c}",
            "gflop": 2 * hw * hw * c * c * 9 / 1e9,
            "ort_ms": ort_conv_ms(hw, c, 2),
        }
        for t in tasks:
            if t.name.endswith(f"_{hw}_{c}"):
                b = best.get(t.name)
                row[t.name.split("_")[0] + "_ms"] = None if b is None else b * 1e3
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"tuning wall {wall:.0f} s", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps({"trials": args.trials, "rows": rows, "wall_s": wall}, indent=1)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
