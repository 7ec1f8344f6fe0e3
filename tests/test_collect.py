"""Trace collection: a tiny model's tasks under two seeds, tuned, exported with model labels
that the cost model's loader reads, and a second run that measures nothing new."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from model_builders import conv_relu

from ago_search.collect import collect, load_task_weights, pass_targets, resolve_models
from ago_search.database import TuningDatabase, read_jsonl
from ago_search.errors import AgoSearchError
from ago_search.measure import MeasureProtocol

FAST = MeasureProtocol(warmup=1, repeat=3, min_repeat_ms=2.0)


def test_pass_targets():
    assert pass_targets(64, 8, 16) == [8, 24, 40, 56, 64]
    assert pass_targets(2, 8, 16) == [2]
    with pytest.raises(AgoSearchError):
        pass_targets(0, 1, 1)


def test_resolve_models(tmp_path):
    path = tmp_path / "tiny.onnx"
    onnx.save(conv_relu(batch=1), path)
    assert resolve_models([str(path)], zoo=tmp_path)[0].name == "tiny"
    with pytest.raises(AgoSearchError):
        resolve_models(["no-such-model"], zoo=tmp_path)


@pytest.mark.slow
def test_collect_tiny_model(tmp_path):
    model = tmp_path / "tiny.onnx"
    onnx.save(conv_relu(batch=1), model)
    out, db = tmp_path / "traces", tmp_path / "collect.db"
    options = dict(
        models=[str(model)],
        db=db,
        out=out,
        seeds=("tvm", "intensive"),
        trials_per_task=2,
        first_trials=2,
        protocol=FAST,
        seed=0,
    )
    report = collect(**options)
    export = out / "collect.jsonl.gz"
    assert Path(report.export) == export and export.exists()
    assert report.tasks >= 1 and report.new_records >= report.tasks
    assert report.statuses["ok"] > 0

    lines = list(read_jsonl(export))
    task_keys = {line["task_key"] for line in lines if line["kind"] == "task"}
    assert {line["task_key"] for line in lines if line["kind"] == "record"} <= task_keys
    labels = json.loads((out / "models.json").read_text())
    info = json.loads((out / "tasks.json").read_text())
    assert set(labels) == task_keys == set(info)
    assert all(models == ["tiny"] for models in labels.values())
    assert all(v["weights"]["tiny"] >= 1 and v["seeds"] for v in info.values())
    # the group's operators, for the op nodes of the cost model's graphs
    assert all(v["ops"] and all(op["op"] for op in v["ops"]) for v in info.values())
    assert any(op["complex"] for v in info.values() for op in v["ops"])
    assert load_task_weights(out, "tiny").keys() == task_keys

    from cost_model.input_pipeline import load_dataset

    dataset = load_dataset(out)
    assert dataset.tasks, "no task with two featurisable ok records"
    assert all(t.models == ("tiny",) for t in dataset.tasks)
    for task in dataset.tasks:
        assert task.weight == info[task.task_key]["weights"]["tiny"]
        n_ops = len(info[task.task_key]["ops"])
        assert all(g.n_node == g.n_store + n_ops for g in task.graphs)

    with TuningDatabase(db, read_only=True) as store:
        records = len(store)
    again = collect(**options)
    assert again.new_records == 0 and again.records_after == records


def test_collect_labels_only_measures_nothing(tmp_path):
    model = tmp_path / "tiny.onnx"
    onnx.save(conv_relu(batch=1), model)
    out, db = tmp_path / "traces", tmp_path / "collect.db"
    report = collect(models=[str(model)], db=db, out=out, seeds=("tvm",), labels_only=True)
    assert report.stopped == "labels only" and report.tasks >= 1
    assert not db.exists() and not (out / "collect.jsonl.gz").exists()
    info = json.loads((out / "tasks.json").read_text())
    assert len(info) == report.tasks and all(v["ops"] for v in info.values())
