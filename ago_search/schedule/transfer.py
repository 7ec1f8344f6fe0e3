"""Schedules handed between similar tasks of a run (transfer tuning).

A plan's tasks are often the same anchor op in other clothes: ResNet's two 3x3 convs of a
stage differ only in their epilogue (bias + ReLU, bias + residual + ReLU), its stages are the
same conv at other sizes, MobileNetV2's blocks repeat one pattern at six widths. MetaSchedule
tunes each as a stranger: its evolutionary search starts a task from the task's own records
only (`PickBestFromDatabase` looks up one workload), so two siblings each pay for the same
discovery.

Here a task's round may carry a few candidates made from other tasks' best schedules: the
task's own design space (the same rules made it, so its instructions are the donor's) replayed
with the donor's sampling decisions: tile sizes, unroll, compute locations. The tile sizes are
fitted to the task's own loop extents (the factor nearest the donor's that divides what is left,
innermost first); TVM repairs a compute location that no longer exists. A donor qualifies when
its trace tiles the same blocks (by name: `conv2d_nhwc`, `depthwise_conv2d_nchw`, ...) with the
same sequence of sampling instructions; donors are tried nearest first by the distance of their
tiled loops' extents (0: the same anchor, another epilogue). Each donor schedule is handed to a
task once; candidates are measured and verified like the search's own, and what is measured is
the task's record, from which its evolutionary search goes on (its initial population takes
the task's best records).

Gibson et al., "Transfer-Tuning: Reusing Auto-Schedules for Efficient Tensor Program Code
Generation" (PACT 2022) reuse whole schedules between kernels of one model; here the decisions
travel, so the schedule always fits the receiving task's design space.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ago_search.database import TuningDatabase, trace_hash

__all__ = ["VECTOR_SEEDS", "DonorPool", "TraceShape", "fit_tile", "read_trace", "vector_decisions"]

log = logging.getLogger(__name__)

_TILE, _CATEGORICAL, _LOCATION = "SamplePerfectTile", "SampleCategorical", "SampleComputeLocation"
SAMPLING = (_TILE, _CATEGORICAL, _LOCATION)
_STRUCTURAL = frozenset(
    {
        "CacheRead",
        "CacheWrite",
        "ReverseComputeAt",
        "RFactor",
        "DecomposeReduction",
        "Blockize",
        "Tensorize",
        "ReIndex",
        "TransformLayout",
        "TransformBlockLayout",
    }
)


@dataclass(frozen=True)
class TraceShape:
    """What a trace's sampling says about its task.

    anchors: names of the blocks it tiles (multi-level tiling's `tiling_structure` mark).
    kinds: each sampling instruction in order: (kind, tile parts or categorical choices).
    extents: the extent of each tiled loop (the product of its tile decision), in order.
    decisions: each sampling instruction's decision, in order (None where it has none).
    caps: each tile's largest innermost factor (0: none).
    structure: the instructions that shape the schedule beyond its decisions (cache reads and
        writes, compute-at of a write cache, rfactor, ...), each with the tile parts its loops
        come from (the n-th loop a `Split` made): a design space's multi-level tiling exists
        with the write cache at no, the first or the second level, all sampling alike.
    """

    anchors: tuple[str, ...]
    kinds: tuple[tuple[str, int], ...]
    extents: tuple[int, ...]
    decisions: tuple[Any, ...]
    caps: tuple[int, ...] = ()
    structure: tuple = ()

    @property
    def signature(self) -> tuple:
        return (self.anchors, self.kinds)


def read_trace(trace: Any) -> TraceShape | None:
    """The shape of a trace (a TVM Trace, its JSON text or value); None when it tiles nothing
    or lacks a decision of a tile (an untuned kernel's empty trace, a hand-made one)."""
    if hasattr(trace, "as_json"):
        trace = trace.as_json(remove_postproc=True)
    if isinstance(trace, str):
        trace = json.loads(trace)
    insts, decided = trace[0], {int(i): d for i, d in trace[1]}
    block_of: dict[str, str] = {}
    anchors: list[str] = []
    kinds: list[tuple[str, int]] = []
    extents: list[int] = []
    decisions: list[Any] = []
    caps: list[int] = []
    split_part: dict[str, int] = {}
    structure: list[tuple] = []
    for index, inst in enumerate(insts):
        kind, inputs, attrs, outputs = inst[0], inst[1], inst[2], inst[3]
        if kind == "EnterPostproc":
            break
        if kind == "Split":
            for rv in outputs:
                split_part[rv] = len(split_part)
        elif kind in _STRUCTURAL:
            parts = tuple(split_part[x] for x in inputs if isinstance(x, str) and x in split_part)
            structure.append((kind, parts))
        if kind == "GetSBlock" and outputs:
            block_of[outputs[0]] = str(attrs[0])
        elif kind == "Annotate" and attrs and attrs[0] == "meta_schedule.tiling_structure":
            anchors.append(block_of.get(inputs[0], "?"))
        elif kind in SAMPLING:
            decision = decided.get(index)
            if kind == _TILE:
                if not isinstance(decision, list) or not decision:
                    return None
                kinds.append((kind, int(attrs[0])))
                extents.append(math.prod(int(f) for f in decision))
                caps.append(int(attrs[1]) if len(attrs) > 1 and int(attrs[1]) > 0 else 0)
                decisions.append([int(f) for f in decision])
            elif kind == _CATEGORICAL:
                kinds.append((kind, len(attrs[0])))
                decisions.append(decision)
            else:
                kinds.append((kind, 0))
                decisions.append(decision)
    if not anchors or not extents:
        return None
    return TraceShape(
        tuple(anchors),
        tuple(kinds),
        tuple(extents),
        tuple(decisions),
        tuple(caps),
        tuple(structure),
    )


def distance(a: TraceShape, b: TraceShape) -> float:
    """How far apart two shapes of one signature are: summed |log2| of their tiled loops'
    extent ratios (0: the same loops)."""
    return sum(abs(math.log2(x / y)) for x, y in zip(a.extents, b.extents, strict=True))


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def fit_tile(factors: Sequence[int], extent: int, max_innermost: int | None = None) -> list[int]:
    """Tile factors for a loop of `extent` near `factors` (another loop's): innermost first,
    each the divisor of what is left nearest the donor's factor (in ratio; the smaller on a
    tie), the outermost takes the rest; the innermost stays within `max_innermost`."""
    left, fitted = extent, [0] * len(factors)
    for i in range(len(factors) - 1, 0, -1):
        wanted = max(1, int(factors[i]))
        options = _divisors(left)
        if i == len(factors) - 1 and max_innermost:
            options = [d for d in options if d <= max_innermost] or [1]
        fitted[i] = min(options, key=lambda d: (abs(math.log(d / wanted)), d))
        left //= fitted[i]
    fitted[0] = left
    return fitted


@dataclass
class _Donor:
    distance: float
    rank: int  # 0: the donor's best schedule
    task_key: str
    trace_hash: str
    shape: TraceShape
    space: int  # index of the receiving task's design space of the same signature and structure


@dataclass
class DonorPool:
    """Donor schedules of one device's database for the tasks of a run.

    share: at most this fraction of a round is transferred candidates (rounds under
        1/share candidates get none: a round of 2 is the search's own).
    per_donor: best records of each donor task offered.
    max_distance: donors farther than this (`distance`) are not asked.
    lanes: the device's float32 vector lanes; when set, a task's first round also opens with
        its own design spaces vectorised along each block's innermost spatial loop
        (`vector_decisions`, `VECTOR_SEEDS`), before any donor's schedule; 0: none.
    jobs: the parallel loop's extent those seeds aim at (twice the device's threads).
    """

    store: TuningDatabase
    device_key: str
    share: float = 0.25
    per_donor: int = 2
    max_distance: float = 8.0
    _shapes: dict[tuple[str, str], TraceShape | None] = field(default_factory=dict)
    _table: list[tuple[str, int, str, TraceShape]] = field(default_factory=list)
    _table_at: int | None = None  # the database's last record id when `_table` was read
    _given: dict[str, set[tuple[str, str]]] = field(default_factory=dict)
    transferred: dict[str, set[str]] = field(default_factory=dict)  # task -> hashes measured
    lanes: int = 0
    jobs: int = 8
    _seeded: set[str] = field(default_factory=set)  # tasks given their vector seeds
    _seed_hashes: set[str] = field(default_factory=set)
    seeds: dict[str, set[str]] = field(default_factory=dict)  # task -> vector seeds measured

    def _shape_of(self, task_key: str, digest: str, trace_json: str) -> TraceShape | None:
        key = (task_key, digest)
        if key not in self._shapes:
            try:
                self._shapes[key] = read_trace(trace_json)
            except (ValueError, TypeError, IndexError, KeyError):
                self._shapes[key] = None
        return self._shapes[key]

    def _donor_table(self) -> list[tuple[str, int, str, TraceShape]]:
        """(task, rank, trace hash, shape) of every task's best schedules on the device, read
        again only when the database has a record it did not have."""
        last = self.store.last_record_id()
        if last != self._table_at:
            table = []
            for task_key, records in self.store.best_traces(
                self.device_key, self.per_donor
            ).items():
                for rank, (digest, trace_json) in enumerate(records):
                    shape = self._shape_of(task_key, digest, trace_json)
                    if shape is not None:
                        table.append((task_key, rank, digest, shape))
            self._table, self._table_at = table, last
        return self._table

    def donors(self, task_key: str, spaces: Sequence[TraceShape | None]) -> list[_Donor]:
        """The donor schedules a task has not been given whose sampling and structure one of
        its design spaces (`spaces`, their shapes) has, nearest first."""
        wanted: dict[tuple, int] = {}
        for i, space in enumerate(spaces):
            if space is not None:
                wanted.setdefault((space.signature, space.structure), i)
        if not wanted:
            return []
        given = self._given.get(task_key, set())
        found: list[_Donor] = []
        for donor_key, rank, digest, shape in self._donor_table():
            if donor_key == task_key or (donor_key, digest) in given:
                continue
            space = wanted.get((shape.signature, shape.structure))
            if space is None:
                continue
            gap = distance(shape, spaces[space])  # type: ignore[arg-type]
            if gap <= self.max_distance:
                found.append(_Donor(gap, rank, donor_key, digest, shape, space))
        found.sort(key=lambda d: (d.distance, d.rank, d.task_key, d.trace_hash))
        return found

    def limit(self, round_size: int) -> int:
        """Transferred candidates a round of `round_size` may hold."""
        return int(round_size * self.share)

    def candidates(
        self,
        task_key: str,
        mod: Any,
        design_spaces: Sequence[Any],
        spaces: Sequence[TraceShape | None],
        postprocs: Sequence[Any],
        round_size: int,
        known: set[str],
    ) -> list[tuple[Any, str]]:
        """Up to `limit(round_size)` (candidate, trace hash) for the task (`mod`: its module;
        `spaces`: the shapes of its `design_spaces`), made from donors' schedules it has not
        been given, none whose hash is in `known`; in a task's first round (nothing `known`)
        with `lanes` set, up to as many vector seeds before them. What the round measures of them is to be
        told to `sent`."""
        from tvm.s_tir import Schedule

        limit = self.limit(round_size)
        if limit <= 0:
            return []
        out: list[tuple[Any, str]] = []
        seeds: list[tuple[Any, str]] = []
        if self.lanes and not known and task_key not in self._seeded:
            # a task's first round: its own spaces vectorised too, besides the donors'
            self._seeded.add(task_key)
            seeds = self._vector_seeds(mod, design_spaces, spaces, postprocs, limit, Schedule)
        given = self._given.setdefault(task_key, set())
        for donor in self.donors(task_key, spaces):
            if len(out) >= limit:
                break
            given.add((donor.task_key, donor.trace_hash))
            space = design_spaces[donor.space]
            sch = _replay(mod, space, spaces[donor.space], donor.shape, postprocs, Schedule)
            if sch is None:
                continue
            digest = trace_hash(sch.trace)
            if digest in known or any(digest == d for _, d in seeds + out):
                continue
            out.append((_candidate(sch), digest))
            log.debug(
                "task %s: a schedule of %s (distance %.1f) transferred",
                task_key,
                donor.task_key,
                donor.distance,
            )
        return seeds + out

    def _vector_seeds(
        self,
        mod: Any,
        design_spaces: Sequence[Any],
        spaces: Sequence[TraceShape | None],
        postprocs: Sequence[Any],
        limit: int,
        schedule: Any,
    ) -> list[tuple[Any, str]]:
        """Up to `limit` of the task's own design spaces replayed vectorised (`VECTOR_SEEDS`)."""

        out: list[tuple[Any, str]] = []
        for space, shape in zip(design_spaces, spaces, strict=True):
            if shape is None:
                continue
            for block, width in VECTOR_SEEDS:
                if len(out) >= limit:
                    return out
                decisions = vector_decisions(shape, self.lanes, block, width, self.jobs)
                if decisions is None:
                    break
                sch = _replay_decisions(mod, space, decisions, postprocs, schedule)
                if sch is None:
                    continue
                digest = trace_hash(sch.trace)
                if any(digest == d for _, d in out):
                    continue
                out.append((_candidate(sch), digest))
                self._seed_hashes.add(digest)
        return out

    def sent(self, task_key: str, digests: Sequence[str]) -> None:
        """The transferred candidates (and vector seeds) a round of the task measures."""
        seeds = [d for d in digests if d in self._seed_hashes]
        if seeds:
            self.seeds.setdefault(task_key, set()).update(seeds)
        donated = [d for d in digests if d not in self._seed_hashes]
        if donated:
            self.transferred.setdefault(task_key, set()).update(donated)

    def report(self) -> dict[str, int]:
        """This run's transfers: candidates measured, tasks that got any, and tasks whose best
        schedule on the device is one they were sent."""

        def bests(sent_to: dict[str, set[str]]) -> int:
            count = 0
            for task_key, sent in sent_to.items():
                best = self.store.best(task_key, self.device_key)
                count += bool(best and best[0].trace_hash in sent)
            return count

        return {
            "candidates": sum(len(sent) for sent in self.transferred.values()),
            "tasks": len(self.transferred),
            "tasks_best_by_transfer": bests(self.transferred),
            "vector_seeds": sum(len(sent) for sent in self.seeds.values()),
            "tasks_best_by_vector_seed": bests(self.seeds),
        }


def _replay(
    mod: Any,
    space: Any,
    own: TraceShape | None,
    donor: TraceShape,
    postprocs: Sequence[Any],
    schedule: Any,
) -> Any | None:
    """The design space `space` replayed on the task's module `mod` with the donor's decisions
    (tiles fitted to the space's own extents) and post-processed; None where that fails."""
    if own is None:
        return None
    decisions: list[Any] = []
    tile = 0
    for (kind, _), theirs in zip(donor.kinds, donor.decisions, strict=True):
        if kind == _TILE:
            decisions.append(fit_tile(theirs, own.extents[tile], own.caps[tile] or None))
            tile += 1
        else:
            decisions.append(theirs)
    return _replay_decisions(mod, space, decisions, postprocs, schedule)


def _candidate(sch: Any) -> Any:
    """A schedule as MetaSchedule's measure candidate (its arguments read off its module)."""
    from tvm.s_tir import meta_schedule as ms

    return ms.MeasureCandidate(
        sch, ms.arg_info.ArgInfo.from_entry_func(sch.mod, remove_preproc=True)
    )


def _replay_decisions(
    mod: Any, space: Any, decisions: Sequence[Any], postprocs: Sequence[Any], schedule: Any
) -> Any | None:
    """The design space `space` replayed on `mod` with `decisions`, one per sampling
    instruction in order (None: the space samples it), and post-processed; None where that
    fails."""
    order = iter(decisions)

    def provide(inst: Any, inputs: Any, attrs: Any, decision: Any) -> Any:
        if inst.kind.name not in SAMPLING:
            return decision
        theirs = next(order, None)
        if theirs is None:
            return decision
        if inst.kind.name == _CATEGORICAL and not 0 <= int(theirs) < len(attrs[0]):
            return decision
        return theirs

    try:
        sch = schedule(mod, debug_mask=0)
        space.trace.apply_to_schedule(sch, remove_postproc=True, decision_provider=provide)
        sch.enter_postproc()
        for postproc in postprocs:
            if not postproc.apply(sch):
                return None
    except Exception as err:  # noqa: BLE001 - a transfer that does not fit is skipped
        log.debug("transfer replay failed: %s", err)
        return None
    return sch


# Multi-level tiling on a CPU ("SSRSRS"): a spatial loop is split in 4, a reduction loop in 2
_SPATIAL_PARTS, _REDUCTION_PARTS = 4, 2
# The vector seeds of a task's first round: (outputs in the register block along the loop
# before the vectorised one, vector width in lanes)
VECTOR_SEEDS = ((4, 2), (2, 1))


def _nearest_divisor(extent: int, wanted: float, keep: Callable[[int], bool]) -> int | None:
    options = [d for d in _divisors(extent) if keep(d)]
    if not options:
        return None
    return min(options, key=lambda d: (abs(math.log(d / wanted)), d))


def vector_decisions(
    shape: TraceShape, lanes: int, block: int, width: int, jobs: int
) -> list[Any] | None:
    """Decisions for a design space of `shape` (its own extents) in which every block that
    multi-level tiling split is vectorised along its innermost spatial loop (the contiguous
    axis of the stored order: channels in NHWC, the lanes in NCHWc, W in NCHW): that loop's
    innermost tile the divisor of its extent nearest `width` lanes among the multiples of
    `lanes` (else the largest within `width` lanes, and the tile's cap); the spatial loop before
    it tiled by `block` at the level above (unrolled: a register block of outputs, as in
    MetaSchedule's good pointwise schedules; at the innermost level MetaSchedule would fuse it
    into the vector); the first spatial loop's outermost tile nearest `jobs` (the parallel
    loop); reductions left whole, outside the register block. Other sampling (unrolling, compute locations) is left to the space (None).
    None when no block has a spatial loop longer than 1.

    MetaSchedule samples tiles at random and its first rounds rarely vectorise a depthwise conv
    along its channels: after 13 trials the best schedule of MobileNetV2's 56x56x144 NHWC
    depthwise conv had innermost tiles h 2, w 1, c 1, its vectors along a 32-KB stride."""
    decisions: list[Any] = [None] * len(shape.kinds)
    tiles = [i for i, (kind, _) in enumerate(shape.kinds) if kind == _TILE]
    extent_of = dict(zip(tiles, shape.extents, strict=True))
    cap_of = dict(zip(tiles, shape.caps or (0,) * len(tiles), strict=True))
    runs: list[list[int]] = []
    previous: tuple[int, int] | None = None  # (instruction, parts) of the tile before
    for i in tiles:
        parts = shape.kinds[i][1]
        new_run = (
            previous is None
            or previous[0] != i - 1
            or (parts == _SPATIAL_PARTS and previous[1] == _REDUCTION_PARTS)
        )
        if new_run:
            runs.append([])
        runs[-1].append(i)
        previous = (i, parts)
    seeded = False
    for run in runs:
        spatial = [i for i in run if shape.kinds[i][1] == _SPATIAL_PARTS]
        long = [i for i in spatial if extent_of[i] > 1]
        if not long:
            continue
        # the innermost level is vectorised, the one above it unrolled (a register block)
        vector = {i: 1 for i in spatial}
        register = {i: 1 for i in spatial}
        vec = long[-1]
        cap = cap_of[vec] or 64
        vector[vec] = _nearest_divisor(
            extent_of[vec], width * lanes, lambda d, c=cap: d % lanes == 0 and d <= c
        ) or max(d for d in _divisors(extent_of[vec]) if d <= min(cap, width * lanes))
        if len(long) >= 2:
            reg = long[-2]
            register[reg] = max(d for d in _divisors(extent_of[reg]) if d <= block)
        first = long[0]
        outer = {i: 1 for i in spatial}
        inside = register[first] * vector[first]
        outer[first] = _nearest_divisor(extent_of[first] // inside, jobs, lambda d: True) or 1
        for i in spatial:
            rest = extent_of[i] // (outer[i] * register[i] * vector[i])
            decisions[i] = [outer[i], rest, register[i], vector[i]]
        for i in run:
            if shape.kinds[i][1] == _REDUCTION_PARTS:
                decisions[i] = [extent_of[i], 1]
        seeded = True
    return decisions if seeded else None
