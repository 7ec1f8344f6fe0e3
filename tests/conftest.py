"""Shared fixtures: the model zoo (generated once into datasets/zoo, cached across runs)."""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from pathlib import Path

import pytest

# The cost model's feature cache goes to a fresh folder per test session: tests featurise
# for real instead of reading what an earlier run (or the user's own work) cached.
os.environ["AGO_SEARCH_CACHE"] = tempfile.mkdtemp(prefix="ago-search-test-cache-")

REPO = Path(__file__).resolve().parents[1]
ZOO_DIR = REPO / "datasets" / "zoo"
sys.path.insert(0, str(REPO / "scripts"))


@pytest.fixture(scope="session")
def zoo() -> dict:
    """name -> manifest entry with an absolute `path`, for every zoo model."""
    import make_zoo

    manifest = make_zoo.make_zoo(ZOO_DIR)
    return {
        name: {**entry, "path": str(ZOO_DIR / entry["file"])}
        for name, entry in manifest["models"].items()
    }


# `scripts/test.sh` runs the suite in two parts: everything but the tests marked `alone` on two
# xdist workers, then those one at a time. This variable says which part a pytest run is.
PART = os.environ.get("AGO_SEARCH_TEST_PART")  # "shared" | "alone" | unset: every test


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if PART not in ("shared", "alone"):
        if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n N` by hand: never beside others
            skip = pytest.mark.skip(reason="marked alone: run it without -n (scripts/test.sh does)")
            for item in items:
                if item.get_closest_marker("alone") is not None:
                    item.add_marker(skip)
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        alone = item.get_closest_marker("alone") is not None
        (keep if alone == (PART == "alone") else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(autouse=True)
def metaschedule_logger_propagates():
    """Keep pytest's handlers off MetaSchedule's logger.

    tune_tir makes that logger non-propagating; pytest then attaches its unnamed capture
    handlers to it at the start of every later test, and MetaSchedule's logger set-up fails on
    an unnamed handler (AttributeError in meta_schedule/logging.py): a second tune_tir in one
    pytest session would fail. A propagating logger gets none.
    """
    logging.getLogger("tvm.s_tir.meta_schedule").propagate = True
