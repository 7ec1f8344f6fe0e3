"""The search of one task: MetaSchedule's, minus what the database has measured.

Resume without re-measuring. MetaSchedule's `EvolutionarySearch` does read the database: its
initial population includes the best records of the workload (init_measured_ratio), but the
set of schedules it will not measure again starts empty in every run (`measured_workloads_`
in evolutionary_search.cc, with a TODO to fill it from the database), so after a restart it
happily re-measures the best records it just took from the database. `SkipMeasured` wraps
the search: every candidate whose trace hash the database holds for (task, device), any
outcome, is dropped before it is built; the search is asked again (up to
`max_empty_rounds` times) when a whole round was known, and the task ends when it only
proposes known schedules. `TrialBudget` is the run's budget the tasks' searches share.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.search_strategy import PySearchStrategy

from ago_search.database import TuningDatabase, trace_hash
from ago_search.schedule.config import TuningConfig
from ago_search.schedule.transfer import DonorPool, read_trace

__all__ = ["RoundPace", "SkipMeasured", "TrialBudget", "make_search_strategy"]

log = logging.getLogger(__name__)


def make_search_strategy(config: TuningConfig) -> ms.search_strategy.SearchStrategy:
    """The search `config.search` names: "replay" (ReplayTrace) or "evolutionary"
    (EvolutionarySearch with `config.population_size` and `config.genetic_iters`)."""
    if config.search == "replay":
        return ms.search_strategy.ReplayTrace()
    return ms.search_strategy.EvolutionarySearch(
        population_size=config.population_size, genetic_num_iters=config.genetic_iters
    )


@dataclass
class RoundPace:
    """What a round costs on this machine, learnt from the rounds run (moving averages): the
    search proposing it (`search_s`: MetaSchedule's evolutionary search with the cost model's
    predictions, 5-15 s on 2 cores) and building and measuring each of its candidates
    (`trial_s`). A `TuningSession` keeps one across its tuning runs, and a search saves it with
    its state, so the first round of a run is paced like the rounds before it."""

    search_s: float | None = None
    trial_s: float | None = None
    # every round's build-and-measure seconds and candidates, summed: the session's mean
    # (`mean_trial_s`), steadier than `trial_s`, which the last rounds' tasks move (0.3 s a
    # candidate after rounds of a reshape, 3 s after ResNet-18's first conv rounds)
    trials_wall_s: float = 0.0
    trials: int = 0

    def add_search(self, seconds: float) -> None:
        self.search_s = _average(self.search_s, seconds)

    def add_trials(self, seconds: float, trials: int) -> None:
        if trials > 0:
            self.trial_s = _average(self.trial_s, seconds / trials)
            self.trials_wall_s += seconds
            self.trials += trials

    def mean_trial_s(self) -> float | None:
        """Seconds a candidate took to build and measure over every round so far (None
        before any)."""
        return self.trials_wall_s / self.trials if self.trials else self.trial_s

    def smallest_round_s(self) -> float:
        """A round of one candidate (0 before any round)."""
        return (self.search_s or 0.0) + (self.trial_s or 0.0)

    def to_json(self) -> dict[str, float | None]:
        return {
            "search_s": self.search_s,
            "trial_s": self.trial_s,
            "trials_wall_s": self.trials_wall_s,
            "trials": self.trials,
        }

    @classmethod
    def from_json(cls, data: Any) -> RoundPace:
        data = data if isinstance(data, dict) else {}
        pace = cls(
            **{k: float(data[k]) for k in ("search_s", "trial_s") if data.get(k) is not None}
        )
        pace.trials_wall_s = float(data.get("trials_wall_s") or 0.0)
        pace.trials = int(data.get("trials") or 0)
        return pace


def _average(previous: float | None, seconds: float) -> float:
    return seconds if previous is None else 0.5 * (previous + seconds)


@dataclass
class TrialBudget:
    """Trials left to the whole run, shared by the tasks' searches: MetaSchedule's loop stops
    starting rounds at its budget but lets the last round run over it (a round of 64 started
    at 129 of 130 measures 64); the searches cut that round to what is left. `deadline` (a
    `time.monotonic()` value) ends the run in time: no round starts when the time left holds
    no round of one candidate at `pace`, and a round is cut to the candidates the time left
    after its search allows (a round of 16 is 10-35 s on 2 cores: a 120-s search whose
    resumed run had no pace yet ended its tuning 31 s late)."""

    remaining: int
    deadline: float | None = None
    stop: Callable[[], bool] | None = None  # asked before each round: True ends the run
    pace: RoundPace = field(default_factory=RoundPace)
    _round_started: float | None = None
    _round_size: int = 0
    _search_started: float | None = None

    def exhausted(self) -> bool:
        """Asked before each round's search: whether no more rounds start."""
        now = time.monotonic()
        if self._round_started is not None:  # the round before was built and measured
            self.pace.add_trials(now - self._round_started, self._round_size)
            self._round_started = None
        if self.remaining <= 0:
            return True
        if self.deadline is not None and self.deadline - now <= self.pace.smallest_round_s():
            return True
        if self.stop is not None and self.stop():
            return True
        self._search_started = time.monotonic()
        return False

    def take(self, wanted: int) -> int:
        """How many of `wanted` candidates the round the search just proposed measures."""
        now = time.monotonic()
        if self._search_started is not None:
            self.pace.add_search(now - self._search_started)
            self._search_started = None
        allowed = min(wanted, self.remaining)
        if self.deadline is not None and self.pace.trial_s:
            fits = int((self.deadline - now) / self.pace.trial_s)
            allowed = min(allowed, max(1, fits))
        self.remaining -= allowed
        self._round_started, self._round_size = now, allowed
        return allowed


