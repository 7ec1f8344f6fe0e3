"""The search's time budget: wall-clock seconds, parsed from `45s`, `20m`, `2h` or `1h30m`,
counted across interruptions.

A search that is stopped and started again on the same output folder goes on with what is
left: the seconds already spent are saved with the search state and `Budget.resume` starts
from them, so `--budget 2h` is two hours of searching in all, however many runs it takes.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field

from ago_search.errors import AgoSearchError

__all__ = ["Budget", "format_duration", "parse_budget"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_budget(text: str) -> float:
    """Seconds of a duration written as `45s`, `20m`, `2h`, `1h30m` or `1.5h` (a bare number is
    seconds). Raises AgoSearchError naming the text and the forms it takes."""
    spelled = str(text).strip().lower().replace(" ", "")
    seconds: float | None = None
    if re.fullmatch(r"\d+(?:\.\d+)?", spelled):
        seconds = float(spelled)
    elif spelled and _PART.sub("", spelled) == "":
        parts = _PART.findall(spelled)
        units = [unit for _, unit in parts]
        if len(set(units)) == len(units):
            seconds = sum(float(value) * _UNITS[unit] for value, unit in parts)
    if seconds is None or not math.isfinite(seconds) or seconds <= 0:
        raise AgoSearchError(
            f"--budget {text!r}: not a duration; write it like 45s, 20m, 2h or 1h30m (more than 0)"
        )
    return seconds


def format_duration(seconds: float) -> str:
    """`1h02m`, `3m05s`, `42s`: a duration as the progress bar and summaries show it."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@dataclass
class Budget:
    """`total` seconds of search, `spent_before` of them in earlier runs; this run's clock
    starts at construction."""

    total: float
    spent_before: float = 0.0
    _started: float = field(default_factory=time.monotonic, repr=False)

    @property
    def spent(self) -> float:
        return self.spent_before + (time.monotonic() - self._started)

    @property
    def left(self) -> float:
        return max(0.0, self.total - self.spent)

    @property
    def fraction(self) -> float:
        return min(1.0, self.spent / self.total) if self.total > 0 else 1.0

    def expired(self, reserve: float = 0.0) -> bool:
        """True once less than `reserve` seconds are left (what finishing needs)."""
        return self.left <= reserve

    def deadline(self, reserve: float = 0.0) -> float:
        """The `time.monotonic()` at which only `reserve` seconds will be left."""
        return time.monotonic() + max(0.0, self.left - reserve)
