"""Side-by-side benchmark: ONNX Runtime vs TVM's default fused build, on the same model, verified.

What is compared. ONNX Runtime (CPU provider, all graph optimisations) runs
`imported.onnx_model`, the graph TVM imported: input shapes fixed and shape subgraphs folded.
Both runtimes then execute the same computation at the same shapes; the user's file may
carry symbolic dimensions and run-time shape arithmetic that ORT would execute too, which
would time a different program than the one TVM compiled. That the folded graph computes
what the user's file computes is checked separately (`source_checks`): ORT runs the user's
file once on the same inputs, and its outputs are compared with the folded graph's.

How it is measured. Each (runtime, thread count) runs in its own worker process
(`measure.worker.IsolatedWorker`): a TVM thread pool is sized when first used and cannot grow
later (see ago_search.measure.threads), and TVM's thread configuration can pin the calling
thread. Per thread count, every runtime's process opens its model once, then they take turns,
never overlapping: each round times one repeat of each runtime, and after every turn the
benchmark waits until that runtime's process uses no CPU (idle threads spin for a while after
work and would steal a core from the next), so a load that comes and goes on the machine is
shared by all of them alike. A TVM process gets
TVM_NUM_THREADS=n (pool of exactly n threads, unpinned) and checks that TVM reports n; an ORT
process sets intra_op_num_threads=n, inter_op_num_threads=1, sequential execution. What runs
in the workers is `ago_search.bench_worker`: both time one full inference per call under the
same `MeasureProtocol` and report how many OS threads actually used CPU time during the timed
repeats: TVM's default build has no parallel loops, so it uses one thread whatever it is
given. A worker that crashes, raises or times out is a run with `error`, not an exception.

How outputs are verified. TVM's outputs are compared with ORT's at the same thread count by
`ago_search.measure.compare` (per output, the max error relative to the largest |reference|
value, at most `tolerance`; integer outputs exactly).
"""

from __future__ import annotations

import logging
import platform
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import psutil

from ago_search.frontend import ImportedModel, InputSpec, random_inputs
from ago_search.measure.compare import DEFAULT_TOLERANCE, OutputCheck, compare_outputs
from ago_search.measure.lease import host_cpu_lease
from ago_search.measure.protocol import MeasureProtocol, Timing
from ago_search.measure.threads import tvm_thread_env
from ago_search.measure.worker import IsolatedWorker, WorkerCrashed, WorkerError, WorkerTimeout

__all__ = [
    "DEFAULT_TOLERANCE",
    "ORT",
    "TVM_DEFAULT",
    "BenchResult",
    "RuntimeRun",
    "bench_model",
]

log = logging.getLogger(__name__)

ORT = "onnxruntime"
TVM_DEFAULT = "tvm-default"
# What runs in the worker processes, called by name ("module:function").
_WORKER_MODULE = "ago_search.bench_worker"


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
    # a build's functions, their seconds per inference inside the model (bench_model's
    # profile_runs; None: not asked)
    kernels: dict[str, float] | None = field(default=None, hash=False)

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
            "kernels": self.kernels,
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
            kernels=data.get("kernels"),
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


def _worker_env(runtime: str, threads: int) -> dict[str, str]:
    """Thread settings of a worker process, read by the runtime when it is imported."""
    # numpy's BLAS is unused in the timed path; one thread keeps its pool from spinning.
    env = {"OPENBLAS_NUM_THREADS": "1"}
    if runtime != ORT:  # TVM's default build, or another TVM build (`bench_model(builds=)`)
        env.update(tvm_thread_env(threads))
    else:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


# Between two runtimes' turns, the one before must be idle: its threads spin for a while after
# work (a MobileNetV2 build's TVM pool used 50-70 ms of CPU during ORT's next turn after a
# 0.15-s pause) and would steal a core from the next. Its process's CPU time is read every
# `QUIET_POLL_S` until it stops growing for `QUIET_READS` reads (at most `QUIET_MAX_S`).
QUIET_POLL_S = 0.01
QUIET_READS = 3
QUIET_MAX_S = 1.0


