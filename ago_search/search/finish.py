"""Plans built end to end: timed and verified during the search, and the final build.

`measure_plan` compiles a plan with the database's best records, times the whole model with
the benchmark's protocol (its own process, beside ONNX Runtime, the reference) and verifies
every output against ONNX Runtime's. `finish` does that for the best plan beside TVM's default
build too, and writes the deployable outputs: `model.so` (the TVM runtime alone loads and runs
it), `plan.json` and `summary.json`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ago_search.bench import ORT, TVM_DEFAULT, BenchResult, bench_model
from ago_search.build import compile_plan_tuned, export_executable
from ago_search.database import SqliteDatabase, TuningDatabase
from ago_search.devices import DeviceProfile
from ago_search.measure import MeasureProtocol
from ago_search.pipeline import PlannedModel

__all__ = ["OURS", "PlanMeasurement", "measure_plan"]

log = logging.getLogger(__name__)

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
) -> PlanMeasurement:
    """Build `planned` with the best records of `store` for `device`, time it end to end and
    verify it against ONNX Runtime (beside TVM's default build when `tvm_default`)."""
    started = time.perf_counter()
    tuned = compile_plan_tuned(
        planned.prepared.legalized,
        planned.graph,
        planned.plan,
        planned.target,
        SqliteDatabase(store, device.key, planned.target),
        fused=planned.fused,
    )
    bench = bench_model(
        planned.imported,
        threads=[device.threads],
        protocol=protocol,
        builds={OURS: tuned.executable},
        tvm_default=tvm_default,
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
        seconds, verified, tuple(errors), tuple(tuned.untuned), bench, tuned.executable
    )


def runtime_seconds(bench: BenchResult, runtime: str) -> float | None:
    run = next((r for r in bench.runs if r.runtime == runtime), None)
    return run.timing.median if run is not None and run.timing is not None else None


def write_library(executable: Any, path: Path) -> Path:
    """The executable as a shared library the TVM runtime alone loads (`relax.VirtualMachine`)."""
    return export_executable(executable, path)


__all__ += ["ORT", "TVM_DEFAULT", "runtime_seconds", "write_library"]
