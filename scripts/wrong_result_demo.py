"""Tune one group holding two convolutions and count the candidates that compute wrong results.

TVM_NOTES.md: tuning a group with two convs gave schedules whose output was wrong (max abs
error 285 on values near 66, about 2 % of elements), the "best" one among them. This script
builds such a group (x: 1x64x28x28 -> Conv 3x3 64->64, pad 1 -> Conv 3x3 64->64, pad 1 by
default, an onnx.helper model whose two convs the plan puts in one group), tunes it with
ago-search's tuning (every candidate checked against the untuned kernel on fixed inputs), and
prints how many candidates were wrong and how far off the worst one was.

    .venv/bin/python scripts/wrong_result_demo.py --trials 128
    .venv/bin/python scripts/wrong_result_demo.py --second-kernel 1   # conv3x3 -> conv1x1

The wrong schedules compute the second conv's padding inside the first conv's tiles and
leave its border unwritten: a second conv without padding (1x1) does not show it (0 wrong of
128 in a run here), and on memory that happens to hold zeros the wrong ones look right,
which is why the runner checks candidates on deliberately dirty memory.

The database is a fresh temporary file unless --db is given (a resumed run re-measures
nothing: it reports what the database holds).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ago_search.database import Status, TuningDatabase  # noqa: E402
from ago_search.devices import detect_host  # noqa: E402
from ago_search.pipeline import import_model, plan_model, prepare_model  # noqa: E402
from ago_search.plan import Plan  # noqa: E402
from ago_search.schedule.config import TuningConfig  # noqa: E402
from ago_search.schedule.tune import tune_tasks  # noqa: E402
from cost_model.factory import make_cost_model  # noqa: E402

log = logging.getLogger("wrong_result_demo")

_ABS_ERROR = re.compile(r"max abs error ([0-9.eE+\-]+|inf|nan)")


def two_conv_model(channels: int, size: int, second_kernel: int) -> onnx.ModelProto:
    """x -> Conv 3x3 (pad 1) -> Conv kxk (pad k // 2), weights from a fixed seed."""
    rng = np.random.default_rng(0)

    def weight(name: str, kernel: int) -> onnx.TensorProto:
        scale = 1.0 / np.sqrt(channels * kernel * kernel)
        shape = (channels, channels, kernel, kernel)
        return numpy_helper.from_array(
            rng.uniform(-scale, scale, shape).astype(np.float32) * 4.0, name
        )

    pad = second_kernel // 2
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["c1", "W2"], ["y"], pads=[pad] * 4),
    ]
    shape = [1, channels, size, size]
    graph = helper.make_graph(
        nodes,
        "two_convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [weight("W1", 3), weight("W2", second_kernel)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=128)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--second-kernel", type=int, choices=[1, 3], default=3)
    parser.add_argument("--trials-per-round", type=int, default=16)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--db", type=Path, default=None, help="tuning database (default: temp)")
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(name)s: %(message)s",
    )
    logging.getLogger("ago_search.schedule").setLevel(logging.INFO)

    workdir = Path(tempfile.mkdtemp(prefix="wrong-result-demo-"))
    model_path = workdir / "two_convs.onnx"
    onnx.save(two_conv_model(args.channels, args.size, args.second_kernel), model_path)
    host = detect_host()
    target = host.tvm_target()
    prepared = prepare_model(import_model(model_path), target)
    graph = prepared.graph
    # both convs in one group
    (task,) = plan_model(prepared, Plan.from_groups(graph, [graph.order])).tasks
    print(f"group {task.name}: {task.complex_ops} convolutions, {task.flops / 1e6:.0f} MFLOP")

    db_path = args.db or workdir / "tuning.db"
    config = TuningConfig(
        trials=args.trials,
        trials_per_round=args.trials_per_round,
        seed=args.seed,
    )
    started = time.perf_counter()
    report = tune_tasks([task], host, db_path, config, cost_model=make_cost_model("xgb", args.seed))
    wall = time.perf_counter() - started
    (result,) = report.tasks

    store = TuningDatabase(db_path, read_only=True)
    records = [r for r in store.records(task.key, host.key) if r.extra.get("source") != "untuned"]
    wrong = [r for r in records if r.status is Status.WRONG_RESULT]
    errors = []
    for record in wrong:
        found = _ABS_ERROR.search(record.error or "")
        if found:
            errors.append(float(found.group(1)))
    worst = max(wrong, key=lambda r: _abs_error(r.error), default=None)
    finite = sorted(e for e in errors if np.isfinite(e))
    ok = [r for r in records if r.ok]
    numbers = {
        "task": task.name,
        "model": f"1x{args.channels}x{args.size}x{args.size}: conv3x3 -> conv{args.second_kernel}"
        f"x{args.second_kernel}",
        "trials": len(records),
        "ok": len(ok),
        "wrong_result": len(wrong),
        "other_failures": len(records) - len(ok) - len(wrong),
        "worst_max_abs_err": max(errors) if errors else None,
        "nonfinite_outputs": sum(1 for e in errors if not np.isfinite(e)),
        "largest_finite_max_abs_err": finite[-1] if finite else None,
        "median_max_abs_err": float(np.median(errors)) if errors else None,
        "worst_error": worst.error if worst is not None else None,
        "best_ms": result.best_seconds * 1e3 if result.best_seconds else None,
        "untuned_ms": result.untuned_seconds * 1e3 if result.untuned_seconds else None,
        "wall_s": wall,
    }
    print(
        f"{numbers['trials']} candidates measured: {numbers['ok']} ok, "
        f"{numbers['wrong_result']} wrong results, {numbers['other_failures']} other failures"
    )
    if worst is not None:
        print(f"worst wrong candidate: {worst.error}")
        print(
            f"max abs errors of the wrong ones: median {numbers['median_max_abs_err']:.3g}, "
            f"largest finite {numbers['largest_finite_max_abs_err'] or float('nan'):.3g}, "
            f"{numbers['nonfinite_outputs']} with inf/NaN outputs"
        )
    print(
        f"best verified schedule {_fmt_ms(numbers['best_ms'])} (untuned "
        f"{_fmt_ms(numbers['untuned_ms'])}); tuning took {wall:.0f} s"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(numbers, indent=2) + "\n")
    return 0


def _fmt_ms(value: float | None) -> str:
    return f"{value:.3f} ms" if value is not None else "-"


def _abs_error(error: str | None) -> float:
    found = _ABS_ERROR.search(error or "")
    return float(found.group(1)) if found else 0.0


if __name__ == "__main__":
    sys.exit(main())