class _Contender:
    """One runtime at one thread count in its own worker process, opened once and timed in
    turns (`bench_worker.time_block`); what it has measured so far, or why it dropped out."""

    def __init__(self, runtime: str, threads: int, model: Path, timeout_s: float):
        self.runtime = runtime
        self.threads = threads
        self.model = model
        self.timeout_s = timeout_s
        self.is_ort = runtime == ORT
        self.worker = IsolatedWorker(
            preload=(_WORKER_MODULE, "onnxruntime" if self.is_ort else "ago_search.build"),
            env=_worker_env(runtime, threads),
            startup_timeout=timeout_s,
            name=f"bench-{runtime}-{threads}",
        )
        self.deadline = time.monotonic() + timeout_s
        self.samples: list[float] = []
        self.threads_used = 0
        self.number = 0
        self.setup_s = 0.0
        self.outputs: list[np.ndarray] = []
        self.kernels: dict[str, float] | None = None
        self.error: str | None = None

    def call(self, function: str, *args: Any) -> Any:
        """A call in the worker; None with `error` set on a crash, a time-out or an exception
        (a failing runtime is a record, not a crash of the benchmark)."""
        if self.error is not None:
            return None
        try:
            return self.worker.call(
                f"{_WORKER_MODULE}:{function}",
                *args,
                timeout=max(self.deadline - time.monotonic(), 0.0),
            )
        except WorkerTimeout:
            self.error = f"timed out after {self.timeout_s:g} s"
        except WorkerCrashed as err:
            lines = str(err).strip().splitlines()
            self.error = " | ".join(lines[:1] + lines[1:][-3:])
        except WorkerError as err:
            log.debug("%s worker failed:\n%s", self.runtime, err)
            self.error = str(err).split("\nTraceback (most recent call last):", 1)[0]
        self.worker.close()
        return None

    def open(
        self, input_names: list[str], inputs: list[np.ndarray], protocol: MeasureProtocol
    ) -> None:
        function = "open_onnxruntime" if self.is_ort else "open_tvm"
        args = (str(self.model), input_names, inputs, self.threads, protocol.to_json())
        result = self.call(function, *args)
        if result is not None:
            self.setup_s = result["setup_s"]
            self.outputs = list(result["outputs"])
            self.number = result["number"]

    def wait_quiet(self) -> None:
        """Until this runtime's process uses no CPU (its threads stopped spinning)."""
        pid = self.worker.pid
        if pid is None:
            return
        try:
            process = psutil.Process(pid)
            deadline = time.monotonic() + QUIET_MAX_S
            last, still = sum(process.cpu_times()[:2]), 0
            while still < QUIET_READS and time.monotonic() < deadline:
                time.sleep(QUIET_POLL_S)
                now = sum(process.cpu_times()[:2])
                still = still + 1 if now == last else 0
                last = now
        except psutil.Error:  # gone: nothing spins
            return

    def turn(self, repeats: int) -> None:
        # an untimed call first, where a repeat is a batch of calls (the runtime before had
        # the caches); a repeat of one call lasts `min_repeat_ms` or more, and a warm-up call
        # would double a slow build's turns (TVM's default ResNet-18: 2.2 s a call)
        result = self.call("time_block", repeats, 1 if self.number > 1 else 0)
        if result is not None:
            self.samples += result["samples"]
            self.threads_used = max(self.threads_used, result["threads_used"])

    def profile(self, runs: int) -> None:
        """The build's functions timed inside the model: an extra, whose failure leaves the
        timing and the outputs standing."""
        if not runs or self.is_ort or self.error is not None:
            return
        try:
            self.kernels = self.worker.call(
                f"{_WORKER_MODULE}:profile_open",
                runs,
                timeout=max(self.deadline - time.monotonic(), 0.0),
            )
        except (WorkerTimeout, WorkerCrashed, WorkerError) as err:
            log.warning("%s: functions not timed inside the model: %s", self.runtime, err)

    def run(self) -> RuntimeRun:
        if self.error is not None or not self.samples:
            error = self.error or "not timed"
            return RuntimeRun(self.runtime, self.threads, None, self.setup_s, 0, error=error)
        return RuntimeRun(
            self.runtime,
            self.threads,
            Timing(samples=tuple(self.samples), number=self.number),
            self.setup_s,
            self.threads_used,
            kernels=self.kernels,
        )


