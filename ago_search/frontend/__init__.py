"""ONNX -> Relax: validate, fix input shapes, fold shape subgraphs, scan support, import.

`import_onnx(path, input_shapes)` is the one entry point. Every error a user can cause is a
`ModelError` whose message names the file (or the flag) and says what to do.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from ago_search.errors import ModelError
from ago_search.frontend.folding import FoldReport, fold_shape_subgraphs
from ago_search.frontend.loading import check_float_model, model_opset, read_model
from ago_search.frontend.shapes import (
    InputSpec,
    parse_input_shape,
    random_inputs,
    resolve_input_specs,
    set_input_shapes,
)
from ago_search.frontend.support import normalise_opset, scan_unsupported_ops

__all__ = [
    "ImportedModel",
    "InputSpec",
    "import_onnx",
    "parse_input_shape",
    "parse_input_shapes",
    "prepare_onnx",
    "random_inputs",
]

log = logging.getLogger(__name__)


@dataclass
class ImportedModel:
    """A model ready for the optimizer: the ONNX model TVM imported and its Relax module."""

    path: str
    onnx_model: onnx.ModelProto  # static shapes, shape subgraphs folded; ORT runs it too
    mod: object  # tvm.IRModule: Relax, weights bound as constants
    inputs: list[InputSpec]
    output_names: list[str]
    opset: int
    original_opset: int
    fold: FoldReport
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return Path(self.path).stem


def parse_input_shapes(values: list[str] | None) -> dict[str, tuple[int, ...]]:
    """Parse repeated `--input-shape NAME=DIMS` flags; a name given twice is an error."""
    shapes: dict[str, tuple[int, ...]] = {}
    for text in values or []:
        name, shape = parse_input_shape(text)
        if name in shapes and shapes[name] != shape:
            raise ModelError(
                f"--input-shape gives input '{name}' twice with different shapes "
                f"({'x'.join(map(str, shapes[name]))} and {'x'.join(map(str, shape))}); "
                "give it once."
            )
        shapes[name] = shape
    return shapes


def prepare_onnx(
    path: str | Path, input_shapes: dict[str, tuple[int, ...]] | None = None
) -> tuple[onnx.ModelProto, list[InputSpec], int, int, FoldReport, dict[str, float]]:
    """Everything before TVM: load, check, fix shapes, fold, normalise opset, scan ops."""
    seconds = {}
    start = time.perf_counter()
    model = read_model(path)
    name = str(path)
    seconds["load"] = time.perf_counter() - start

    start = time.perf_counter()
    specs = resolve_input_specs(model, dict(input_shapes or {}), name)
    set_input_shapes(model, specs)
    original_opset = model_opset(model)
    model, opset = normalise_opset(model, original_opset, name)
    model, fold = fold_shape_subgraphs(model, opset)
    check_float_model(model, name)
    seconds["fold"] = time.perf_counter() - start
    scan_unsupported_ops(model, name)
    return model, specs, opset, original_opset, fold, seconds


def import_onnx(
    path: str | Path, input_shapes: dict[str, tuple[int, ...]] | None = None
) -> ImportedModel:
    """Load an ONNX file and import it into a Relax module with static shapes."""
    model, specs, opset, original_opset, fold, seconds = prepare_onnx(path, input_shapes)
    start = time.perf_counter()
    mod = _import_relax(model, specs, str(path), opset)
    seconds["import"] = time.perf_counter() - start
    return ImportedModel(
        path=str(path),
        onnx_model=model,
        mod=mod,
        inputs=specs,
        output_names=[o.name for o in model.graph.output],
        opset=opset,
        original_opset=original_opset,
        fold=fold,
        seconds=seconds,
    )


def _import_relax(model: onnx.ModelProto, specs: list[InputSpec], name: str, opset: int):
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    shape_dict = {s.name: list(s.shape) for s in specs}
    dtype_dict = {s.name: s.dtype for s in specs}
    with warnings.catch_warnings():
        # from_onnx re-runs the checker and warns on things we already reported.
        warnings.simplefilter("ignore")
        try:
            mod = from_onnx(model, shape_dict=shape_dict, dtype_dict=dtype_dict, opset=opset)
        except Exception as exc:
            message = str(exc).strip().splitlines()
            detail = message[-1] if message else exc.__class__.__name__
            raise ModelError(
                f"TVM's ONNX importer failed on model '{name}' (opset {opset}): "
                f"{exc.__class__.__name__}: {detail}. If the failing operator's inputs are "
                "computed at run time, fix the input shapes with --input-shape; otherwise "
                "report the operator, or re-export the model with a different opset."
            ) from exc
    mod = relax.transform.Normalize()(mod)
    _check_static(mod, name)
    return mod


def _check_static(mod, name: str) -> None:
    """A search compiles for fixed shapes: any symbolic shape left is an import problem."""
    from tvm import relax, tirx

    main = mod["main"]
    for param in main.params:
        ty = param.ty
        if isinstance(ty, relax.TensorType) and ty.shape is not None:
            dims = getattr(ty.shape, "values", None)
            if dims is not None and not all(isinstance(d, tirx.IntImm) for d in dims):
                raise ModelError(
                    f"Model '{name}': input '{param.name}' still has a symbolic shape "
                    f"{list(dims)} after import; fix it with --input-shape."
                )
