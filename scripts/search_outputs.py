"""A search's output folder built again: what scripts that time a search's plan share
(`score_gap.py`, `time_plans.py`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class BuiltSearch:
    """A search's plan (`OUT/plan.json`) built with its records (`OUT/tuning.db`), as its
    finish builds it."""

    state: dict[str, Any]
    device_key: str
    imported: Any
    prepared: Any
    planned: Any
    store: Any
    tuned: Any


def build_search_output(out: Path, host: Any, prepared: Any = None) -> BuiltSearch:
    """Build `out`'s plan for `host` (a `DeviceProfile`); `prepared`: the model already
    prepared (several searches of one model), else imported and prepared here."""
    from ago_search.build import compile_plan_tuned
    from ago_search.database import SqliteDatabase, TuningDatabase
    from ago_search.pipeline import import_model, plan_model, prepare_model
    from ago_search.plan import Plan

    state = json.loads((out / "search-state.json").read_text())
    target = host.tvm_target()
    if prepared is None:
        model = state["model"]
        shapes = {k: tuple(v) for k, v in model["inputs"].items()}
        prepared = prepare_model(import_model(model["path"], shapes), target)
    planned = plan_model(prepared, Plan.load(out / "plan.json"))
    device_key = state.get("device_key", host.key)
    store = TuningDatabase(out / "tuning.db")
    tuned = compile_plan_tuned(
        prepared.legalized,
        planned.graph,
        planned.plan,
        target,
        SqliteDatabase(store, device_key, target),
        fused=planned.fused,
    )
    return BuiltSearch(state, device_key, prepared.imported, prepared, planned, store, tuned)
