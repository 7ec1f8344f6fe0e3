"""Shared fixtures: the model zoo (generated once into datasets/zoo, cached across runs)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

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
