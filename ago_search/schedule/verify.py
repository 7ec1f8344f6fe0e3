"""Verification of measured candidates: every schedule is checked against the untuned task.

TVM's tuner can emit schedules that compute wrong results (TVM_NOTES.md: a two-conv group
where a `reverse_compute_at` of the second conv's padding into the first conv's tiles gave a
2 % wrong output, the "best" candidate among them). The runner checks nothing by itself, so
`ReferenceCheck` is given to it as its `OutputHook` (`ago_search.measure.runner`):

- Fixed inputs per task: one random array per kernel argument, seeded by the task key
  (`fixed_inputs`), so the same task gets the same inputs in every process and every run.
  Output arguments are filled too: a candidate that leaves part of an output unwritten then
  differs from the reference, which overwrites all of it. Integer arguments get 0 or 1 (they
  are often indices: `take` in TVM's fast mode reads out of bounds on a larger index).
- The reference is computed once per task, in this process, by the task's untuned PrimFunc
  (TVM's default lowering, built for the host; `compute_reference`).
- Each candidate runs once on the same inputs before it is timed; all its arguments after
  that run are compared with the reference's (`compare_arguments`): per argument the max
  absolute error relative to the largest |reference| value, at most the dtype's tolerance
  (`DTYPE_TOLERANCES`); integers and booleans must match exactly; NaN/Inf must sit where the
  reference has them (`ago_search.measure.compare`, the rule the model check uses).

A complaint makes the candidate a failure of status `wrong_result` (the runner's word, beside
its error text "wrong result: ..."), which the database's `CommitMeasurements` stores as it
is: never a best, never applied.

Dirty memory. The wrong schedules seen read elements of an intermediate buffer they never
wrote; on memory that holds zeros (fresh pages) or the previous candidate's values (TVM's
workspace pool keeps freed buffers) they are right by luck. On the two-conv group, 26 of
99 wrong candidates passed a plain run. So the local runner makes the checked run in a fresh
thread with glibc's malloc perturbation on (`measure.runner._run_on_dirty_memory`): every
intermediate buffer starts as garbage. Over RPC the device's memory is not poisoned.

Packed weights. A candidate of a task whose weights are layout-free takes them in the layout
its schedule chose (MetaSchedule's `RewriteLayout`); the builder writes how beside its library
and the check packs the fixed inputs (and the reference's arguments) the same way before the
run (`measure.prepack`), so such candidates are checked like any other.

The runner hands the hook only a `RunnerInput` (library path, argument shapes), not the task,
so the tuning loop tells the hook which task it is measuring (`select`) right before it sends
that task's candidates; a candidate whose arguments do not match the selected task's is
measured unchecked, with a warning.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tvm

from ago_search.measure.compare import compare_output
from ago_search.measure.prepack import pack_array, read_rewrites

__all__ = [
    "DTYPE_TOLERANCES",
    "ArgumentError",
    "CheckOutcome",
    "Reference",
    "ReferenceCheck",
    "compare_arguments",
    "compute_reference",
    "fixed_inputs",
    "task_seed",
    "tolerance_for",
]

log = logging.getLogger(__name__)

# Largest error allowed relative to max |reference| of an argument. float32 matches the model
# check against ONNX Runtime (bench.DEFAULT_TOLERANCE); a reordered float32 sum over a few
# thousand terms stays near 1e-6, a wrong schedule is off by whole values.
DTYPE_TOLERANCES = {
    "float64": 1e-6,
    "float32": 1e-3,
    "float16": 1e-2,
    "bfloat16": 2e-2,
}

ArgsInfo = Sequence[Sequence[Any]]  # ArgInfo.as_json(): ["TENSOR", dtype, shape]


def tolerance_for(dtype: str) -> float:
    """The relative tolerance of a dtype: 0 (exact) for integers and booleans."""
    if dtype in DTYPE_TOLERANCES:
        return DTYPE_TOLERANCES[dtype]
    if dtype.startswith("float"):
        return DTYPE_TOLERANCES["float16"]  # float8 and friends: at least as loose as half
    return 0.0


def task_seed(task_key: str) -> int:
    """A 32-bit seed from a task key: the same key gives the same inputs everywhere."""
    return int(hashlib.sha256(task_key.encode()).hexdigest()[:8], 16)


def _args_json(args_info: Any) -> list[list[Any]]:
    """Arguments as ["TENSOR", dtype, shape] lists, from ArgInfo objects or their JSON."""
    out = []
    for info in args_info:
        data = info.as_json() if hasattr(info, "as_json") else info
        kind, dtype, shape = data
        out.append([str(kind), str(dtype), [int(d) for d in shape]])
    return out


def fixed_inputs(args_info: ArgsInfo, seed: int) -> list[np.ndarray]:
    """One random array per argument: floats uniform in [-1, 1), integers 0 or 1, booleans
    random."""
    rng = np.random.default_rng(seed)
    arrays = []
    for index, (kind, dtype, shape) in enumerate(_args_json(args_info)):
        if kind != "TENSOR":
            raise NotImplementedError(f"argument {index} of kind {kind!r}")
        if dtype == "bool":
            array = rng.integers(0, 2, size=shape).astype(bool)
        elif dtype.startswith(("int", "uint")):
            array = rng.integers(0, 2, size=shape).astype(dtype)
        elif dtype in ("float16", "float32", "float64"):
            array = rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
        else:
            raise NotImplementedError(f"argument {index}: no fixed inputs of dtype {dtype}")
        # (not np.ascontiguousarray: it makes a 0-d argument, a `take`'s scalar index in
        # ViT's attention, 1-d, and the kernel refuses it)
        arrays.append(np.array(array, order="C"))
    return arrays


@dataclass(frozen=True)
class Reference:
    """A task's fixed inputs and every argument after one run of its untuned PrimFunc."""

    args_info: tuple[tuple[str, str, tuple[int, ...]], ...]
    inputs: tuple[np.ndarray, ...] = field(repr=False)
    outputs: tuple[np.ndarray, ...] = field(repr=False)

    def matches(self, args_info: Any) -> bool:
        given = tuple((k, d, tuple(s)) for k, d, s in _args_json(args_info))
        return given == self.args_info


