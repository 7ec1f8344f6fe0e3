"""Side-by-side benchmark: ONNX Runtime vs TVM's default fused build, on the same model, verified.

What is compared. ONNX Runtime (CPU provider, all graph optimisations) runs
`imported.onnx_model`, the graph TVM imported: input shapes fixed and shape subgraphs folded.
Both runtimes then execute the same computation at the same shapes; the user's file may
carry symbolic dimensions and run-time shape arithmetic that ORT would execute too, which
would time a different program than the one TVM compiled. That the folded graph computes
what the user's file computes is checked separately (`source_checks`): ORT runs the user's
file once on the same inputs, and its outputs are compared with the folded graph's.

How it is measured. Each (runtime, thread count) runs in a fresh Python process, one after
another, never overlapping: a TVM thread pool is sized when first used and cannot grow later
(see ago_search.build), TVM's thread configuration can pin the calling thread, and idle
threads of one runtime spin for a while after work and would steal a core from the other.
A TVM process gets TVM_NUM_THREADS=n (pool of exactly n threads, unpinned) and checks that
TVM reports n; an ORT process sets intra_op_num_threads=n, inter_op_num_threads=1,
sequential execution. Both time one full inference per call with inputs converted
beforehand (ORT through an IOBinding, TVM through a VM closure bound to its inputs), under
the same `MeasureProtocol`, and report how many OS threads actually used CPU time during the
timed repeats (per-thread CPU time from /proc/self/task): TVM's default build has no
parallel loops, so it uses one thread whatever it is given.

How outputs are verified. TVM's outputs are compared with ORT's at the same thread count:
per output, the max absolute error and the max error relative to the largest |reference|
value of that output (not elementwise: elementwise relative error is unbounded wherever the
reference is near zero, after a ReLU or at a sigmoid's tails, where float32 reordering
leaves harmless absolute differences). An output passes when that relative error is at most
`tolerance` (default 1e-3) and NaN/Inf appear in the same places; integer and boolean
outputs must match exactly.

TVM is imported only where needed, so that the ORT worker process never loads it (importing
TVM takes seconds and loads its own runtime libraries).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ago_search.frontend import ImportedModel, InputSpec, random_inputs
from ago_search.measure.protocol import MeasureProtocol, Timing, time_callable

__all__ = [
    "DEFAULT_TOLERANCE",
    "ORT",
    "TVM_DEFAULT",
    "BenchResult",
    "OutputCheck",
    "RuntimeRun",
    "bench_model",
    "compare_output",
    "compare_outputs",
    "format_bench_table",
]

log = logging.getLogger(__name__)

ORT = "onnxruntime"
TVM_DEFAULT = "tvm-default"
DEFAULT_TOLERANCE = 1e-3
# Below this largest |reference| value an output counts as all zeros: errors are then
# measured against 1e-6, so differences under 1e-9 pass.
_SCALE_FLOOR = 1e-6
# A thread "used CPU" in the timed repeats when it got at least this share of the process's
# CPU time; keeps a thread that woke once from counting.
_BUSY_SHARE = 0.05


# ---------------------------------------------------------------------------------------
# Output comparison


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


# ---------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class RuntimeRun:
    """One runtime at one thread count: timing, setup cost, threads seen, output checks."""

    runtime: str  # ORT, TVM_DEFAULT, or the label of another TVM build
    threads: int  # threads requested
    timing: Timing | None  # None when the run failed (see error)
    setup_s: float  # ORT: session creation (its graph optimisation included); TVM: load + VM
    threads_used: int  # OS threads that used CPU time during the timed repeats
    checks: tuple[OutputCheck, ...] = ()  # vs ORT at the same thread count; () for ORT
    error: str | None = None

    @property
    def verified(self) -> bool:
        """Ran, and (for a runtime other than the reference) every output check passed."""
        if self.error is not None or self.timing is None:
            return False
        return self.runtime == ORT or (bool(self.checks) and all(c.ok for c in self.checks))

    def to_json(self) -> dict:
        return {
            "runtime": self.runtime,
            "threads": self.threads,
            "timing": self.timing.to_json() if self.timing is not None else None,
            "setup_s": self.setup_s,
            "threads_used": self.threads_used,
            "checks": [c.to_json() for c in self.checks],
            "error": self.error,
            "verified": self.verified,
        }

    @classmethod
    def from_json(cls, data: dict) -> RuntimeRun:
        timing = data.get("timing")
        return cls(
            runtime=data["runtime"],
            threads=int(data["threads"]),
            timing=Timing.from_json(timing) if timing is not None else None,
            setup_s=float(data["setup_s"]),
            threads_used=int(data["threads_used"]),
            checks=tuple(OutputCheck.from_json(c) for c in data.get("checks", [])),
            error=data.get("error"),
        )


@dataclass(frozen=True)
class BenchResult:
    """ORT and TVM's default build on one model, per thread count, with the context."""

    model: str
    inputs: tuple[InputSpec, ...]
    output_names: tuple[str, ...]
    seed: int
    protocol: MeasureProtocol
    tolerance: float
    target: str
    cpu: str
    versions: dict[str, str]
    compile_s: float  # TVM default build of the Relax module
    runs: tuple[RuntimeRun, ...]
    # ORT on the folded graph vs ORT on the user's file (see module docstring); () = not run
    source_checks: tuple[OutputCheck, ...] = ()
    source_check_note: str = ""
    extra: dict[str, float] = field(default_factory=dict)  # other timings, e.g. export_s

    @property
    def thread_counts(self) -> tuple[int, ...]:
        return tuple(sorted({r.threads for r in self.runs}))

    def run(self, runtime: str, threads: int) -> RuntimeRun | None:
        return next((r for r in self.runs if r.runtime == runtime and r.threads == threads), None)

    def speedup(self, runtime: str, threads: int) -> float | None:
        """ORT's median / this runtime's median at that thread count (> 1: faster than ORT)."""
        ort, other = self.run(ORT, threads), self.run(runtime, threads)
        if ort is None or other is None or ort.timing is None or other.timing is None:
            return None
        return ort.timing.median / other.timing.median

    @property
    def speedups(self) -> dict[int, float | None]:
        """TVM default build vs ORT per thread count: ORT median / TVM median."""
        return {t: self.speedup(TVM_DEFAULT, t) for t in self.thread_counts}

    @property
    def verified(self) -> bool:
        """Every run finished, every TVM output matched ORT's, and the folded graph matched."""
        return (
            bool(self.runs)
            and all(r.verified for r in self.runs)
            and all(c.ok for c in self.source_checks)
        )

    def to_json(self) -> dict:
        return {
            "model": self.model,
            "inputs": [s.to_json() for s in self.inputs],
            "output_names": list(self.output_names),
            "seed": self.seed,
            "protocol": self.protocol.to_json(),
            "tolerance": self.tolerance,
            "target": self.target,
            "cpu": self.cpu,
            "versions": dict(self.versions),
            "compile_s": self.compile_s,
            "runs": [r.to_json() for r in self.runs],
            "source_checks": [c.to_json() for c in self.source_checks],
            "source_check_note": self.source_check_note,
            "extra": dict(self.extra),
            # derived, for readers of the file; from_json recomputes them
            "speedup_tvm_default_over_ort": {str(t): s for t, s in self.speedups.items()},
            "verified": self.verified,
        }

    @classmethod
    def from_json(cls, data: dict) -> BenchResult:
        return cls(
            model=data["model"],
            inputs=tuple(InputSpec.from_json(s) for s in data["inputs"]),
            output_names=tuple(data["output_names"]),
            seed=int(data["seed"]),
            protocol=MeasureProtocol.from_json(data["protocol"]),
            tolerance=float(data["tolerance"]),
            target=data["target"],
            cpu=data["cpu"],
            versions=dict(data["versions"]),
            compile_s=float(data["compile_s"]),
            runs=tuple(RuntimeRun.from_json(r) for r in data["runs"]),
            source_checks=tuple(OutputCheck.from_json(c) for c in data.get("source_checks", [])),
            source_check_note=data.get("source_check_note", ""),
            extra={k: float(v) for k, v in data.get("extra", {}).items()},
        )


