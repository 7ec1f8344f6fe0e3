"""Tests for the model zoo generator (scripts/make_zoo.py).

The zoo is generated into ``datasets/zoo`` itself, which doubles as a cache: the generator skips
models whose manifest entry is current, so a re-run costs only the sha256 checks. Tests that
must regenerate (determinism, CLI, failure handling) use small models in ``tmp_path``.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import make_zoo  # noqa: E402

ZOO_DIR = REPO / "datasets" / "zoo"
EXPORTERS = {make_zoo.EXPORTER_LEGACY, make_zoo.EXPORTER_DYNAMO, make_zoo.EXPORTER_HELPER}
REQUIRED_FIELDS = {
    "file",
    "exporter",
    "opset",
    "inputs",
    "input_dtypes",
    "input_ranges",
    "outputs",
    "symbolic_dims",
    "param_count",
    "generator_version",
    "sha256",
    "size_bytes",
}
ONNX_TO_NUMPY = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64"}


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    """The full zoo, generated once into datasets/zoo (cached across runs)."""
    return make_zoo.make_zoo(ZOO_DIR)


@pytest.fixture(scope="module")
def models(manifest: dict[str, Any]) -> dict[str, onnx.ModelProto]:
    """Every zoo model loaded once (they are small: ~100 MB together)."""
    return {
        name: onnx.load(str(ZOO_DIR / entry["file"])) for name, entry in manifest["models"].items()
    }


def _session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _feeds(entry: dict[str, Any], shapes: dict[str, Sequence[int]] | None = None) -> dict:
    return make_zoo.make_inputs(
        shapes or entry["inputs"], entry["input_dtypes"], entry["input_ranges"], seed=1
    )


def _has_chain(graph: onnx.GraphProto, tensor: str, chain: Sequence[str]) -> bool:
    """True if walking producers back from ``tensor`` meets the op types of ``chain`` in order.

    Other ops may sit in between (Unsqueeze, Cast, Slice, ...), as exporters put them there.
    """
    producer = {out: node for node in graph.node for out in node.output}
    seen: set[tuple[str, int]] = set()
    stack = [(tensor, 0)]
    while stack:
        name, k = stack.pop()
        node = producer.get(name)
        if node is None or (name, k) in seen:
            continue
        seen.add((name, k))
        if node.op_type == chain[k]:
            k += 1
            if k == len(chain):
                return True
        stack.extend((i, k) for i in node.input if i)
    return False


def test_zoo_lists_required_models() -> None:
    required = {"resnet18", "mobilenetv2", "squeezenet", "shufflenet", "dbnet", "bert_tiny"}
    assert required | {"vit_tiny", "mlp"} <= set(make_zoo.ZOO_MODELS)
    assert len(set(make_zoo.ZOO_MODELS)) == len(make_zoo.ZOO_MODELS)


def test_manifest_on_disk_is_the_returned_one(manifest: dict[str, Any]) -> None:
    on_disk = json.loads((ZOO_DIR / make_zoo.MANIFEST_NAME).read_text())
    assert on_disk == manifest
    assert manifest["format_version"] == make_zoo.MANIFEST_FORMAT
    assert list(manifest["models"]) == make_zoo.ZOO_MODELS


@pytest.mark.parametrize("name", make_zoo.ZOO_MODELS)
def test_manifest_entry_matches_file(
    name: str, manifest: dict[str, Any], models: dict[str, onnx.ModelProto]
) -> None:
    entry = manifest["models"][name]
    assert set(entry) >= REQUIRED_FIELDS
    assert entry["generator_version"] == make_zoo.GENERATOR_VERSION
    assert entry["exporter"] in EXPORTERS
    path = ZOO_DIR / entry["file"]
    assert path.stat().st_size == entry["size_bytes"]
    assert make_zoo.sha256_file(path) == entry["sha256"]
    assert entry["param_count"] > 0

    model = models[name]
    assert make_zoo.ai_onnx_opset(model) == entry["opset"]
    assert make_zoo.has_symbolic_dims(model) == entry["symbolic_dims"]
    initializers = {t.name for t in model.graph.initializer}
    graph_inputs = [v for v in model.graph.input if v.name not in initializers]
    assert [v.name for v in graph_inputs] == list(entry["inputs"])
    for v in graph_inputs:
        assert ONNX_TO_NUMPY[v.type.tensor_type.elem_type] == entry["input_dtypes"][v.name]
        declared = [
            d.dim_value if d.HasField("dim_value") else None for d in v.type.tensor_type.shape.dim
        ]
        concrete = entry["inputs"][v.name]
        assert len(declared) == len(concrete)
        assert all(d is None or d == c for d, c in zip(declared, concrete, strict=True))
    assert [v.name for v in model.graph.output] == list(entry["outputs"])


def test_models_are_self_contained(
    manifest: dict[str, Any], models: dict[str, onnx.ModelProto]
) -> None:
    for name, model in models.items():
        external = [
            t.name for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
        ]
        assert not external, f"{name} has external initializers {external[:3]}"
        assert not (ZOO_DIR / (manifest["models"][name]["file"] + ".data")).exists()


def test_every_exporter_kind_is_present(manifest: dict[str, Any]) -> None:
    kinds = {e["exporter"] for e in manifest["models"].values()}
    assert kinds == EXPORTERS
    legacy_opsets = {
        e["opset"] for e in manifest["models"].values() if e["exporter"] == make_zoo.EXPORTER_LEGACY
    }
    assert len(legacy_opsets) >= 2, "legacy exports should use more than one opset"


def test_dbnet_has_symbolic_dims_and_runtime_resize_sizes(
    manifest: dict[str, Any], models: dict[str, onnx.ModelProto]
) -> None:
    entry = manifest["models"]["dbnet"]
    assert entry["symbolic_dims"] is True
    assert entry["declared_inputs"]["input"] == [1, 3, "height", "width"]
    assert entry["inputs"]["input"] == [1, 3, 320, 320]
    graph = models["dbnet"].graph
    resizes = [n for n in graph.node if n.op_type == "Resize"]
    assert resizes
    # at least one Resize takes its output sizes (input 3) from the run-time feature-map shape
    assert any(
        len(n.input) > 3 and n.input[3] and _has_chain(graph, n.input[3], ["Concat", "Shape"])
        for n in resizes
    )
    assert {"ConvTranspose", "Sigmoid", "Concat"} <= {n.op_type for n in graph.node}


def test_legacy_bert_keeps_shape_gather_concat_reshape_chain(
    manifest: dict[str, Any], models: dict[str, onnx.ModelProto]
) -> None:
    assert manifest["models"]["bert_tiny"]["exporter"] == make_zoo.EXPORTER_LEGACY
    assert manifest["models"]["bert_tiny"]["symbolic_dims"] is True
    graph = models["bert_tiny"].graph
    reshapes = [n for n in graph.node if n.op_type == "Reshape"]
    assert any(_has_chain(graph, n.input[1], ["Concat", "Gather", "Shape"]) for n in reshapes)


@pytest.mark.parametrize("name", make_zoo.ZOO_MODELS)
def test_model_runs_in_onnxruntime(name: str, manifest: dict[str, Any]) -> None:
    entry = manifest["models"][name]
    outputs = _session(ZOO_DIR / entry["file"]).run(None, _feeds(entry))
    assert [list(o.shape) for o in outputs] == list(entry["outputs"].values())
    for out in outputs:
        assert np.isfinite(out).all()
        assert out.std() > 0, "constant output: weights or BN statistics degenerate"


def test_dynamic_models_run_at_other_shapes(manifest: dict[str, Any]) -> None:
    dbnet = manifest["models"]["dbnet"]
    (prob,) = _session(ZOO_DIR / dbnet["file"]).run(
        None, _feeds(dbnet, {"input": [1, 3, 192, 288]})
    )
    assert prob.shape == (1, 1, 192, 288)
    assert ((prob >= 0) & (prob <= 1)).all()
    bert = manifest["models"]["bert_tiny"]
    (hidden,) = _session(ZOO_DIR / bert["file"]).run(None, _feeds(bert, {"input_ids": [1, 17]}))
    assert hidden.shape == (1, 17, 128)


def test_up_to_date_models_are_skipped(manifest: dict[str, Any]) -> None:
    path = ZOO_DIR / manifest["models"]["mlp"]["file"]
    before = path.stat()
    again = make_zoo.make_zoo(ZOO_DIR, models=["mlp"])
    after = path.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert again["models"]["mlp"] == manifest["models"]["mlp"]


@pytest.mark.slow
def test_regeneration_is_byte_identical(manifest: dict[str, Any], tmp_path: Path) -> None:
    names = ["mlp", "bert_tiny", "squeezenet"]  # one per exporter, all cheap
    for name in names:
        entry = manifest["models"][name]
        if entry["onnx_version"] != onnx.__version__ or entry["torch_version"] not in (
            None,
            make_zoo.torch.__version__,
        ):
            pytest.skip(f"cached {name} was made with other torch/onnx versions")
    fresh = make_zoo.make_zoo(tmp_path, models=names)
    assert set(fresh["models"]) == set(names)
    for name in names:
        assert fresh["models"][name]["sha256"] == manifest["models"][name]["sha256"], name


def test_tampered_file_is_regenerated_and_force_rewrites(tmp_path: Path) -> None:
    first = make_zoo.make_zoo(tmp_path, models=["mlp"])["models"]["mlp"]
    path = tmp_path / first["file"]
    path.write_bytes(path.read_bytes()[:-1])
    again = make_zoo.make_zoo(tmp_path, models=["mlp"])["models"]["mlp"]
    assert make_zoo.sha256_file(path) == again["sha256"] == first["sha256"]
    inode = path.stat().st_ino
    make_zoo.make_zoo(tmp_path, models=["mlp"], force=True)
    assert path.stat().st_ino != inode  # rewritten (atomic replace) even though up to date


def test_verification_failure_is_loud_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = dataclasses.replace(make_zoo.SPECS["mlp"], tol=-1.0)  # any difference fails
    monkeypatch.setitem(make_zoo.SPECS, "mlp", broken)
    with pytest.raises(make_zoo.ZooError, match="differs from the reference"):
        make_zoo.make_zoo(tmp_path, models=["mlp"])
    assert not list(tmp_path.glob("*.onnx")) and not list(tmp_path.glob(".*partial*"))


def test_unknown_model_name_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown zoo model"):
        make_zoo.make_zoo(tmp_path, models=["resnet1000"])


def test_cli(tmp_path: Path) -> None:
    script = REPO / "scripts" / "make_zoo.py"
    ok = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path), "--models", "mlp"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    written = json.loads((tmp_path / make_zoo.MANIFEST_NAME).read_text())
    assert list(written["models"]) == ["mlp"]
    bad = subprocess.run(
        [sys.executable, str(script), "--out", str(tmp_path), "--models", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1 and "unknown zoo model" in bad.stderr
