"""Graph inputs: concrete shapes from the model and from --input-shape overrides."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from ago_search.errors import ModelError


@dataclass(frozen=True)
class InputSpec:
    """One graph input with a fully concrete shape."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: "float32", "int64", ...

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @classmethod
    def from_json(cls, data: dict) -> InputSpec:
        return cls(data["name"], tuple(data["shape"]), data["dtype"])


_SHAPE_RE = re.compile(r"^\s*([^=]+?)\s*=\s*(\d+(?:\s*[x,]\s*\d+)*)?\s*$")


def parse_input_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """Parse one `--input-shape` value: `name=1x3x224x224` (or `name=1,3,224,224`)."""
    match = _SHAPE_RE.match(text)
    if not match:
        raise ModelError(
            f"--input-shape '{text}' is not of the form NAME=D1xD2x... (for example "
            "input=1x3x224x224; a scalar input is NAME=)."
        )
    name, dims = match.group(1), match.group(2)
    shape = tuple(int(d) for d in re.split(r"\s*[x,]\s*", dims)) if dims else ()
    if any(d <= 0 for d in shape):
        raise ModelError(f"--input-shape '{text}': every dimension must be a positive integer.")
    return name, shape


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs: graph.input minus initializers (old exporters list weights too)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def resolve_input_specs(
    model: onnx.ModelProto, overrides: dict[str, tuple[int, ...]], model_name: str
) -> list[InputSpec]:
    """Concrete InputSpecs, or one ModelError naming every dimension still unknown."""
    inputs = graph_inputs(model)
    names = [i.name for i in inputs]
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ModelError(
            f"--input-shape names {', '.join(repr(u) for u in unknown)}, but model "
            f"'{model_name}' has no such input. Its inputs are: "
            f"{', '.join(_describe(i) for i in inputs)}."
        )
    specs, missing = [], []
    for value in inputs:
        tensor_type = value.type.tensor_type
        if not value.type.HasField("tensor_type"):
            raise ModelError(
                f"Model '{model_name}': input '{value.name}' is not a tensor (sequence, map or "
                "optional inputs are not supported). Re-export with tensor inputs."
            )
        dtype = helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        declared = _dims(value)
        if value.name in overrides:
            shape = overrides[value.name]
            if declared is not None:
                if len(declared) != len(shape):
                    raise ModelError(
                        f"--input-shape {value.name}={'x'.join(map(str, shape))} has rank "
                        f"{len(shape)}, but input '{value.name}' of '{model_name}' has rank "
                        f"{len(declared)} ({_describe(value)})."
                    )
                clash = [
                    (i, d, s)
                    for i, (d, s) in enumerate(zip(declared, shape, strict=True))
                    if isinstance(d, int) and d != s
                ]
                if clash:
                    i, d, s = clash[0]
                    raise ModelError(
                        f"--input-shape {value.name}={'x'.join(map(str, shape))}: dimension "
                        f"{i} is fixed to {d} in model '{model_name}', not {s}. Only symbolic "
                        "dimensions can be set."
                    )
            specs.append(InputSpec(value.name, tuple(shape), dtype))
            continue
        if declared is None:
            missing.append(f"'{value.name}' has unknown rank")
            continue
        symbolic = [(i, d) for i, d in enumerate(declared) if not isinstance(d, int)]
        if symbolic:
            dims = ", ".join(f"dim {i} ({d!r})" for i, d in symbolic)
            missing.append(f"'{value.name}' {_describe(value, with_name=False)}: {dims}")
            continue
        specs.append(InputSpec(value.name, tuple(declared), dtype))
    if missing:
        example = " ".join(
            f"--input-shape {i.name}={'x'.join(str(d) if isinstance(d, int) else 'N' for d in (_dims(i) or ['N']))}"
            for i in inputs
            if i.name not in overrides and i.name not in {s.name for s in specs}
        )
        raise ModelError(
            f"Model '{model_name}' has input dimensions that are not fixed: "
            f"{'; '.join(missing)}. ago-search compiles for static shapes: give every one "
            f"with {example} (replace each N by the size to optimize for; repeat the flag "
            "for each input)."
        )
    return specs


def _dims(value: onnx.ValueInfoProto) -> list[int | str] | None:
    tensor_type = value.type.tensor_type
    if not tensor_type.HasField("shape"):
        return None
    dims: list[int | str] = []
    for d in tensor_type.shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(d.dim_value)
        else:
            dims.append(d.dim_param or "?")
    return dims


def _describe(value: onnx.ValueInfoProto, with_name: bool = True) -> str:
    dims = _dims(value)
    elem = value.type.tensor_type.elem_type
    dtype = helper.tensor_dtype_to_np_dtype(elem).name if elem else "?"
    shape = "?" if dims is None else "[" + ", ".join(str(d) for d in dims) + "]"
    text = f"{dtype}{shape}"
    return f"'{value.name}' {text}" if with_name else text


def set_input_shapes(model: onnx.ModelProto, specs: list[InputSpec]) -> None:
    """Write the concrete shapes into the model's inputs (in place)."""
    by_name = {s.name: s for s in specs}
    for value in model.graph.input:
        spec = by_name.get(value.name)
        if spec is None:
            continue
        shape = value.type.tensor_type.shape
        del shape.dim[:]
        for d in spec.shape:
            shape.dim.add().dim_value = d


def random_inputs(inputs: list[InputSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Fixed random inputs: floats ~ U(-1, 1); integers in [0, 2), valid as ids and masks."""
    rng = np.random.default_rng(seed)
    data = {}
    for spec in inputs:
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            data[spec.name] = rng.uniform(-1.0, 1.0, spec.shape).astype(dtype)
        elif dtype.kind == "b":
            data[spec.name] = rng.integers(0, 2, spec.shape).astype(dtype)
        else:
            data[spec.name] = rng.integers(0, 2, spec.shape).astype(dtype)
    return data