def _reference_target() -> tvm.target.Target:
    # the untuned kernel is serial, plain code: any LLVM target of this machine computes it
    return tvm.target.Target({"kind": "llvm"})


def compute_reference(mod: tvm.IRModule, seed: int) -> Reference:
    """Run the untuned PrimFunc of `mod` (a task's {"main": func}) once on `fixed_inputs`."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    from ago_search.measure.builders import compile_candidate

    args_info = _args_json(ArgInfo.from_entry_func(mod, remove_preproc=True))
    inputs = fixed_inputs(args_info, seed)
    library = compile_candidate(mod, _reference_target())
    device = tvm.cpu()
    args = [tvm.runtime.tensor(array, device) for array in inputs]
    library[library.entry_name](*args)
    outputs = tuple(arg.numpy() for arg in args)
    for array in inputs:
        array.flags.writeable = False
    return Reference(
        args_info=tuple((k, d, tuple(s)) for k, d, s in args_info),
        inputs=tuple(inputs),
        outputs=outputs,
    )


def _packed_reference(reference: Reference, artifact_path: Any) -> Reference | None:
    """The reference as a candidate that packs weights (`measure.prepack`) takes it: the
    packed parameters' inputs and outputs packed the way it packs them; None when the
    candidate packs nothing."""
    try:
        rewrites = read_rewrites(str(artifact_path))
    except (OSError, ValueError) as err:
        log.warning("candidate %s: its weight layouts unreadable: %s", artifact_path, err)
        return None
    if not rewrites:
        return None
    inputs, outputs = list(reference.inputs), list(reference.outputs)
    args_info = [list(a) for a in reference.args_info]
    for rewrite in rewrites:
        try:
            inputs[rewrite.arg] = pack_array(inputs[rewrite.arg], rewrite)
            outputs[rewrite.arg] = pack_array(outputs[rewrite.arg], rewrite)
        except (NotImplementedError, IndexError, ValueError) as err:
            log.warning(
                "candidate %s: its weights not packed for the check: %s", artifact_path, err
            )
            return None
        inputs[rewrite.arg].flags.writeable = False
        args_info[rewrite.arg][2] = rewrite.shape
    return Reference(
        args_info=tuple((k, d, tuple(s)) for k, d, s in args_info),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
    )


@dataclass(frozen=True)
class ArgumentError:
    """How far one argument of a candidate is from the reference."""

    index: int
    dtype: str
    shape: tuple[int, ...]
    max_abs_err: float
    max_rel_err: float  # max_abs_err / max |reference|
    ref_max_abs: float
    mismatched: float  # share of elements beyond tolerance
    tolerance: float
    ok: bool

    def describe(self) -> str:
        shape = "x".join(str(d) for d in self.shape)
        return (
            f"argument {self.index} ({self.dtype}[{shape}]): max abs error "
            f"{self.max_abs_err:.3g} where max |reference| is {self.ref_max_abs:.3g} "
            f"(relative {self.max_rel_err:.3g} > {self.tolerance:g}); "
            f"{self.mismatched:.1%} of elements beyond tolerance"
        )


def compare_arguments(
    reference: Reference, outputs: Sequence[np.ndarray]
) -> tuple[ArgumentError, ...]:
    """Every argument of a candidate after its run against the reference's."""
    if len(outputs) != len(reference.outputs):
        raise ValueError(f"{len(outputs)} arguments, the reference has {len(reference.outputs)}")
    errors = []
    for index, (actual, expected) in enumerate(zip(outputs, reference.outputs, strict=True)):
        dtype = str(expected.dtype)
        tolerance = tolerance_for(dtype)
        check = compare_output(str(index), actual, expected, tolerance=max(tolerance, 0.0))
        errors.append(
            ArgumentError(
                index=index,
                dtype=dtype,
                shape=tuple(int(d) for d in expected.shape),
                max_abs_err=check.max_abs_err,
                max_rel_err=check.max_rel_err,
                ref_max_abs=check.ref_max_abs,
                mismatched=check.mismatched,
                tolerance=tolerance,
                ok=check.ok,
            )
        )
    return tuple(errors)