def _run_interleaved(
    models: Mapping[str, Path],
    threads: int,
    input_names: list[str],
    inputs: list[np.ndarray],
    protocols: Mapping[str, MeasureProtocol],
    timeout_s: float,
    profile_runs: Mapping[str, int],
) -> list[tuple[RuntimeRun, list[np.ndarray]]]:
    """Every runtime of `models` in its own process, opened once (loaded, run for its outputs,
    warmed up, `number` calibrated), then timed in turns: a round gives each runtime one repeat
    (after one untimed call), so a load that comes and goes on the machine falls on all of them
    alike (on a 2-core EPYC, ORT's MobileNetV2 moved from 6.0 to 4.7 ms from one second to the
    next); a runtime whose protocol asks fewer repeats sits out the last rounds. Then each
    TVM build's functions are timed inside the model (`profile_runs`). The host's cores are
    the benchmark's alone from the first open to the last call (the search's estimators, Ray
    actors under the shared lease, otherwise ran beside it: one plan of a ResNet-18 search
    timed 28.9, 36.6 and 52.5 ms). Returns each runtime's run (no checks yet) and outputs."""
    contenders = [_Contender(r, threads, m, timeout_s) for r, m in models.items()]
    try:
        for contender in contenders:
            contender.worker.start()  # they import their runtimes meanwhile
        with host_cpu_lease().exclusive():
            for contender in contenders:
                contender.open(input_names, inputs, protocols[contender.runtime])
                contender.wait_quiet()
            for index in range(max(p.repeat for p in protocols.values())):
                for contender in contenders:
                    if contender.error is None and index < protocols[contender.runtime].repeat:
                        contender.turn(1)
                        contender.wait_quiet()
            for contender in contenders:
                contender.profile(profile_runs.get(contender.runtime, 0))
    finally:
        for contender in contenders:
            contender.worker.close()
    return [(c.run(), c.outputs if c.error is None else []) for c in contenders]


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
    tvm_default: bool = True,
    profile_runs: int = 0,
    default_protocol: MeasureProtocol | None = None,
) -> BenchResult:
    """ORT vs TVM's default build of `imported`, per thread count, timed and verified.

    threads defaults to [1, all cores]. Runs never overlap: per thread count ORT, then TVM,
    each in its own process (see the module docstring). A runtime that crashes, fails or
    times out is a run with `error` set, not an exception. builds: further TVM executables
    of the same model (label -> relax VMExecutable, e.g. a tuned plan), each timed and
    verified like TVM's default build, as runtime `label` (or a library file
    `build.export_executable` wrote, taken as it is: exporting runs LLVM's code generation, 7 s
    for ResNet-18). tvm_default=False leaves TVM's default build out (ORT still runs: it is the reference). profile_runs: each of `builds`
    is also run that many times with every function call timed inside the model
    (`RuntimeRun.kernels`), after its timing. default_protocol: how TVM's default build is
    timed (None: `protocol`; a search's finish times it briefly: ResNet-18's untuned build
    runs 2.2 s a call, and the default protocol's 14 calls took 39 s of a 5-min budget).
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
    executable = build.build_default(imported.mod, target) if tvm_default else None
    compile_s = time.perf_counter() - start
    if executable is not None:
        log.info("TVM default build: %.2f s", compile_s)

    runs: list[RuntimeRun] = []
    with tempfile.TemporaryDirectory(prefix="ago-bench-") as tmp:
        workdir = Path(tmp)
        start = time.perf_counter()
        default = {}
        if executable is not None:
            default[TVM_DEFAULT] = build.export_executable(executable, workdir / "model.so")
        export_s = time.perf_counter() - start
        libraries = {
            label: Path(exe)
            if isinstance(exe, str | Path)
            else build.export_executable(exe, workdir / f"model-{label}.so")
            for label, exe in builds.items()
        }
        onnx_path = workdir / "model.onnx"
        # Past protobuf's 2 GiB limit the weights must go to a side file.
        large = imported.onnx_model.ByteSize() > (1 << 31) - (64 << 20)
        onnx.save_model(imported.onnx_model, onnx_path, save_as_external_data=large)
        input_names = [s.name for s in imported.inputs]
        inputs = [feeds[name] for name in input_names]
        models = {ORT: onnx_path, **default, **libraries}
        references: dict[int, list[np.ndarray]] = {}
        protocols = {
            runtime: default_protocol if runtime == TVM_DEFAULT and default_protocol else protocol
            for runtime in models
        }
        for count in thread_counts:
            results = _run_interleaved(
                models,
                count,
                input_names,
                inputs,
                protocols,
                timeout_s,
                {label: profile_runs for label in builds},
            )
            for run, outputs in results:
                if run.runtime == ORT:
                    if outputs:
                        references[count] = outputs
                elif run.error is None and count in references:
                    checks = compare_outputs(outputs, references[count], names, tolerance)
                    run = replace(run, checks=checks)
                elif run.error is None:
                    run = replace(run, error="not verified: ONNX Runtime failed at this count")
                runs.append(run)
                log.info("%s", _describe(run))

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


def _describe(run: RuntimeRun) -> str:
    if run.timing is None:
        return f"{run.runtime} x{run.threads}: failed: {run.error}"
    return (
        f"{run.runtime} x{run.threads}: median {run.timing.median * 1e3:.4g} ms "
        f"(spread {run.timing.spread * 100:.1f} %, {run.threads_used} threads busy)"
    )
