"""Why a candidate failed, as data beside the result MetaSchedule carries.

MetaSchedule's `BuilderResult` and `RunnerResult` are FFI objects with a library path or run
times and an error text, nothing more. Why a candidate failed (a time-out, a crash, a wrong
result) is known where it failed, in our builders and runners, and is needed where it is
recorded (`database.metaschedule.CommitMeasurements`, the untuned measurement of
`schedule.tune`). So each builder and runner keeps the `Status` of every failed result it
hands out in a `ResultStatuses`, and answers `status_of(result)`: MetaSchedule passes the
same result objects on to its measure callbacks, which ask. The error text stays what a
person reads; no code reads a status out of it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, TypeVar

from ago_search.database.records import Status

__all__ = ["ResultStatuses"]

_Result = TypeVar("_Result")

# Results kept per builder or runner: MetaSchedule reads a round's results right after the
# round, and a round is tens of candidates; a caller that never asks loses only the oldest.
_CAPACITY = 4096


class ResultStatuses:
    """The status of each failed result object handed out, looked up by that object.

    Keyed by the FFI object itself (its handle), which MetaSchedule passes on unchanged; the
    object is held while kept, so its handle cannot be reused by another. Results not
    remembered (successes, another builder's) have no status here: `status_of` is None.
    """

    def __init__(self, capacity: int = _CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._kept: OrderedDict[int, tuple[Any, Status]] = OrderedDict()
        self._lock = threading.Lock()

    def remember(self, result: _Result, status: Status) -> _Result:
        """Keep `status` for `result` (an OK status is not kept); `result` back."""
        if status is not Status.OK:
            with self._lock:
                self._kept[result.__chandle__()] = (result, status)  # type: ignore[attr-defined]
                while len(self._kept) > self.capacity:
                    self._kept.popitem(last=False)
        return result

    def status_of(self, result: Any) -> Status | None:
        """The status kept for `result`, None if it is not one of the failures kept."""
        with self._lock:
            kept = self._kept.get(result.__chandle__())
        if kept is None or not kept[0].same_as(result):
            return None
        return kept[1]
