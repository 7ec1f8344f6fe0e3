"""The plan searcher: proposes partitions and learns from their scores, the way Ray Tune's
`Searcher` does (`suggest`, `on_result`, `save`, `restore`). It knows nothing of how a plan is
scored, built or measured: the driver asks it for candidates, scores them (predicted or
measured end-to-end latency, lower is better) and tells it.

Strategy: an evolutionary local search over `PlanSpace`. The seeds come first (TVM's fusion,
DNNFusion's, AGO's intensive one); after that each suggestion is a few random moves away from
a parent drawn from the best scored plans (a tournament: better plans are drawn more often,
every kept plan now and then). A partition is suggested once; a score given again for a known
partition (scores change as measurements replace estimates) replaces the old one.

Divide and conquer: where the space has regions (`search/regions.py`), a score may come with
the plan's cost per region, and the join of the best plan of each region is suggested first
whenever it is one not seen yet: an improvement found in one region by one child and another
found elsewhere by another end up in one plan.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ago_search.partition import Partition
from ago_search.search.laid import LaidPartition
from ago_search.search.space import PlanSpace

__all__ = ["PlanSearcher", "Suggestion"]

STATE_VERSION = 1


@dataclass(frozen=True)
class Suggestion:
    """A plan to score (a partition with its groups' layouts); `origin` says where it came
    from ("seed:tvm", "merge+split", "seed:tvm/NHWC")."""

    partition: LaidPartition
    origin: str

    @property
    def key(self) -> str:
        return self.partition.fingerprint()


@dataclass
class _Entry:
    partition: LaidPartition
    origin: str
    score: float | None = None
    parts: tuple[float, ...] | None = None  # cost per region, when the space has regions


class PlanSearcher:
    """space: the plan space; seeds: name -> partition (fitted to the space's limits first);
    population: how many of the best plans are kept as parents; seed: the random seed."""

    def __init__(
        self,
        space: PlanSpace,
        seeds: Mapping[str, Partition | LaidPartition],
        population: int = 12,
        tournament: int = 3,
        max_moves: int = 3,
        seed: int = 0,
    ) -> None:
        self.space = space
        self.population = population
        self.tournament = tournament
        self.max_moves = max_moves
        self._rng = random.Random(seed)
        self._entries: dict[str, _Entry] = {}
        self._queue: list[Suggestion] = []
        for name, seed in seeds.items():
            partition = seed if isinstance(seed, LaidPartition) else LaidPartition(seed)
            fitted = space.fit_to_limits(partition)
            origin = f"seed:{name}" + ("" if fitted == partition else "(cut to the limits)")
            if fitted.fingerprint() not in {s.key for s in self._queue}:
                self._queue.append(Suggestion(fitted, origin))

    # -- the Searcher interface ----------------------------------------------------------------

    def suggest(self, count: int) -> list[Suggestion]:
        """Up to `count` partitions never suggested before (fewer when the space around the
        kept plans seems exhausted)."""
        out: list[Suggestion] = []
        joined = self._join_best()
        if joined is not None and count > 0:
            self._entries[joined.fingerprint()] = _Entry(joined, "join")
            out.append(Suggestion(joined, "join"))
        while self._queue and len(out) < count:
            suggestion = self._queue.pop(0)
            if suggestion.key not in self._entries:
                self._entries[suggestion.key] = _Entry(suggestion.partition, suggestion.origin)
                out.append(suggestion)
        attempts = 0
        while len(out) < count and attempts < 20 * count:
            attempts += 1
            parent = self._draw_parent()
            if parent is None:
                break
            child, moves = parent.partition, []
            for _ in range(1 + self._geometric()):
                step = self.space.neighbour(child, self._rng)
                if step is None:
                    break
                child, kind = step
                moves.append(kind)
            key = child.fingerprint()
            if not moves or key in self._entries:
                continue
            self._entries[key] = _Entry(child, "+".join(moves))
            out.append(Suggestion(child, "+".join(moves)))
        return out

    def on_result(
        self, key: str, score: float | None, parts: Sequence[float] | None = None
    ) -> None:
        """The score (seconds, lower is better; None: could not be scored) of a suggested
        partition, and its cost per region of the space's `regions` (None: not known); given
        again, they replace the earlier ones."""
        entry = self._entries.get(key)
        if entry is None:
            raise KeyError(f"partition {key} was never suggested")
        entry.score = score
        regions = self.space.regions
        if parts is not None and (regions is None or len(parts) != regions.count):
            raise ValueError("region costs given for a space without those regions")
        entry.parts = tuple(parts) if parts is not None and score is not None else None

    def best(self, count: int = 1) -> list[tuple[LaidPartition, float, str]]:
        """The best scored partitions: (partition, score, origin), best first."""
        scored = [e for e in self._entries.values() if e.score is not None]
        scored.sort(key=lambda e: e.score)  # type: ignore[arg-type, return-value]
        return [(e.partition, float(e.score), e.origin) for e in scored[:count]]  # type: ignore[arg-type]

    def origin(self, key: str) -> str:
        """Where a suggested partition came from ("seed:tvm", "merge+split", ...)."""
        return self._entries[key].origin

    def scored(self) -> list[tuple[str, LaidPartition, float]]:
        """Every scored partition: (key, partition, score)."""
        return [(k, e.partition, e.score) for k, e in self._entries.items() if e.score is not None]

    def unscored(self) -> list[Suggestion]:
        """Partitions suggested and not scored yet (after a restore: those in flight)."""
        return [
            Suggestion(e.partition, e.origin) for e in self._entries.values() if e.score is None
        ]

    def seeds(self) -> dict[str, tuple[LaidPartition, float | None]]:
        """The seeds suggested so far: name ("tvm", "tvm/NHWC") -> (partition as fitted to the
        limits, score or None)."""
        out: dict[str, tuple[LaidPartition, float | None]] = {}
        for entry in self._entries.values():
            if entry.origin.startswith("seed:"):
                name = entry.origin.removeprefix("seed:").split("(", 1)[0]
                out[name] = (entry.partition, entry.score)
        return out

    def __len__(self) -> int:
        return len(self._entries)

    # -- state ---------------------------------------------------------------------------------

    def save(self) -> dict[str, Any]:
        """Plain JSON-ready state: every partition suggested, its origin and score."""
        return {
            "version": STATE_VERSION,
            "rng": _rng_to_json(self._rng.getstate()),
            "entries": [
                {
                    "partition": e.partition.to_dict(),
                    "origin": e.origin,
                    "score": e.score,
                    "parts": list(e.parts) if e.parts is not None else None,
                }
                for e in self._entries.values()
            ],
            "queue": [
                {"partition": s.partition.to_dict(), "origin": s.origin} for s in self._queue
            ],
        }

    def restore(self, state: Mapping[str, Any]) -> None:
        """Continue from `save()`'s state (of the same graph)."""
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"searcher state version {state.get('version')!r} is unknown")
        graph = self.space.graph
        self._rng.setstate(_rng_from_json(state["rng"]))
        self._entries = {}
        for item in state["entries"]:
            partition = LaidPartition.from_dict(graph, item["partition"])
            parts = item.get("parts")
            self._entries[partition.fingerprint()] = _Entry(
                partition, item["origin"], item.get("score"), tuple(parts) if parts else None
            )
        seeds = [s for s in self._queue if s.origin.startswith("seed:")]
        self._queue = [
            Suggestion(LaidPartition.from_dict(graph, item["partition"]), item["origin"])
            for item in state.get("queue", [])
        ]
        # seeds the saved search never had (it ran without layouts, or before a seed was
        # added) are still to be suggested
        queued = {s.key for s in self._queue}
        self._queue[:0] = [s for s in seeds if s.key not in self._entries and s.key not in queued]

    # -- internals -----------------------------------------------------------------------------

    def _draw_parent(self) -> _Entry | None:
        scored = sorted(
            (e for e in self._entries.values() if e.score is not None),
            key=lambda e: e.score,  # type: ignore[arg-type, return-value]
        )[: self.population]
        if not scored:
            return None
        picks = [self._rng.randrange(len(scored)) for _ in range(self.tournament)]
        return scored[min(picks)]

    def _join_best(self) -> LaidPartition | None:
        """The join of the best plan of every region, if it was never suggested."""
        regions = self.space.regions
        if regions is None or regions.count < 2:
            return None
        costed = [e for e in self._entries.values() if e.parts is not None]
        if len(costed) < 2:
            return None
        best = [min(costed, key=lambda e: e.parts[r]) for r in range(regions.count)]  # type: ignore[index]
        if len({id(e) for e in best}) < 2:
            return None  # one plan is best everywhere: nothing to join
        joined = regions.join([e.partition.partition for e in best])
        of = regions.of_position
        labels = [best[of[p]].partition.labels[p] for p in range(len(of))]
        laid = LaidPartition(joined, labels)
        return None if laid.fingerprint() in self._entries else laid

    def _geometric(self) -> int:
        extra = 0
        while extra < self.max_moves - 1 and self._rng.random() < 0.4:
            extra += 1
        return extra


def _rng_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_from_json(data: Sequence) -> tuple:
    version, internal, gauss = data
    return (version, tuple(internal), gauss)
