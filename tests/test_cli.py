"""The CLI as a user meets it: a real process, readable output, errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

import onnx
from model_builders import conv_relu


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


def test_train_cost_model_writes_model_and_metrics(tmp_path):
    from pathlib import Path

    traces = Path(__file__).parent / "data" / "smoke_traces.jsonl.gz"
    out = tmp_path / "cm"
    result = _cli("train-cost-model", str(traces), "--out", str(out), "--steps", "20", "--no-xgb")
    assert result.returncode == 0, result.stderr
    assert "pairwise_accuracy" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["gnn"]["pairwise_accuracy"] <= 1.0
    assert (out / "params.npz").stat().st_size > 0
