"""Plans built end to end: timed and verified during the search, and the final build.

`measure_plan` compiles a plan with the database's best records, times the whole model with
the benchmark's protocol (its own process, beside ONNX Runtime, the reference) and verifies
every output against ONNX Runtime's. `finish` does that for the best plan beside TVM's default
build too, and writes the deployable outputs: `model.so` (the TVM runtime alone loads and runs
it), `plan.json` and `summary.json`.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ago_search.bench import ORT, TVM_DEFAULT, BenchResult, bench_model
from ago_search.build import compile_plan_tuned, export_executable
from ago_search.database import SqliteDatabase, TuningDatabase
from ago_search.devices import DeviceProfile
from ago_search.measure import MeasureProtocol
from ago_search.pipeline import PlannedModel
from ago_search.search.budget import Budget
from ago_search.search.state import SearchState

__all__ = ["OURS", "PlanMeasurement", "measure_plan", "search_summary", "spearman"]

log = logging.getLogger(__name__)

# How the finish times TVM's default build, a reference figure only: one warm-up call and
# three timed ones (each call at least 50 ms, as the default protocol asks)
REFERENCE_PROTOCOL = MeasureProtocol(warmup=1, number=None, repeat=3, min_repeat_ms=50.0)

OURS = "ago-search"


@dataclass(frozen=True)
class PlanMeasurement:
    """One plan built with its tuned schedules and timed end to end."""

    seconds: float | None  # median; None when the build or the run failed
    verified: bool
    errors: tuple[str, ...]
    untuned_kernels: tuple[str, ...]
    bench: BenchResult | None
    executable: Any = None
    # the build's functions, their seconds per inference inside the model (profile_runs)
    kernels: dict[str, float] | None = None
    library: Path | None = None  # the build exported, what was timed

    def to_json(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "verified": self.verified,
            "errors": list(self.errors),
            "untuned_kernels": list(self.untuned_kernels),
        }


def measure_plan(
    planned: PlannedModel,
    store: TuningDatabase,
    device: DeviceProfile,
    protocol: MeasureProtocol | None = None,
    tvm_default: bool = False,
    profile_runs: int = 0,
    *,
    library: Path,
) -> PlanMeasurement:
    """Build `planned` with the best records of `store` for `device`, time it end to end and
    verify it against ONNX Runtime (beside TVM's default build when `tvm_default`); with
    `profile_runs`, also each kernel's time inside the model (`PlanMeasurement.kernels`).
    The build is exported once, to `library`, and timed from
    there (`PlanMeasurement.library`): exporting runs LLVM's code generation, 7 s of a
    ResNet-18 timing's 42 s when the search exported it twice."""
    started = time.perf_counter()
    tuned = compile_plan_tuned(
        planned.prepared.legalized,
        planned.graph,
        planned.plan,
        planned.target,
        SqliteDatabase(store, device.key, planned.target),
        fused=planned.fused,
    )
    library.parent.mkdir(parents=True, exist_ok=True)
    export_executable(tuned.executable, library)
    bench = bench_model(
        planned.imported,
        threads=[device.threads],
        protocol=protocol,
        builds={OURS: library},
        tvm_default=tvm_default,
        profile_runs=profile_runs,
        # TVM's default build is a reference only (untuned: 50-100x slower), timed in a
        # few calls
        default_protocol=REFERENCE_PROTOCOL,
    )
    ours = next(r for r in bench.runs if r.runtime == OURS)
    errors = []
    if ours.error is not None:
        errors.append(ours.error)
    errors += [
        f"output {c.name}: max relative error {c.max_rel_err:.3g} {c.note}".rstrip()
        for c in ours.checks
        if not c.ok
    ]
    verified = ours.error is None and bool(ours.checks) and all(c.ok for c in ours.checks)
    seconds = ours.timing.median if ours.timing is not None else None
    log.info(
        "plan measured end to end: %s ms (%s) in %.1f s",
        f"{seconds * 1e3:.4g}" if seconds is not None else "-",
        "verified" if verified else "NOT verified",
        time.perf_counter() - started,
    )
    return PlanMeasurement(
        seconds,
        verified,
        tuple(errors),
        tuple(tuned.untuned),
        bench,
        tuned.executable,
        ours.kernels,
        library,
    )


def runtime_seconds(bench: BenchResult, runtime: str) -> float | None:
    run = next((r for r in bench.runs if r.runtime == runtime), None)
    return run.timing.median if run is not None and run.timing is not None else None


__all__ += ["ORT", "TVM_DEFAULT", "runtime_seconds"]


def search_summary(
    *,
    model: str,
    device: DeviceProfile,
    budget: Budget,
    state: SearchState,
    final: PlanMeasurement | None,
    interrupted: bool,
    plans_scored: int,
    plans_suggested: int,
    estimator_nodes: int,
    measurements: int,
    measurements_before: int,
    outputs: dict[str, str],
    plan_info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`summary.json`: the final build beside ORT and TVM's default build (or, for a stopped
    search, the best verified plan so far), the budget, the counts, every end-to-end timing and
    how well the plan score ranked them."""
    ort = tvm_default = ours = None
    verified, errors = False, []
    if final is not None and final.bench is not None:
        ort = runtime_seconds(final.bench, ORT)
        tvm_default = runtime_seconds(final.bench, TVM_DEFAULT)
        ours = runtime_seconds(final.bench, OURS)
        verified, errors = final.verified, list(final.errors)
    elif state.best is not None:
        ours, verified = state.best["measured_s"], True
    pairs = [
        (e["predicted_s"], e["measured_s"])
        for e in state.end_to_end
        if e.get("measured_s") is not None
        and e.get("predicted_s") is not None
        and e.get("verified")
    ]
    return {
        "model": model,
        "device": device.name,
        "device_key": device.key,
        "threads": device.threads,
        "interrupted": interrupted,
        "finished": state.finished,
        "latency_s": {"onnxruntime": ort, "tvm_default": tvm_default, "ago_search": ours},
        "speedup": {
            "vs_onnxruntime": _ratio(ort, ours),
            "vs_tvm_default": _ratio(tvm_default, ours),
        },
        "verified": verified,
        "errors": errors,
        "untuned_kernels": list(final.untuned_kernels) if final is not None else [],
        "budget_s": budget.total,
        "spent_s": budget.spent,
        "plans_scored": plans_scored,
        "plans_suggested": plans_suggested,
        "estimator_nodes": estimator_nodes,
        "measurements": measurements,
        "measurements_this_run": measurements - measurements_before,
        "end_to_end": state.end_to_end,
        "score_rank_correlation": spearman(pairs),
        "best": state.best,
        "exploration": {"layouts": list(state.explored), "seconds": state.exploration_s},
        "plan": plan_info,
        "outputs": outputs,
    }


def _ratio(reference: float | None, ours: float | None) -> float | None:
    return reference / ours if reference and ours else None


def spearman(pairs: list[tuple[float, float]]) -> float | None:
    """Rank correlation of predicted vs measured end-to-end latency (None under 3 plans)."""
    if len(pairs) < 3:
        return None
    predicted = np.argsort(np.argsort([p for p, _ in pairs]))
    measured = np.argsort(np.argsort([m for _, m in pairs]))
    if predicted.std() == 0 or measured.std() == 0:
        return None
    value = float(np.corrcoef(predicted, measured)[0, 1])
    return value if math.isfinite(value) else None