# ---------------------------------------------------------------------------------------
# The benchmark


def _versions() -> dict[str, str]:
    import onnxruntime
    import tvm
    import tvm_ffi

    return {
        "tvm": tvm.__version__,
        "tvm_ffi": tvm_ffi.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnx": onnx.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def _package_root() -> str:
    return str(Path(__file__).resolve().parent.parent)


def _worker_env(runtime: str, threads: int) -> dict[str, str]:
    from ago_search.build import tvm_thread_env

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (_package_root(), env.get("PYTHONPATH", "")) if p
    )
    # numpy's BLAS is unused in the timed path; one thread keeps its pool from spinning.
    env["OPENBLAS_NUM_THREADS"] = "1"
    if runtime != ORT:  # TVM's default build, or another TVM build (`bench_model(builds=)`)
        env.update(tvm_thread_env(threads))
    else:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def _failed(error: str) -> dict:
    return {"error": error, "setup_s": 0.0, "threads_used": 0, "timing": None}


def _run_worker(job: dict, workdir: Path, timeout_s: float) -> tuple[dict, list[np.ndarray]]:
    """Run one job in a fresh process; returns its result record and outputs.

    A crash, a timeout or an exception in the worker comes back as a record with `error`.
    """
    tag = f"{job['runtime']}-{job['threads']}"
    job_path = workdir / f"job-{tag}.json"
    job = {**job, "result": str(workdir / f"result-{tag}.json")}
    job["outputs"] = str(workdir / f"outputs-{tag}.npz")
    job_path.write_text(json.dumps(job))
    command = [sys.executable, "-m", "ago_search.bench", str(job_path)]
    try:
        proc = subprocess.run(
            command,
            env=_worker_env(job["runtime"], job["threads"]),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return _failed(f"timed out after {timeout_s:g} s"), []
    if proc.stderr.strip():
        log.debug("%s worker stderr:\n%s", tag, proc.stderr.rstrip())
    result_path = Path(job["result"])
    if proc.returncode != 0 or not result_path.exists():
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        return _failed(f"worker exited with {proc.returncode}: {tail}"), []
    record = json.loads(result_path.read_text())
    outputs = []
    if record.get("error") is None:
        with np.load(job["outputs"]) as data:
            outputs = [data[f"arr_{i}"] for i in range(len(data.files))]
    return record, outputs


def _source_checks(
    imported: ImportedModel, feeds: dict[str, np.ndarray], reference: list[np.ndarray], tol: float
) -> tuple[tuple[OutputCheck, ...], str]:
    """ORT on the user's own file, once, compared with ORT on the folded graph."""
    import onnxruntime as ort

    if not Path(imported.path).is_file():
        return (), f"not checked: {imported.path} is not a file"
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = ort.InferenceSession(imported.path, options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        outputs = session.run(None, feeds)
    except Exception as exc:  # ORT's own errors on the user's file: report, do not fail
        return (), f"not checked: ONNX Runtime cannot run {imported.path} as given: {exc}"
    by_name = dict(zip(names, outputs, strict=True))
    if not all(n in by_name for n in imported.output_names):
        return (), "not checked: the folded graph's outputs are not the file's outputs"
    source = [by_name[n] for n in imported.output_names]
    return compare_outputs(reference, source, imported.output_names, tol), ""


def bench_model(
    imported: ImportedModel,
    threads: Sequence[int] | None = None,
    protocol: MeasureProtocol | None = None,
    seed: int = 0,
    tolerance: float = DEFAULT_TOLERANCE,
    timeout_s: float = 600.0,
    builds: Mapping[str, Any] | None = None,
) -> BenchResult:
    """ORT vs TVM's default build of `imported`, per thread count, timed and verified.

    threads defaults to [1, all cores]. Runs never overlap: per thread count ORT, then TVM,
    each in its own process (see the module docstring). A runtime that crashes, fails or
    times out is a run with `error` set, not an exception. builds: further TVM executables
    of the same model (label -> relax VMExecutable, e.g. a tuned plan), each timed and
    verified like TVM's default build, as runtime `label`.
    """
    from ago_search import build, devices

    protocol = protocol if protocol is not None else MeasureProtocol()
    cores = devices.host_num_cores()
    thread_counts = list(dict.fromkeys(threads if threads else [1, cores]))
    if any(t < 1 for t in thread_counts):
        raise ValueError(f"thread counts must be >= 1, got {thread_counts}")
    target = devices.host_target(max(cores, *thread_counts))
    builds = dict(builds or {})
    for label in builds:
        if label in (ORT, TVM_DEFAULT) or not label.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"build label {label!r}: use letters, digits, '-' and '_'")
    feeds = random_inputs(imported.inputs, seed)
    names = list(imported.output_names)

    start = time.perf_counter()
    executable = build.build_default(imported.mod, target)
    compile_s = time.perf_counter() - start
    log.info("TVM default build: %.2f s", compile_s)

    runs: list[RuntimeRun] = []
    with tempfile.TemporaryDirectory(prefix="ago-bench-") as tmp:
        workdir = Path(tmp)
        start = time.perf_counter()
        library = build.export_executable(executable, workdir / "model.so")
        export_s = time.perf_counter() - start
        libraries = {
            label: build.export_executable(exe, workdir / f"model-{label}.so")
            for label, exe in builds.items()
        }
        onnx_path = workdir / "model.onnx"
        # Past protobuf's 2 GiB limit the weights must go to a side file.
        large = imported.onnx_model.ByteSize() > (1 << 31) - (64 << 20)
        onnx.save_model(imported.onnx_model, onnx_path, save_as_external_data=large)
        inputs_path = workdir / "inputs.npz"
        np.savez(inputs_path, *[feeds[s.name] for s in imported.inputs])
        common = {
            "inputs": str(inputs_path),
            "input_names": [s.name for s in imported.inputs],
            "protocol": protocol.to_json(),
        }
        references: dict[int, list[np.ndarray]] = {}
        for count in thread_counts:
            job = {**common, "threads": count}
            record, outputs = _run_worker(
                {**job, "runtime": ORT, "model": str(onnx_path)}, workdir, timeout_s
            )
            runs.append(_runtime_run(ORT, count, record, ()))
            if outputs:
                references[count] = outputs
            log.info("%s", _describe(runs[-1]))
            record, outputs = _run_worker(
                {**job, "runtime": TVM_DEFAULT, "model": str(library)}, workdir, timeout_s
            )
            checks: tuple[OutputCheck, ...] = ()
            if count in references:
                checks = compare_outputs(outputs, references[count], names, tolerance)
            elif record["error"] is None:
                record = {**record, "error": "not verified: ONNX Runtime failed at this count"}
            runs.append(_runtime_run(TVM_DEFAULT, count, record, checks))
            log.info("%s", _describe(runs[-1]))
            for label, path in libraries.items():
                record, outputs = _run_worker(
                    {**job, "runtime": label, "model": str(path)}, workdir, timeout_s
                )
                checks = ()
                if count in references:
                    checks = compare_outputs(outputs, references[count], names, tolerance)
                elif record["error"] is None:
                    record = {**record, "error": "not verified: ONNX Runtime failed at this count"}
                runs.append(_runtime_run(label, count, record, checks))
                log.info("%s", _describe(runs[-1]))

    source_checks: tuple[OutputCheck, ...] = ()
    source_note = "not checked: ONNX Runtime failed"
    if references:
        reference = next(iter(references.values()))
        source_checks, source_note = _source_checks(imported, feeds, reference, tolerance)
    return BenchResult(
        model=imported.path,
        inputs=tuple(imported.inputs),
        output_names=tuple(names),
        seed=seed,
        protocol=protocol,
        tolerance=tolerance,
        target=str(target),
        cpu=devices.host_cpu_name(),
        versions=_versions(),
        compile_s=compile_s,
        runs=tuple(runs),
        source_checks=source_checks,
        source_check_note=source_note,
        extra={"export_s": export_s},
    )


def _runtime_run(
    runtime: str, threads: int, record: dict, checks: tuple[OutputCheck, ...]
) -> RuntimeRun:
    timing = record.get("timing")
    return RuntimeRun(
        runtime=runtime,
        threads=threads,
        timing=Timing.from_json(timing) if timing is not None else None,
        setup_s=float(record.get("setup_s", 0.0)),
        threads_used=int(record.get("threads_used", 0)),
        checks=checks if record.get("error") is None else (),
        error=record.get("error"),
    )


def _describe(run: RuntimeRun) -> str:
    if run.timing is None:
        return f"{run.runtime} x{run.threads}: failed: {run.error}"
    return (
        f"{run.runtime} x{run.threads}: median {run.timing.median * 1e3:.4g} ms "
        f"(spread {run.timing.spread * 100:.1f} %, {run.threads_used} threads busy)"
    )


# ---------------------------------------------------------------------------------------
# The table


def _fmt_err(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2e}" if math.isfinite(value) else str(value)


def format_bench_table(result: BenchResult) -> str:
    """A fixed-width text table: one row per runtime and thread count, then the context."""
    header = (
        f"{'runtime':<13} {'threads':>7} {'busy':>4} {'median ms':>10} {'spread %':>8} "
        f"{'vs ORT':>7} {'max abs err':>11} {'max rel err':>11}  verified"
    )
    lines = [
        f"model:    {result.model}",
        f"cpu:      {result.cpu}",
        f"target:   {result.target}",
        f"versions: tvm {result.versions.get('tvm', '?')}, "
        f"onnxruntime {result.versions.get('onnxruntime', '?')}",
        "",
        header,
        "-" * len(header),
    ]
    for run in sorted(result.runs, key=lambda r: (r.threads, r.runtime != ORT)):
        if run.timing is None:
            lines.append(f"{run.runtime:<13} {run.threads:>7}  failed (see below)")
            continue
        speedup = result.speedup(run.runtime, run.threads)
        abs_err = max((c.max_abs_err for c in run.checks), default=None)
        rel_err = max((c.max_rel_err for c in run.checks), default=None)
        verified = "yes" if run.verified else "NO"
        if run.runtime == ORT and run.verified:
            verified = "reference"
        lines.append(
            f"{run.runtime:<13} {run.threads:>7} {run.threads_used:>4} "
            f"{run.timing.median * 1e3:>10.4g} {run.timing.spread * 100:>8.1f} "
            f"{(f'{speedup:.2f}x' if speedup is not None else '-'):>7} "
            f"{_fmt_err(abs_err):>11} {_fmt_err(rel_err):>11}  {verified}"
        )
    lines.append("")
    for run in result.runs:
        if run.error is not None:
            lines.append(f"{run.runtime} x{run.threads}: {run.error}")
        for check in run.checks:
            if not check.ok:
                lines.append(
                    f"{run.runtime} x{run.threads}: output '{check.name}' differs from ORT's: "
                    f"{check.mismatched:.1%} of elements beyond tolerance {check.note}".rstrip()
                )
    setup = ", ".join(
        f"{r.runtime} x{r.threads} {r.setup_s:.2f} s" for r in result.runs if r.timing is not None
    )
    lines.append(f"TVM default build: {result.compile_s:.2f} s; setup: {setup}")
    if result.source_checks:
        worst = max(c.max_rel_err for c in result.source_checks)
        state = "same" if all(c.ok for c in result.source_checks) else "DIFFERENT"
        lines.append(f"folded graph vs the model file (ORT): {state}, max rel err {worst:.2e}")
    elif result.source_check_note:
        lines.append(f"folded graph vs the model file: {result.source_check_note}")
    lines.append(
        f"median of {result.protocol.repeat} repeats; spread = IQR / median; vs ORT = ORT "
        "median / this median (> 1: faster); busy = OS threads that used CPU time; "
        f"rel err = abs err / max |ORT output|, tolerance {result.tolerance:g}"
    )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# The worker process: `python -m ago_search.bench JOB.json`


def _thread_cpu_ticks() -> dict[str, int]:
    """CPU time (clock ticks, user + system) of each thread of this process."""
    ticks = {}
    task_dir = Path("/proc/self/task")
    if not task_dir.is_dir():
        return ticks
    for task in task_dir.iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # the thread ended meanwhile
        ticks[task.name] = int(fields[11]) + int(fields[12])
    return ticks


def _busy_threads(before: dict[str, int], after: dict[str, int]) -> int:
    deltas = [after[t] - before.get(t, 0) for t in after]
    total = sum(deltas)
    if total <= 0:
        return 1 if after else 0  # too short to see: the calling thread ran it
    return sum(1 for d in deltas if d > 0 and d >= _BUSY_SHARE * total)


def _timed(fn: Callable[[], object], protocol: MeasureProtocol) -> tuple[Timing, int]:
    before = _thread_cpu_ticks()
    timing = time_callable(fn, protocol)
    return timing, _busy_threads(before, _thread_cpu_ticks())


def _ort_worker(job: dict, inputs: list[np.ndarray], protocol: MeasureProtocol) -> dict:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = job["threads"]
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    start = time.perf_counter()
    session = ort.InferenceSession(job["model"], options, providers=["CPUExecutionProvider"])
    setup_s = time.perf_counter() - start
    # The binding points into these arrays: they live as long as this frame does.
    feeds = {n: np.ascontiguousarray(a) for n, a in zip(job["input_names"], inputs, strict=True)}
    outputs = session.run(None, feeds)
    binding = session.io_binding()
    for name, array in feeds.items():
        binding.bind_cpu_input(name, array)
    for output in session.get_outputs():
        binding.bind_output(output.name, "cpu")
    timing, busy = _timed(lambda: session.run_with_iobinding(binding), protocol)
    return {"setup_s": setup_s, "timing": timing, "threads_used": busy, "outputs": outputs}


def _tvm_worker(job: dict, inputs: list[np.ndarray], protocol: MeasureProtocol) -> dict:
    from ago_search.build import VMRunner, load_executable, tvm_num_threads

    start = time.perf_counter()
    runner = VMRunner(load_executable(job["model"]), inputs)
    setup_s = time.perf_counter() - start
    outputs = runner.outputs()
    timing, busy = _timed(runner, protocol)
    # Checked only now: asking creates TVM's thread pool, whose new threads spin for about
    # 0.1 s, which would be timed along with code that never uses the pool.
    actual = tvm_num_threads()
    if actual != job["threads"]:
        raise RuntimeError(f"TVM uses {actual} threads, {job['threads']} were asked for")
    return {"setup_s": setup_s, "timing": timing, "threads_used": busy, "outputs": outputs}


def _worker_main(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    protocol = MeasureProtocol.from_json(job["protocol"])
    with np.load(job["inputs"]) as data:
        inputs = [data[f"arr_{i}"] for i in range(len(job["input_names"]))]
    worker = _ort_worker if job["runtime"] == ORT else _tvm_worker
    try:
        result = worker(job, inputs, protocol)
    except Exception as exc:  # a failing runtime is a record, not a crash of the benchmark
        log.exception("%s worker failed", job["runtime"])
        record = {"error": f"{type(exc).__name__}: {exc}"}
    else:
        np.savez(job["outputs"], *result.pop("outputs"))
        record = {**result, "timing": result["timing"].to_json(), "error": None}
    Path(job["result"]).write_text(json.dumps(record))
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    sys.exit(_worker_main(sys.argv[1]))
