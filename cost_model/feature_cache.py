"""A disk cache of featurised candidates, so that a dataset is featurised once.

Replaying a trace and extracting MetaSchedule's per-store features is most of the cost of
`load_dataset` (milliseconds per candidate, so minutes for a whole collection), and the result
depends only on the task's workload, the trace and the feature code. The cache keeps one file
per task, `<dir>/<task key>.npz`, holding the `StoreParts` of every trace it has seen, keyed by
trace hash, and a tag (feature version, TVM version, target) that must match: a stale file is
ignored and rewritten. Operator nodes are not cached (they are cheap, and come from tasks.json).

The default folder is `$AGO_SEARCH_CACHE/features`, else `~/.cache/ago-search/features`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from cost_model.features import STORE_DIM, WORKLOAD_DIM, StoreParts

__all__ = ["FEATURE_VERSION", "FeatureCache", "default_cache_dir"]

log = logging.getLogger(__name__)

# Bump when StoreParts' content changes (features.py, or MetaSchedule's extractor use).
FEATURE_VERSION = 1
_ROW = STORE_DIM + WORKLOAD_DIM


def default_cache_dir() -> Path:
    root = os.environ.get("AGO_SEARCH_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "ago-search"
    return base / "features"


def cache_tag(target: str) -> str:
    import tvm

    digest = hashlib.sha1(target.encode()).hexdigest()[:12]
    return f"v{FEATURE_VERSION}-tvm{tvm.__version__}-{digest}"


class FeatureCache:
    """Per-task files of `StoreParts` keyed by trace hash (None: the trace did not replay)."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.directory = Path(directory) if directory is not None else default_cache_dir()

    def path(self, task_key: str) -> Path:
        return self.directory / (re.sub(r"[^0-9A-Za-z_.@-]", "_", task_key) + ".npz")

    def load(self, task_key: str, tag: str) -> dict[str, StoreParts | None]:
        path = self.path(task_key)
        if not path.is_file():
            return {}
        try:
            with np.load(path, allow_pickle=False) as data:
                if str(data["tag"]) != tag:
                    return {}
                hashes, ok = data["hashes"], data["ok"]
                rows, feats = data["rows"], data["feats"]
                eoff, edges = data["eoff"], data["edges"]
        except (OSError, ValueError, KeyError) as err:
            log.warning("feature cache %s is unreadable (%s): ignored", path, err)
            return {}
        out: dict[str, StoreParts | None] = {}
        for i, trace_hash in enumerate(hashes.tolist()):
            if not ok[i]:
                out[trace_hash] = None
                continue
            out[trace_hash] = StoreParts(
                feats[rows[i] : rows[i + 1]].reshape(-1, _ROW),
                edges[eoff[i] : eoff[i + 1]].reshape(-1, 2),
            )
        return out

    def save(self, task_key: str, tag: str, parts: Mapping[str, StoreParts | None]) -> None:
        """Write the file whole, then rename (a killed run leaves the old file or none)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        hashes = list(parts)
        rows, eoff = [0], [0]
        feats, edges = [], []
        for trace_hash in hashes:
            part = parts[trace_hash]
            if part is not None:
                feats.append(np.asarray(part.features, np.float32).reshape(-1, _ROW))
                edges.append(np.asarray(part.edges, np.int32).reshape(-1, 2))
            rows.append(rows[-1] + (feats[-1].shape[0] if part is not None else 0))
            eoff.append(eoff[-1] + (edges[-1].shape[0] if part is not None else 0))
        path = self.path(task_key)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
        np.savez(
            tmp,
            tag=np.asarray(tag),
            hashes=np.asarray(hashes, dtype=str),
            ok=np.asarray([parts[h] is not None for h in hashes], bool),
            rows=np.asarray(rows, np.int64),
            feats=np.concatenate(feats) if feats else np.zeros((0, _ROW), np.float32),
            eoff=np.asarray(eoff, np.int64),
            edges=np.concatenate(edges) if edges else np.zeros((0, 2), np.int32),
        )
        os.replace(tmp, path)
