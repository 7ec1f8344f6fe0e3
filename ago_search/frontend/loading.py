"""Read an ONNX file into a checked ModelProto, with errors a user can act on."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from ago_search.errors import ModelError

log = logging.getLogger(__name__)

# ONNX's protobuf limit: a single-file model above this must keep its weights as external data.
_PROTOBUF_LIMIT = 2**31 - 1

QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "QLinearConv",
        "QLinearMatMul",
        "ConvInteger",
        "MatMulInteger",
        "QLinearAdd",
        "QLinearMul",
    }
)
_NON_FP32_FLOATS = {
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.BFLOAT16: "bfloat16",
    onnx.TensorProto.DOUBLE: "float64",
}


def read_model(path: str | os.PathLike) -> onnx.ModelProto:
    """Load `path` (with its external data) and run the ONNX checker.

    Raises ModelError for a missing or damaged file, missing external data, a model the
    checker rejects, an empty graph, or a model that does not compute in float32.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(
            f"Model file '{path}' does not exist or is not a file. Give the path of an .onnx "
            "file (for the bundled examples, run 'python scripts/make_zoo.py' first)."
        )
    size = path.stat().st_size
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise ModelError(
            f"Model file '{path}' ({size} bytes) could not be parsed as an ONNX protobuf "
            f"({exc.__class__.__name__}: {exc}). The file is damaged, truncated, or not an "
            "ONNX model; re-export it (torch.onnx.export, tf2onnx, ...) and try again."
        ) from exc
    if size == 0 or not model.HasField("graph"):
        raise ModelError(
            f"Model file '{path}' ({size} bytes) holds no ONNX graph. The file is empty or "
            "not an ONNX model; re-export it and try again."
        )
    _load_external_data(model, path)
    _check(model, path)
    _check_not_empty(model, path)
    check_float_model(model, path)
    return model


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    from onnx.external_data_helper import load_external_data_for_model, uses_external_data

    external = [t for t in model.graph.initializer if uses_external_data(t)]
    if not external:
        return
    missing = set()
    for tensor in external:
        location = next((e.value for e in tensor.external_data if e.key == "location"), None)
        if location is None or not (path.parent / location).is_file():
            missing.add(str(location))
    if missing:
        raise ModelError(
            f"Model '{path}' keeps {len(external)} weight tensors as external data, but "
            f"{', '.join(sorted(missing))} was not found next to it in '{path.parent}'. Copy "
            "the data file(s) beside the model (same names as when it was saved)."
        )
    try:
        load_external_data_for_model(model, str(path.parent))
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"Model '{path}': its external weight data could not be read ({exc}). The data "
            "file is damaged or does not belong to this model; re-export it."
        ) from exc


def _check(model: onnx.ModelProto, path: Path) -> None:
    try:
        if model.ByteSize() > _PROTOBUF_LIMIT:
            onnx.checker.check_model(str(path))
        else:
            onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
        raise ModelError(
            f"Model '{path}' is not a valid ONNX model: the ONNX checker says: {first}. "
            "Fix the exporter settings (or run onnx.checker.check_model on it to see the "
            "whole report) and re-export."
        ) from exc


def _check_not_empty(model: onnx.ModelProto, path: Path) -> None:
    graph = model.graph
    if not graph.node:
        raise ModelError(
            f"Model '{path}' has an empty graph (no operator nodes), so there is nothing to "
            "optimize. Check that the export wrote the model you meant."
        )
    if not graph.output:
        raise ModelError(
            f"Model '{path}' declares no graph outputs, so nothing it computes can be "
            "measured or verified. Re-export it with its outputs named."
        )


def check_float_model(model: onnx.ModelProto, path: str | Path) -> None:
    """ago-search optimizes float32 models: reject quantized and other-precision ones."""
    graph = model.graph
    quantized = sorted({n.op_type for n in graph.node if n.op_type in QUANTIZED_OPS})
    if quantized:
        raise ModelError(
            f"Model '{path}' is quantized (it uses {', '.join(quantized)}); ago-search "
            "optimizes float32 models only. Give it the float32 model from before "
            "quantization."
        )
    other = set()
    for value in list(graph.input) + list(graph.output):
        elem = value.type.tensor_type.elem_type
        if elem in _NON_FP32_FLOATS:
            other.add(f"{value.name} is {_NON_FP32_FLOATS[elem]}")
    for tensor in graph.initializer:
        if tensor.data_type in _NON_FP32_FLOATS:
            other.add(f"weights are {_NON_FP32_FLOATS[tensor.data_type]}")
            break
    if other:
        raise ModelError(
            f"Model '{path}' does not compute in float32 ({'; '.join(sorted(other))}); "
            "ago-search optimizes float32 models only. Export it in float32 (e.g. "
            "model.float() before torch.onnx.export)."
        )
    has_fp32 = any(
        v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        for v in list(graph.input) + list(graph.output)
    ) or any(t.data_type == onnx.TensorProto.FLOAT for t in graph.initializer)
    if not has_fp32:
        raise ModelError(
            f"Model '{path}' has no float32 inputs, outputs or weights: it is an integer "
            "model, and ago-search optimizes float32 models only."
        )


def model_opset(model: onnx.ModelProto) -> int:
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            return entry.version
    return 1
