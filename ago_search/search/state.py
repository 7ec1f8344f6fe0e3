"""The search's output folder and the state that lets a stopped search go on.

    OUT/tuning.db          every measurement (SQLite, committed one by one: a kill -9 loses none)
    OUT/search-state.json  what the search knows besides: the model it is for, the budget spent,
                           the searcher's plans and scores, the task estimates, end-to-end
                           measurements; rewritten atomically after every step
    OUT/plan.json          the best verified plan so far (and at the end)
    OUT/plans/KEY.json     every plan timed end to end (KEY: the plan's key in the state's
                           end-to-end timings), so any of them can be built again
    OUT/plans/timed-model.so  the last of them built, as it was timed
    OUT/model.so           the best one's compiled library (a copy of the timed one), loadable
                           with the TVM runtime alone
    OUT/summary.json       latencies of ONNX Runtime, the plan found (and at budgets of 30 min
                           and more TVM's default build), each verified against ONNX Runtime;
                           written when the search finishes

A folder made for another model (or another device) is refused with a message that says so.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ago_search.errors import AgoSearchError

__all__ = ["OutputFolder", "SearchState", "write_json_atomic"]

STATE_FORMAT = "ago-search-state"
STATE_VERSION = 1


def _winograd_name(tile: Any) -> str:
    return "off" if not tile else str(tile)


class OutputFolderError(AgoSearchError):
    """The output folder belongs to another model or device, or its state is damaged."""


def write_json_atomic(data: Any, path: Path) -> None:
    """Write JSON so that a reader (or a crash) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as stream:
            json.dump(data, stream, indent=1)
            stream.write("\n")
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class SearchState:
    """Everything a search keeps besides the tuning database (see the module docstring)."""

    model: dict[str, Any]  # path, graph fingerprint, input shapes
    device_key: str
    budget_s: float
    spent_s: float = 0.0
    searcher: dict[str, Any] | None = None
    estimates: dict[str, dict[str, Any]] = field(default_factory=dict)
    end_to_end: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    leader: str | None = None
    finished: bool = False
    end_to_end_s: float | None = None  # how long timing a plan end to end took
    # the layouts whose first tasks were tuned (`SearchConfig.explore_tasks`), and the time
    explored: list[str] = field(default_factory=list)
    exploration_s: float = 0.0
    # task key -> its kernel's time inside the model / alone (the end-to-end timings)
    in_model: dict[str, float] = field(default_factory=dict)
    # what a tuning round costs here (`schedule.strategy.RoundPace.to_json`)
    round_pace: dict[str, float | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "model": self.model,
            "device_key": self.device_key,
            "budget_s": self.budget_s,
            "spent_s": self.spent_s,
            "searcher": self.searcher,
            "estimates": self.estimates,
            "end_to_end": self.end_to_end,
            "best": self.best,
            "history": self.history,
            "leader": self.leader,
            "finished": self.finished,
            "end_to_end_s": self.end_to_end_s,
            "explored": self.explored,
            "exploration_s": self.exploration_s,
            "in_model": self.in_model,
            "round_pace": self.round_pace,
        }

    @staticmethod
    def from_json(data: Mapping[str, Any], source: str) -> SearchState:
        if data.get("format") != STATE_FORMAT or data.get("version") != STATE_VERSION:
            raise OutputFolderError(
                f"{source} is not a search state this version reads (format "
                f"{data.get('format')!r} version {data.get('version')!r}); give another --out"
            )
        return SearchState(
            model=dict(data["model"]),
            device_key=str(data["device_key"]),
            budget_s=float(data["budget_s"]),
            spent_s=float(data.get("spent_s", 0.0)),
            searcher=data.get("searcher"),
            estimates=dict(data.get("estimates", {})),
            end_to_end=list(data.get("end_to_end", [])),
            best=data.get("best"),
            history=list(data.get("history", [])),
            leader=data.get("leader"),
            finished=bool(data.get("finished", False)),
            end_to_end_s=data.get("end_to_end_s"),
            explored=list(data.get("explored", [])),
            exploration_s=float(data.get("exploration_s", 0.0)),
            in_model={k: float(v) for k, v in (data.get("in_model") or {}).items()},
            round_pace=dict(data.get("round_pace") or {}),
        )


class OutputFolder:
    """The paths of one search's output folder (see the module docstring)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def database(self) -> Path:
        return self.path / "tuning.db"

    @property
    def state_file(self) -> Path:
        return self.path / "search-state.json"

    @property
    def plan(self) -> Path:
        return self.path / "plan.json"

    def timed_plan(self, key: str) -> Path:
        """Where the plan `key` timed end to end is kept."""
        return self.path / "plans" / f"{key}.json"

    @property
    def library(self) -> Path:
        return self.path / "model.so"

    @property
    def timed_library(self) -> Path:
        """The last plan timed end to end, built (`model.so` is a copy of the best)."""
        return self.path / "plans" / "timed-model.so"

    def keep_library(self, library: Path) -> None:
        """`library` becomes `model.so` (copied beside it, then renamed: a crash leaves the
        old one or the new one, never half of one)."""
        part = self.library.with_name(self.library.name + ".part")
        shutil.copyfile(library, part)
        os.replace(part, self.library)

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    def prepare(self) -> None:
        if self.path.exists() and not self.path.is_dir():
            raise OutputFolderError(
                f"--out {self.path}: a file, not a folder; give a folder for the search's output"
            )
        self.path.mkdir(parents=True, exist_ok=True)

    def load_state(self, model: Mapping[str, Any], device_key: str) -> SearchState | None:
        """The state of an earlier search of the same model and device in this folder (None:
        a new folder); raises OutputFolderError for another model's or device's folder."""
        if not self.state_file.exists():
            return None
        try:
            data = json.loads(self.state_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise OutputFolderError(
                f"--out {self.path}: {self.state_file.name} is damaged ({exc}); give another --out"
            ) from exc
        state = SearchState.from_json(data, str(self.state_file))
        if state.model.get("graph") != model.get("graph"):
            raise OutputFolderError(
                f"--out {self.path} holds a search of another model "
                f"({state.model.get('path')}, inputs {state.model.get('inputs')}); give another "
                "--out, or delete the folder to start over"
            )
        if state.model.get("winograd") != model.get("winograd"):
            raise OutputFolderError(
                f"--out {self.path} holds a search with --winograd "
                f"{_winograd_name(state.model.get('winograd'))}, not "
                f"{_winograd_name(model.get('winograd'))}: its plans are of other kernels; give "
                "the same --winograd, or another --out"
            )
        if state.device_key != device_key:
            raise OutputFolderError(
                f"--out {self.path} holds a search for device {state.device_key}, not "
                f"{device_key}; give another --out for this device"
            )
        return state

    def save_state(self, state: SearchState) -> None:
        write_json_atomic(state.to_json(), self.state_file)
