"""Output comparison: a runtime's outputs against a reference's, one rule everywhere.

Per output, the max absolute error and the max error relative to the largest |reference|
value of that output (not elementwise: elementwise relative error is unbounded wherever the
reference is near zero, after a ReLU or at a sigmoid's tails, where float32 reordering
leaves harmless absolute differences). An output passes when that relative error is at most
`tolerance` (default 1e-3) and NaN/Inf appear in the same places; integer and boolean
outputs must match exactly. The benchmark compares TVM's outputs with ONNX Runtime's this
way, and the search checks tuned kernels with it (`ago_search.schedule.verify`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_TOLERANCE", "OutputCheck", "compare_output", "compare_outputs"]

DEFAULT_TOLERANCE = 1e-3
# Below this largest |reference| value an output counts as all zeros: errors are then
# measured against 1e-6, so differences under 1e-9 pass.
_SCALE_FLOOR = 1e-6


@dataclass(frozen=True)
class OutputCheck:
    """One output of a runtime compared with the reference runtime's."""

    name: str
    shape: tuple[int, ...]
    max_abs_err: float  # max |actual - reference|; inf where shapes or NaN/Inf placement differ
    max_rel_err: float  # max_abs_err / max(|reference|), see module docstring
    ref_max_abs: float  # the largest |reference| value (finite values)
    mismatched: float  # share of elements whose error exceeds tolerance * max|reference|
    ok: bool
    note: str = ""

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "shape": list(self.shape),
            "max_abs_err": _json_float(self.max_abs_err),
            "max_rel_err": _json_float(self.max_rel_err),
            "ref_max_abs": _json_float(self.ref_max_abs),
            "mismatched": self.mismatched,
            "ok": self.ok,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, data: dict) -> OutputCheck:
        return cls(
            name=data["name"],
            shape=tuple(data["shape"]),
            max_abs_err=float(data["max_abs_err"]),
            max_rel_err=float(data["max_rel_err"]),
            ref_max_abs=float(data["ref_max_abs"]),
            mismatched=float(data["mismatched"]),
            ok=bool(data["ok"]),
            note=data.get("note", ""),
        )


def _json_float(value: float) -> float | str:
    # JSON has no inf/nan; strings that float() reads back.
    return value if math.isfinite(value) else str(value)


def compare_output(
    name: str, actual: np.ndarray, reference: np.ndarray, tolerance: float = DEFAULT_TOLERANCE
) -> OutputCheck:
    """Compare one output with its reference (see the module docstring for the rule)."""
    actual = np.asarray(actual)
    reference = np.asarray(reference)
    shape = tuple(int(d) for d in reference.shape)
    if actual.shape != reference.shape:
        return OutputCheck(
            name=name,
            shape=shape,
            max_abs_err=math.inf,
            max_rel_err=math.inf,
            ref_max_abs=0.0,
            mismatched=1.0,
            ok=False,
            note=f"shape {tuple(actual.shape)} != reference {shape}",
        )
    if reference.size == 0:
        return OutputCheck(name, shape, 0.0, 0.0, 0.0, 0.0, True)
    wide = np.complex128 if reference.dtype.kind == "c" else np.float64
    ref = reference.astype(wide)
    act = actual.astype(wide)
    finite = np.isfinite(ref)
    same_nonfinite = ~finite & ((ref == act) | (np.isnan(ref) & np.isnan(act)))
    with np.errstate(invalid="ignore"):
        diff = np.where(finite, np.abs(act - ref), np.where(same_nonfinite, 0.0, np.inf))
    diff = np.where(np.isnan(diff), np.inf, diff)  # NaN from TVM where ORT is finite
    ref_max_abs = float(np.abs(ref[finite]).max()) if finite.any() else 0.0
    max_abs = float(diff.max())
    max_rel = max_abs / max(ref_max_abs, _SCALE_FLOOR)
    exact = reference.dtype.kind not in "fc"
    limit = 0.0 if exact else tolerance * max(ref_max_abs, _SCALE_FLOOR)
    mismatched = float(np.count_nonzero(diff > limit)) / diff.size
    ok = max_abs == 0.0 if exact else max_rel <= tolerance
    note = "integer output: exact match required" if exact and not ok else ""
    return OutputCheck(name, shape, max_abs, max_rel, ref_max_abs, mismatched, ok, note)


def compare_outputs(
    actual: Sequence[np.ndarray],
    reference: Sequence[np.ndarray],
    names: Sequence[str],
    tolerance: float = DEFAULT_TOLERANCE,
) -> tuple[OutputCheck, ...]:
    """Compare outputs pairwise in order; a missing or extra output is a failed check."""
    checks = [
        compare_output(name, a, r, tolerance)
        for name, a, r in zip(names, actual, reference, strict=False)
    ]
    count = min(len(actual), len(reference))
    if len(actual) != len(reference) or len(names) != count:
        checks.append(
            OutputCheck(
                name="<outputs>",
                shape=(),
                max_abs_err=math.inf,
                max_rel_err=math.inf,
                ref_max_abs=0.0,
                mismatched=1.0,
                ok=False,
                note=f"{len(actual)} outputs vs {len(reference)} in the reference "
                f"({len(names)} names)",
            )
        )
    return tuple(checks)
