"""The CLI as a user meets it: a real process, readable output, errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from model_builders import conv_relu

TRACES = Path(__file__).parent / "data" / "smoke_traces.jsonl.gz"


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ago_search.cli", *args],
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_inspect_prints_ops_and_groups(tmp_path):
    path = tmp_path / "conv.onnx"
    onnx.save(conv_relu(), path)
    result = _cli(
        "inspect", str(path), "--input-shape", "x=1x3x8x8", "--json", str(tmp_path / "i.json")
    )
    assert result.returncode == 0, result.stderr
    assert "relax.nn.conv2d" in result.stdout
    assert "TVM default fusion: 1 groups" in result.stdout
    report = json.loads((tmp_path / "i.json").read_text())
    conv = next(op for op in report["summary"]["ops"] if op["op"] == "relax.nn.conv2d")
    assert conv["flops"] == 2 * 4 * 8 * 8 * 3 * 3 * 3
    assert report["tvm_default_groups"]["count"] == 1


def test_bench_writes_verified_json(tmp_path):
    path = tmp_path / "conv.onnx"
    onnx.save(conv_relu(), path)
    out = tmp_path / "bench.json"
    result = _cli(
        "bench",
        str(path),
        "--input-shape",
        "x=1x3x8x8",
        "--threads",
        "1",
        "--repeat",
        "3",
        "--min-repeat-ms",
        "5",
        "--json",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "onnxruntime" in result.stdout and "tvm-default" in result.stdout
    data = json.loads(out.read_text())
    runtimes = {(r["runtime"], r["threads"]) for r in data["runs"]}
    assert runtimes == {("onnxruntime", 1), ("tvm-default", 1)}
    assert all(len(r["timing"]["samples"]) == 3 for r in data["runs"])


@pytest.mark.slow
def test_user_errors_exit_2_without_traceback(tmp_path):
    path = tmp_path / "conv.onnx"
    onnx.save(conv_relu(), path)
    damaged = tmp_path / "damaged.onnx"
    damaged.write_bytes(path.read_bytes()[:50])
    cases = [
        ("inspect", str(tmp_path / "missing.onnx")),
        ("inspect", str(damaged)),
        ("inspect", str(path)),  # symbolic batch dim not fixed
        ("inspect", str(path), "--input-shape", "image=1x3x8x8"),
        ("bench", str(path), "--input-shape", "x=1x3x8x8", "--repeat", "0"),
    ]
    for args in cases:
        result = _cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("ago-search: error: "), result.stderr


@pytest.mark.slow
def test_train_cost_model_writes_model_and_metrics(tmp_path):
    from cost_model.input_pipeline import load_dataset, split_by_models
    from cost_model.metrics import TaskPrediction, evaluate_tasks
    from cost_model.predictor import Predictor

    out = tmp_path / "cm"
    result = _cli("train-cost-model", str(TRACES), "--out", str(out), "--steps", "20", "--no-xgb")
    assert result.returncode == 0, result.stderr
    assert "pairwise_accuracy" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())

    # the split: whole models held out, every record on one side of it
    dataset = load_dataset(TRACES)
    held_out = metrics["held_out_models"]
    assert held_out and not set(held_out) & set(metrics["train"]["models"])
    assert sorted(held_out + metrics["train"]["models"]) == dataset.models
    train_set, test_set = split_by_models(dataset, held_out)
    assert metrics["train"]["records"] == len(train_set)
    assert metrics["test"]["records"] == len(test_set) == metrics["gnn"]["candidates"]
    assert metrics["train"]["records"] + metrics["test"]["records"] == len(dataset)
    assert metrics["history"][-1]["step"] == 20
    assert "xgb" not in metrics

    # the model written is the one scored: loaded again, it gives the same held-out metrics
    predictor = Predictor.load(out)
    assert predictor.info["trained_on_models"] == metrics["train"]["models"]

    def scores(tasks):
        predictions = [
            TaskPrediction(
                t.task_key, t.latencies, predictor.predict(list(t.graphs)), weight=t.weight
            )
            for t in tasks
        ]
        return evaluate_tasks(predictions)

    held_out_scores = scores(test_set.tasks)
    assert held_out_scores["pairwise_accuracy"] == pytest.approx(
        metrics["gnn"]["pairwise_accuracy"], abs=1e-9
    )
    # and it learned: on its training tasks it orders candidates well above chance (0.5)
    assert scores(train_set.tasks)["pairwise_accuracy"] > 0.65


@pytest.mark.slow
def test_tune_tasks_fills_the_database_and_verifies_the_tuned_build(tmp_path):
    from ago_search.database import Status, TuningDatabase

    path = tmp_path / "conv.onnx"
    onnx.save(conv_relu(), path)
    db, out = tmp_path / "tuning.db", tmp_path / "tuned.json"
    result = _cli(
        "tune-tasks",
        str(path),
        "--input-shape",
        "x=1x3x8x8",
        "--db",
        str(db),
        "--trials",
        "2",
        "--trials-per-round",
        "2",
        "--threads",
        "1",
        "--seed",
        "0",
        "--json",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "tuned build: 1 of 1 kernels got a record" in result.stdout
    report = json.loads(out.read_text())
    assert report["verified"] is True
    assert report["tuning"]["trials_run"] == 2
    assert report["kernels"]["untuned"] == []
    runs = {run["runtime"]: run for run in report["bench"]["runs"]}
    assert set(runs) == {"onnxruntime", "tvm-default", "plan-untuned", "plan-tuned"}
    assert runs["plan-tuned"]["verified"] is True

    # the database holds, for each of the model's tasks, its untuned kernel and the search
    # trials the report counts, none of them a wrong result
    store = TuningDatabase(db, read_only=True)
    try:
        records = store.records(device_key=report["device_key"])
    finally:
        store.close()
    tasks = {task["key"]: task for task in report["tasks"]}
    assert len(tasks) == 1
    assert {r.task_key for r in records} == set(tasks)
    for key, task in tasks.items():
        mine = [r for r in records if r.task_key == key]
        untuned = [r for r in mine if r.extra.get("source") == "untuned"]
        assert len(untuned) == 1 and untuned[0].status is Status.OK
        assert len(mine) - len(untuned) == task["trials"] == task["new_trials"] == 2
        assert all(r.status is not Status.WRONG_RESULT for r in mine)
        assert task["best_seconds"] <= task["untuned_seconds"]


def test_verbose_flag_is_taken_before_or_after_the_command():
    from ago_search.cli import _with_command, build_parser

    parser = build_parser()
    assert parser.parse_args(["-v", "inspect", "m.onnx"]).verbose == 1
    assert parser.parse_args(["inspect", "m.onnx", "-vv"]).verbose == 2
    assert parser.parse_args(["inspect", "m.onnx"]).verbose == 0
    args = parser.parse_args(_with_command(["m.onnx", "--budget", "5m", "-v"]))
    assert args.command == "search" and args.verbose == 1