@derived_object
class SkipMeasured(PySearchStrategy):
    """A search strategy that never proposes a schedule the database measured for the task.

    inner: the search (EvolutionarySearch). on_round: called with the task key before each
    round goes out (the output check learns which task it is checking). budget: trials left
    to the run, shared by all tasks' searches (None: no limit here). Candidates of this run
    are remembered too, so a search that proposes one twice does not measure it twice.
    transfer: other tasks' best schedules, a few of which open each round (`transfer`); the
    round keeps its size.
    """

    def __init__(
        self,
        inner: ms.search_strategy.SearchStrategy,
        store: TuningDatabase,
        device_key: str,
        task_key: str,
        on_round: Callable[[str], None] | None = None,
        max_empty_rounds: int = 3,
        budget: TrialBudget | None = None,
        transfer: DonorPool | None = None,
    ) -> None:
        super().__init__()
        self.inner = inner
        self.store = store
        self.device_key = device_key
        self.task_key = task_key
        self.on_round = on_round
        self.max_empty_rounds = max_empty_rounds
        self.budget = budget
        self.transfer = transfer
        self._mod: Any = None
        self._postprocs: list[Any] = []
        self._spaces: list[Any] = []
        self._space_shapes: list[Any] = []
        self.known: set[str] = set()
        self.skipped = 0
        self._empty_rounds = 0

    def _initialize_with_tune_context(self, context: ms.TuneContext) -> None:
        self._mod = context.mod
        try:
            self._postprocs = list(context.space_generator.postprocs or [])
        except Exception as err:  # noqa: BLE001 - without them nothing is transferred
            log.warning("task %s: no postprocessors to transfer with: %s", self.task_key, err)
            self._mod = None
        self.inner._initialize_with_tune_context(context)

    def pre_tuning(self, max_trials, num_trials_per_iter, design_spaces, database, cost_model):
        self.known = set(self.store.measured(self.task_key, self.device_key))
        self._empty_rounds = 0
        self._spaces = list(design_spaces)
        self._space_shapes = []
        if self.transfer is not None:
            try:
                self._space_shapes = [read_trace(space.trace) for space in self._spaces]
            except Exception as err:  # noqa: BLE001 - a head start, never a reason to stop
                log.warning("task %s: design spaces unread, no transfer: %s", self.task_key, err)
                self._spaces = []
        self.inner.pre_tuning(max_trials, num_trials_per_iter, design_spaces, database, cost_model)

    def post_tuning(self) -> None:
        self.inner.post_tuning()

    def generate_measure_candidates(self) -> list[Any] | None:
        while True:
            if self.budget is not None and self.budget.exhausted():
                return None
            try:
                candidates = self.inner.generate_measure_candidates()
            except Exception as err:  # noqa: BLE001 - one task's search, never the whole run
                # (MetaSchedule's evolution can fail on a task: a rule that left a block its
                # trace still names, "The block no longer exists in the IRModule"); the task
                # ends here, its records kept, and the other tasks go on
                log.warning(
                    "task %s: the search failed, the task ends here: %s",
                    self.task_key,
                    " ".join(str(err).split())[-300:],
                )
                return None
            if candidates is None:
                return None
            size = max(len(candidates), 1)
            borrowed = self._borrowed(size)
            picked = list(borrowed)
            seen = {digest for _, digest in borrowed}
            for candidate in candidates:
                if len(picked) >= size:
                    break
                digest = trace_hash(candidate.sch.trace)
                if digest in self.known or digest in seen:
                    self.skipped += 1
                    continue
                seen.add(digest)
                picked.append((candidate, digest))
            if picked:
                if self.budget is not None:
                    picked = picked[: self.budget.take(len(picked))]
                self.known.update(digest for _, digest in picked)
                if self.transfer is not None:
                    lent = {digest for _, digest in borrowed}
                    self.transfer.sent(self.task_key, [d for _, d in picked if d in lent])
                self._empty_rounds = 0
                if self.on_round is not None:
                    self.on_round(self.task_key)
                return [candidate for candidate, _ in picked]
            self._empty_rounds += 1
            log.debug("task %s: a round of known schedules only", self.task_key)
            if self._empty_rounds >= self.max_empty_rounds:
                log.info("task %s: the search proposes only measured schedules", self.task_key)
                return None

    def _borrowed(self, round_size: int) -> list[tuple[Any, str]]:
        """(candidate, trace hash) made from other tasks' schedules for this round (none
        without a pool, never an error: a transfer that fails is a round without it)."""
        if self.transfer is None or self._mod is None or not self._spaces:
            return []
        try:
            return self.transfer.candidates(
                self.task_key,
                self._mod,
                self._spaces,
                self._space_shapes,
                self._postprocs,
                round_size,
                self.known,
            )
        except Exception as err:  # noqa: BLE001 - a head start, never a reason to stop
            log.warning("task %s: no schedules transferred: %s", self.task_key, err)
            return []

    def notify_runner_results(self, measure_candidates, results) -> None:
        self.inner.notify_runner_results(measure_candidates, results)

    def clone(self) -> SkipMeasured:
        return SkipMeasured(
            self.inner.clone(),
            self.store,
            self.device_key,
            self.task_key,
            self.on_round,
            self.max_empty_rounds,
            self.budget,
            self.transfer,
        )