@dataclass(frozen=True)
class CheckOutcome:
    """One checked candidate: its task, and the worst argument (by relative error)."""

    task_key: str
    ok: bool
    worst: ArgumentError | None


class ReferenceCheck:
    """The runner's `OutputHook`: fixed inputs per task, and a check against the reference.

    Register tasks with `add(key, mod)` and `select(key)` before measuring that task's
    candidates. References are computed on first use and kept. `outcomes` lists every check
    made, in order (what the wrong-result demo counts).
    """

    def __init__(self) -> None:
        self._modules: dict[str, tvm.IRModule] = {}
        self._references: dict[str, Reference] = {}
        self._current: str | None = None
        self._unavailable: set[str] = set()
        self._packed: dict[str, Reference] = {}  # library path -> reference with packed weights
        self.outcomes: list[CheckOutcome] = []

    def add(self, task_key: str, mod: tvm.IRModule) -> None:
        self._modules[task_key] = mod

    def select(self, task_key: str | None) -> None:
        """The task whose candidates the runner measures next (None: check nothing)."""
        if task_key is not None and task_key not in self._modules:
            raise KeyError(f"task {task_key} was not added to the check")
        self._current = task_key
        self._packed.clear()  # left by candidates whose run failed before their check

    @property
    def selected(self) -> str | None:
        return self._current

    def reference(self, task_key: str) -> Reference:
        found = self._references.get(task_key)
        if found is None:
            found = compute_reference(self._modules[task_key], task_seed(task_key))
            self._references[task_key] = found
            log.debug("reference of task %s computed", task_key)
        return found

    def _usable_reference(self, task_key: str) -> Reference | None:
        """The reference, or None (once logged) where it cannot be computed: the task's
        candidates are then measured unchecked rather than the tuning stopped."""
        if task_key in self._unavailable:
            return None
        try:
            return self.reference(task_key)
        except Exception as err:  # noqa: BLE001 - any failure means: no check for this task
            self._unavailable.add(task_key)
            log.warning("task %s: no reference output (%s); measured unchecked", task_key, err)
            return None

    def inputs_for(self, runner_input: Any) -> list[np.ndarray] | None:
        if self._current is None:
            return None
        reference = self._usable_reference(self._current)
        if reference is None:
            return None
        if not reference.matches(runner_input.args_info):
            packed = _packed_reference(reference, runner_input.artifact_path)
            if packed is None or not packed.matches(runner_input.args_info):
                log.warning(
                    "a candidate's arguments do not match task %s: measured without a check",
                    self._current,
                )
                return None
            self._packed[str(runner_input.artifact_path)] = packed
            return list(packed.inputs)
        return list(reference.inputs)

    def check(self, runner_input: Any, outputs: Sequence[np.ndarray]) -> str | None:
        if self._current is None:
            return None
        key = self._current
        reference = self._packed.pop(str(runner_input.artifact_path), None)
        if reference is None:
            reference = self._usable_reference(key)
        if reference is None:
            return None
        try:
            errors = compare_arguments(reference, outputs)
        except ValueError as err:
            return str(err)
        failed = [e for e in errors if not e.ok]
        worst = max(
            errors,
            key=lambda e: e.max_rel_err if math.isfinite(e.max_rel_err) else math.inf,
            default=None,
        )
        self.outcomes.append(CheckOutcome(key, not failed, worst))
        if not failed:
            return None
        return "; ".join(e.describe() for e in failed)
