"""The main job end to end on a tiny model: outputs, verification, interruption and resume,
a two-node Ray cluster, and the errors a user can cause."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from model_builders import residual_block

from ago_search.cli import main

# Options that keep a search of seconds meaningful: short slices, few samples per estimate.
FAST = {"slice_s": 6.0, "samples": 16, "estimator_workers": 1}


def _block() -> onnx.ModelProto:
    """A residual block: two convs to fuse or not."""
    return residual_block()


@pytest.fixture(scope="module")
def block_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "block.onnx"
    onnx.save(_block(), path)
    return path


def _search_script(model: Path, out: Path, budget: float) -> list[str]:
    code = textwrap.dedent(
        f"""
        import sys
        from ago_search import api
        result = api.search({str(model)!r}, {budget!r}, out={str(out)!r}, progress=False, **{FAST!r})
        sys.exit(130 if result.interrupted else 0)
        """
    )
    return [sys.executable, "-c", code]


def _search_records(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("select name from sqlite_master where type='table'")}
        assert "records" in tables, tables
        columns = {r[1] for r in conn.execute("pragma table_info(records)")}
        trace = "trace_hash" if "trace_hash" in columns else "trace"
        return list(conn.execute(f"select task_key, {trace} from records"))


def _wait_for_records(db: Path, more_than: int, timeout: float, proc=None) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            stderr = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"the search exited ({proc.returncode}) early: {stderr[-3000:]}")
        if db.exists():
            try:
                count = len(_search_records(db))
            except (sqlite3.Error, AssertionError):
                count = 0
            if count > more_than:
                return count
        time.sleep(0.5)
    raise AssertionError(f"no more than {more_than} records in {db} after {timeout} s")


@pytest.mark.slow
@pytest.mark.alone
def test_stopped_searches_resume_measure_nothing_twice_and_finish_verified(block_path, tmp_path):
    out = tmp_path / "out"
    db = out / "tuning.db"
    # The first two runs are stopped long before their budget ends; the third is given a
    # budget that leaves it 100 s (a run starts in 20-60 s: Ray, the estimators, the GNN's
    # first compile; two of them spent all of a 120-s budget on a 2-core AMD EPYC)
    budget = 600.0

    # Ctrl-C: stops within seconds, exit 130, state and measurements kept
    proc = subprocess.Popen(_search_script(block_path, out, budget), stderr=subprocess.PIPE)
    first = _wait_for_records(db, 2, timeout=120, proc=proc)
    proc.send_signal(signal.SIGINT)
    stopped = time.monotonic()
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr.decode()[-2000:]
    assert time.monotonic() - stopped < 30
    state = json.loads((out / "search-state.json").read_text())
    assert state["spent_s"] > 0 and not state["finished"]
    after_sigint = len(_search_records(db))
    assert after_sigint >= first

    # kill -9: nothing committed is lost
    proc = subprocess.Popen(_search_script(block_path, out, budget), stderr=subprocess.PIPE)
    _wait_for_records(db, after_sigint + 2, timeout=120, proc=proc)
    proc.kill()
    proc.communicate(timeout=30)
    after_kill = len(_search_records(db))
    spent_before = json.loads((out / "search-state.json").read_text())["spent_s"]

    # the command again, its budget 100 s more than spent: tunes, and ends on time (the last
    # round that fits before the finish's reserve ends up to a round early)
    budget = spent_before + 100.0
    result = subprocess.run(
        _search_script(block_path, out, budget), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    records = _search_records(db)
    assert len(records) >= after_kill
    assert len(records) == len(set(records)), "a schedule was measured twice"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verified"] is True and summary["finished"] is True
    assert summary["measurements_this_run"] > 0
    assert budget - 45 <= summary["spent_s"] <= budget + 10
    assert summary["latency_s"]["ago_search"] > 0
    assert summary["latency_s"]["tvm_default"] is None  # a short search's finish leaves it out
    assert summary["plans_scored"] >= 3  # at least the three seeds
    assert summary["measurements"] == len(records)
    # every verified end-to-end timing timed the plan's kernels inside the model too (the
    # final build's at least: on a slow machine a 75-s search may time no leader before it)
    timed = [e for e in summary["end_to_end"] if e["verified"]]
    assert [e for e in timed if e.get("final")], summary["end_to_end"]
    assert all(e["kernels_in_model_s"] > 0 and e["kernels_alone_s"] > 0 for e in timed)

    # the deployable library: the TVM runtime alone loads it and computes ORT's outputs
    check = textwrap.dedent(
        f"""
        import numpy as np, tvm
        from tvm import relax
        vm = relax.VirtualMachine(tvm.runtime.load_module({str(out / "model.so")!r}), tvm.cpu())
        x = np.load({str(tmp_path / "x.npy")!r})
        np.save({str(tmp_path / "y.npy")!r}, vm["main"](tvm.runtime.tensor(x)).numpy())
        """
    )
    x = np.random.default_rng(0).uniform(-1, 1, (1, 8, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    subprocess.run([sys.executable, "-c", check], check=True, timeout=120)
    (expected,) = ort.InferenceSession(str(block_path)).run(None, {"x": x})
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected, rtol=1e-4, atol=1e-4)
    plan = json.loads((out / "plan.json").read_text())
    assert plan["format"] == "ago-search-plan" and plan["groups"]


@pytest.mark.slow
@pytest.mark.alone
def test_search_on_a_two_node_ray_cluster(block_path, tmp_path):
    import ray
    from ray.cluster_utils import Cluster

    from ago_search import api

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        result = api.search(
            block_path,
            45.0,  # 25 s scored no plan on a 2-core AMD EPYC
            out=tmp_path / "out",
            progress=False,
            slice_s=6.0,
            samples=16,
            estimator_workers=2,
        )
    finally:
        ray.shutdown()
        cluster.shutdown()
    summary = result.summary
    assert summary["verified"] is True
    assert summary["estimator_nodes"] == 2  # the estimators ran on both nodes
    assert summary["plans_scored"] >= 3


def _error_of(capsys, *argv: str) -> str:
    code = main(list(argv))
    captured = capsys.readouterr()
    assert code == 2, captured
    assert "Traceback" not in captured.err
    return captured.err


def test_bad_budget_unknown_flag_and_missing_model_are_one_message(capsys, block_path, tmp_path):
    err = _error_of(capsys, str(block_path), "--budget", "2 fortnights", "--out", str(tmp_path))
    assert "--budget '2 fortnights'" in err and "45s, 20m, 2h" in err
    with pytest.raises(SystemExit) as exit_info:
        main([str(block_path), "--budget", "1m", "--bogus-flag"])
    assert exit_info.value.code == 2
    assert "--bogus-flag" in capsys.readouterr().err
    err = _error_of(capsys, str(tmp_path / "missing.onnx"), "--budget", "1m")
    assert "missing.onnx" in err


def test_an_output_folder_of_another_model_is_refused(capsys, block_path, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "search-state.json").write_text(
        json.dumps(
            {
                "format": "ago-search-state",
                "version": 1,
                "model": {"path": "other.onnx", "graph": "0" * 16, "inputs": {"x": [1, 3]}},
                "device_key": "host-x",
                "budget_s": 60,
            }
        )
    )
    err = _error_of(capsys, str(block_path), "--budget", "1m", "--out", str(out))
    assert "another model" in err and "other.onnx" in err
