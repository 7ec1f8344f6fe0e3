"""A trained cost model as one object to save, load and predict with: the GNN's parameters,
its config, and the feature and target standardisation.

A saved model is a folder: `params.npz` (parameters by path), `model.json` (config, stats,
and a free-form `info`, e.g. what it was trained on). `load_pretrained()` loads the default
that ships in `cost_model/pretrained/`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from cost_model.configs.default import Config
from cost_model.features import CandidateGraph, FeatureStats
from cost_model.input_pipeline import TargetStats
from cost_model.models import CostGNN
from cost_model.train import create_model, predict_normalised

__all__ = ["DEFAULT_PRETRAINED", "Predictor", "load_pretrained"]

log = logging.getLogger(__name__)

PRETRAINED_DIR = Path(__file__).parent / "pretrained"
DEFAULT_PRETRAINED = "host-znver4"
FORMAT = 1


def _flatten(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, path + "/"))
        else:
            flat[path] = np.asarray(value)
    return flat


def _unflatten(flat: dict[str, np.ndarray]) -> dict[Any, Any]:
    tree: dict[Any, Any] = {}
    for path, value in flat.items():
        node = tree
        parts = [int(p) if p.isdigit() else p for p in path.split("/")]
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return tree


@dataclass(frozen=True)
class Predictor:
    """Model + standardisation. `predict` gives log latency (natural log of seconds)."""

    config: Config
    model: CostGNN
    feature_stats: FeatureStats
    target_stats: TargetStats
    info: dict[str, Any] = field(default_factory=dict)

    def predict(self, graphs: Sequence[CandidateGraph]) -> np.ndarray:
        """Predicted log latency of raw (unstandardised) graphs."""
        normed = [self.feature_stats.apply(g) for g in graphs]
        return self.target_stats.denormalise(predict_normalised(self.model, normed))

    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        pure = nnx.to_pure_dict(nnx.state(self.model, nnx.Param))
        np.savez(directory / "params.npz", **_flatten(pure))
        meta = {
            "format": FORMAT,
            "config": self.config.to_json(),
            "feature_stats": self.feature_stats.to_json(),
            "target_stats": {"mean": self.target_stats.mean, "std": self.target_stats.std},
            "info": self.info,
        }
        (directory / "model.json").write_text(json.dumps(meta, indent=1))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Predictor:
        directory = Path(directory)
        meta = json.loads((directory / "model.json").read_text())
        if meta.get("format", 1) > FORMAT:
            raise ValueError(f"{directory}: model format {meta['format']} is newer than {FORMAT}")
        config = Config.from_json(meta["config"])
        model = create_model(config)
        state = nnx.state(model, nnx.Param)
        with np.load(directory / "params.npz") as data:
            flat = {k: data[k] for k in data.files}
        nnx.replace_by_pure_dict(state, _unflatten(flat))
        nnx.update(model, state)
        return cls(
            config,
            model,
            FeatureStats.from_json(meta["feature_stats"]),
            TargetStats(**meta["target_stats"]),
            meta.get("info", {}),
        )


def load_pretrained(name: str = DEFAULT_PRETRAINED) -> Predictor:
    """The pretrained model shipped in the package (`cost_model/pretrained/<name>`)."""
    path = PRETRAINED_DIR / name
    if not (path / "model.json").exists():
        known = sorted(p.name for p in PRETRAINED_DIR.iterdir()) if PRETRAINED_DIR.exists() else []
        raise FileNotFoundError(f"no pretrained cost model {name!r} (have: {known})")
    return Predictor.load(path)
