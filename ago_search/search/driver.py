"""The budgeted joint search: plans proposed and scored on Ray while the leading plan's kernels
are tuned and measured, the best verified plan always on disk.

One loop, until the budget (less what finishing needs) is spent:

1. Propose. While the estimators are short of work, the searcher suggests partitions
   (`PlanSearcher`); their new groups become tasks (`PlanScorer.add_partitions`) and the tasks
   never estimated go to the Ray estimators (`EstimatorPool`), which run beside the measuring.
2. Score. Estimates that came back are given to the scorer; every partition whose tasks are
   all known gets its predicted latency (`PlanScorer.score`) and the searcher learns it.
3. Tune. The leading plan (best predicted; a challenger must be `switch_margin` better to take
   over) has its kernels tuned: MetaSchedule's evolutionary search with our scheduler (every
   task of the plan a first round before any second), the cost model kept across runs, every
   candidate verified and committed to `tuning.db` as it is measured. Every `look_s` the
   tuning looks up between two rounds: steps 1 and 2 run, the measurements so far replace
   estimates, recalibrate the others, every scored plan is scored again, and the state is
   saved; the run goes on (its contexts, populations and rounds intact) unless the leader
   changed or is due to be timed end to end.
4. Check. A leader whose kernels are (nearly) all tuned is built, timed end to end and
   verified against ONNX Runtime; the best verified one is written to `plan.json` and
   `model.so` at once.

Measurements are the scarce resource: one at a time (the device lease), never beside a build
or an estimate on the same cores. Wall time is the budget; a stopped search (Ctrl-C, kill -9)
keeps every committed measurement and its state, and the same command goes on from there.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ago_search.database import TuningDatabase
from ago_search.devices import DeviceProfile
from ago_search.frontend import ImportedModel
from ago_search.layout import layout_choices
from ago_search.pipeline import SEED_NAMES, PlannedModel, plan_model, prepare_model, seed_partition
from ago_search.plan import cancelled_borders, graph_fingerprint
from ago_search.schedule.config import TuningConfig
from ago_search.schedule.results import task_results
from ago_search.schedule.scheduler import first_pass_round
from ago_search.schedule.strategy import RoundPace
from ago_search.schedule.tasks import Task
from ago_search.schedule.tune import TuningSession
from ago_search.search.budget import Budget, format_duration
from ago_search.search.config import SearchConfig, SearchResult
from ago_search.search.curve import fit_slope
from ago_search.search.estimators import EstimatorPool
from ago_search.search.explore import exploration_tasks, seed_kind
from ago_search.search.finish import PlanMeasurement, measure_plan, search_summary
from ago_search.search.laid import LaidPartition
from ago_search.search.regions import Regions
from ago_search.search.score import MIN_KIND_TASKS, PlanScore, PlanScorer
from ago_search.search.searcher import PlanSearcher, Suggestion
from ago_search.search.space import PlanSpace
from ago_search.search.state import OutputFolder, SearchState, write_json_atomic
from cost_model.estimate import TaskEstimate

__all__ = ["SearchConfig", "SearchResult", "run_search"]  # the first two from .config

log = logging.getLogger(__name__)

# the seeds that also start in every layout of the space
LAYOUT_SEED_BASES = ("tvm", "dnnfusion")
# the share of the wall time that goes to tuning runs from here on (the rest: estimating,
# end-to-end timings); the 1-h MobileNetV2 search measured 0.95 candidates/s over its budget
TUNING_SHARE = 0.85
# the share of the measurements left the first pass over the leader's untried tasks may take
FIRST_PASS_SHARE = 0.75
EXPLORED_WAIT_S = 45.0
# the most tasks a layout is explored with (`_Search._explore_per_layout`)
MAX_EXPLORE_TASKS = 6
# no layout is explored when the nodes layouts change hold less of the model's FLOPs
MIN_LAYOUT_SHARE = 0.1


@dataclass
class _Counters:
    measurements_before: int = 0
    plans_scored: int = 0


def run_search(
    imported: ImportedModel,
    device: DeviceProfile,
    out: str | Path,
    config: SearchConfig,
    cost_model: Any,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
) -> SearchResult:
    """Search plans and schedules for `imported` on `device` within `config.budget_s`, writing
    `out` (see `ago_search.search.state`). `cost_model`: the MetaSchedule cost model that
    guides the loop search (`cost_model.factory.make_cost_model`). `on_progress` gets a dict
    after every step (elapsed, budget, best predicted and measured latency, counts)."""
    search = _Search(imported, device, Path(out), config, cost_model, on_progress)
    return search.run()


class _Search:
    def __init__(
        self,
        imported: ImportedModel,
        device: DeviceProfile,
        out: Path,
        config: SearchConfig,
        cost_model: Any,
        on_progress: Callable[[dict[str, Any]], None] | None,
    ) -> None:
        self.imported = imported
        self.device = device
        self.config = config
        self.guide = cost_model
        self.on_progress = on_progress
        self.folder = OutputFolder(out)
        self.folder.prepare()
        target = device.tvm_target()
        self.prepared = prepare_model(imported, target, winograd=config.winograd)
        graph = self.prepared.graph
        self.model_info = {
            "path": imported.path,
            "graph": graph_fingerprint(graph),
            "inputs": {s.name: list(s.shape) for s in imported.inputs},
            "winograd": config.winograd,
        }
        state = self.folder.load_state(self.model_info, device.key)
        self.resumed = state is not None
        self.state = state or SearchState(self.model_info, device.key, config.budget_s)
        self.state.budget_s = config.budget_s
        self.state.finished = False
        self.budget = Budget(config.budget_s, self.state.spent_s)
        self.store = TuningDatabase(self.folder.database)
        layouts = layout_choices(target) if config.layouts else ()
        self.space = PlanSpace(graph, config.limits, layouts=layouts)
        seeds = {name: seed_partition(self.prepared, name).partition for name in SEED_NAMES}
        if config.divide:
            # boundaries where neither TVM's nor DNNFusion's fusion has a group across (the
            # intensive seed's groups span blocks: they are cut at the boundaries instead)
            kept = [self.space.fit_to_limits(seeds[n]) for n in ("tvm", "dnnfusion")]
            regions = Regions.at_cut_points(self.space.index, kept, config.region_min_complex)
            self.space.regions = regions
            seeds = {name: regions.cut(p) for name, p in seeds.items()}
            log.info("divide and conquer: %d regions", regions.count)
        # TVM's and DNNFusion's fusion in one layout: plan-wide layouts, the search's start
        # for layouts (MobileNetV2's searches kept DNNFusion's NCHW plan, which had no layout
        # seed, while TVM's fusion timed faster in NHWC than in NCHW). In the order their
        # tasks are estimated: TVM's in every layout, DNNFusion's, the intensive seed last (it
        # led no search, and its many-conv groups cost the most to estimate: the 10-min
        # searches of the layouts benchmark chose their first leader with three of the seven
        # seeds not scored yet, DNNFusion's in NHWC and NCHW16c among them)
        laid_seeds: dict[str, LaidPartition] = {}
        for base in LAYOUT_SEED_BASES:
            laid_seeds[base] = seed = LaidPartition(seeds[base])
            for layout in self.space.layouts:
                laid_seeds[f"{base}/{layout}"] = seed.with_layout(
                    self.space.layout_groups(seed), layout
                )
        for name, partition in seeds.items():
            laid_seeds.setdefault(name, LaidPartition(partition))
        seeds = laid_seeds
        self.seeds = seeds
        self.searcher = PlanSearcher(self.space, seeds, seed=config.seed)
        if self.state.searcher:
            self.searcher.restore(self.state.searcher)
        self.scorer = PlanScorer(self.prepared)
        # an estimate that failed on a schedule rule's error (a state from before the rule
        # sets' fallback) is made again: another rule set may sample the task now
        self.state.estimates = {
            key: data
            for key, data in self.state.estimates.items()
            if not _before_fallback(str(data.get("error") or ""))
        }
        for key, data in self.state.estimates.items():
            self.scorer.set_estimate(key, TaskEstimate.from_json(data))
        for key, ratio in self.state.in_model.items():
            self.scorer.set_in_model(key, ratio)
        self.pending: list[Suggestion] = []
        self.leader: LaidPartition | None = None
        self.leader_key = self.state.leader
        self.last_end_to_end: dict[str, float] = {
            e["plan"]: e["predicted_s"]
            for e in self.state.end_to_end
            if e.get("predicted_s") is not None and not e.get("final")
        }
        self.slices = 0
        self.counters = _Counters(measurements_before=len(self.store))
        self.end_to_end_s: float | None = self.state.end_to_end_s
        self.last_check_at = -math.inf  # time.monotonic() of the last end-to-end timing
        # tasks without an estimate (their design space fails) -> untuned kernel measured yet
        self.untunable: dict[str, bool] = {
            key: False for key, data in self.state.estimates.items() if data.get("error")
        }
        self.pool: EstimatorPool | None = None
        self.stop_requested = False
        # seconds one round of one task takes (search, builds, measurements), as last seen;
        # MobileNetV2's 16-trial rounds took 8-14 s on 2 cores
        self.round_s = 10.0
        self.explored_s = 0.0  # seconds this run spent exploring layouts (`_explore`)
        # the measurement rate the projection counts on: wall seconds of this run's tuning runs
        # (the one going on counted from `tuning_since`) and the measurements they made
        self.tuning_wall_s = 0.0
        self.tuning_since: float | None = None
        self.measurements_at_tuning = 0
        self.curve_fitted_at = -math.inf
        self._explore_plans: dict[str, LaidPartition] | None = None  # layout -> TVM's fusion
        self.explored_keys: list[str] = []  # tasks this run explored
        self.explored_at: float | None = None  # time.monotonic() when the exploration ended

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> SearchResult:
        import ray

        owns_ray = not ray.is_initialized()
        if owns_ray:
            ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
        workers = self.config.estimator_workers or max(
            1, int(ray.cluster_resources().get("CPU", 2)) // 2
        )
        pool = EstimatorPool(
            self.prepared.target,
            workers=workers,
            samples=self.config.samples,
            seed=self.config.seed,
            # unpaced until the first leader is tuned (`_set_leader`): pacing the seeds'
            # estimates too left a 100-s search of a tiny model with 2 of its 3 seeds scored
            # (the first estimate of an actor holds the GNN's compile)
            share=None,
        )
        self.session = TuningSession(
            self.device,
            self.store,
            TuningConfig(trials=0, protocol=self.config.protocol),
            work_dir=self.folder.path,
        )
        self.session.pace = RoundPace.from_json(self.state.round_pace)  # a resumed run's too
        self.pool = pool
        self.run_started = time.monotonic()
        previous_handler = signal.signal(signal.SIGINT, self._on_sigint)
        interrupted = False
        try:
            self._restore(pool)
            # (a round that cannot end before the finish's reserve does not start: the finish
            # starts then instead of a loop that starts none)
            while (
                not self.budget.expired(self._reserve() + self.session.pace.smallest_round_s())
                and not self.stop_requested
            ):
                self._propose(pool)
                self._collect(pool, wait=0.0 if self.leader is not None else 5.0)
                self._measure_untunable()
                self._collect(pool, wait=0.0)
                plans = self._layouts_to_explore()
                if plans:
                    self._explore(plans)
                    self._collect(pool, wait=0.0)
                    self._rescore()
                    self._save()
                    continue
                self._choose_leader()
                if self.leader is None:
                    self._explore_while_waiting()
                    continue
                self._tune_leader(self._reserve())
                self._collect(pool, wait=0.0)
                self._rescore()
                self._check_leader()
                self._save()
            self._collect(pool, wait=0.0)
            if self.stop_requested:
                raise KeyboardInterrupt
            summary = self._finish()
        except KeyboardInterrupt:
            interrupted = True
            log.warning("stopped: every measurement so far is kept in %s", self.folder.database)
            summary = self._summary(final=None, interrupted=True)
        finally:
            signal.signal(signal.SIGINT, previous_handler)
            self._save()
            self.session.close()
            pool.close()
            self.store.close()
            if owns_ray:
                ray.shutdown()
        return SearchResult(self.folder.path, summary, interrupted)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        """Ctrl-C: no new tuning round starts, the running one ends, the state is saved.
        A second Ctrl-C stops at once (what was committed is kept either way)."""
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True
        log.warning("stopping after the current round (Ctrl-C again to stop at once)")

    def _reserve(self) -> float:
        """Seconds kept for finishing: the configured floor, or what timing a plan end to end
        takes (the finish is one more such timing) with a margin: 1.25 times a timing this
        run made (ResNet-18's took 48 s, then 44 s in its finish), 1.5 times one estimated
        (`_timing_s`); twice either at budgets where the finish times TVM's default build
        too (`SearchConfig.times_tvm_default`)."""
        floor = self.config.finish_reserve_s()
        if self.leader is None:
            return floor
        margin = 1.25 if self.end_to_end_s else 1.5
        return max(floor, self._timing_s() * (2.0 if self.config.times_tvm_default() else margin))

    def _timing_s(self) -> float:
        """What timing the leader end to end takes: what the last timing took, or before any,
        10 s (ORT and the plan opened in two processes, ten rounds of turns) and what building
        and measuring a candidate took on average in this session's rounds
        (`RoundPace.mean_trial_s`) for each of its tasks (a build of each kernel): ResNet-18
        with Winograd convs took 39-51 s (20 tasks, 1.4-2.5 s a candidate), MobileNetV2 19 s
        (34 tasks, 0.5 s a candidate). Not the last rounds' pace (`trial_s`), which moved from
        0.3 to 3 s a candidate with the tasks tuned, and not times the builder's workers: a
        10-min ResNet-18 search that counted the last rounds' pace (seconds a candidate after
        the exploration's slowest rounds) twice a task ended its first tuning run after 52 s
        at a deadline that kept minutes for a 48-s timing."""
        if self.end_to_end_s:
            return self.end_to_end_s
        assert self.leader is not None
        tasks = len(self.scorer.tasks_of(self.leader))
        trial_s = self.session.pace.mean_trial_s() or self.round_s / self.config.round_trials
        return 10.0 + tasks * trial_s

    # -- steps --------------------------------------------------------------------------------

    def _propose(self, pool: EstimatorPool) -> None:
        # The split between proposing and measuring: estimating shares the cores with the
        # tuning's own search and builds, so from the first leader on the pool holds its CPU
        # time to `explore_share` of the wall time (`EstimatorPool.pace`), and new plans are
        # proposed only while it is within that share and has little queued. The seeds are
        # always proposed, and estimated as fast as the estimators go; they count against
        # nothing (counted, the seeds' estimates, some 100 s of CPU on 2 cores, held new
        # proposals back until 0.15 x the time spent exceeded them: most of a 10-min search).
        if pool.pending >= 2 * pool.workers:
            return
        if len(self.searcher) >= 3 and pool.over_share():
            return
        suggestions = self.searcher.suggest(self.config.suggest_batch)
        if not suggestions:
            return
        new_tasks = self.scorer.add_partitions(s.partition for s in suggestions)
        self._learn_measured(new_tasks)
        keys = [k for s in suggestions for k in self.scorer.tasks_of(s.partition)]
        todo = self.scorer.needs_estimate(keys)
        pool.submit({k: self.scorer.task(k).mod for k in todo})
        self.pending.extend(suggestions)

    def _collect(self, pool: EstimatorPool, wait: float) -> None:
        for key, estimate in pool.poll(timeout=wait).items():
            self.scorer.set_estimate(key, estimate)
            self.state.estimates[key] = estimate.to_json()
            if estimate.error:
                # it cannot be tuned (its design space fails): its untuned kernel is what a
                # plan holding it runs, so that is measured (`_measure_untunable`)
                log.info("task %s has no estimate: %s", key, estimate.error)
                self.untunable.setdefault(key, False)
        estimates = self.scorer.estimates()
        self._update_projection()  # the first leader is chosen on projections too
        still = []
        for suggestion in self.pending:
            score = self.scorer.score(suggestion.partition)
            if any(
                estimates.get(k) is None or self.untunable.get(k) is False for k in score.unknown
            ):
                still.append(suggestion)  # an estimate or an untuned measurement to come
                continue
            # unknown left with a failed estimate: the plan cannot be scored, so never leads
            self._tell(suggestion.key, suggestion.partition, score)
            self.counters.plans_scored += 1
        self.pending = still

    def _measure_untunable(self) -> None:
        """The untuned kernels of the tasks that cannot be tuned, measured once each (between
        two rounds or two runs: the runner is idle), so plans holding them can be scored."""
        todo = [k for k, done in self.untunable.items() if not done and self.scorer.has_task(k)]
        if not todo:
            return
        tasks = [self.scorer.task(key) for key in todo]
        self.session.measure_untuned(tasks)
        for key in todo:
            self.untunable[key] = True
            self.scorer.set_untunable(key)
        self._learn_measured(tasks)

    def _note_failing(self, key: str, best_seconds: float | None, trials: int) -> None:
        """A task whose first rounds gave no working schedule runs untuned in its plans until
        one works: its untuned kernel is measured (`_measure_untunable`) so the plans can be
        scored and timed."""
        if best_seconds is None and trials >= 2 * self.config.round_trials:
            self.untunable.setdefault(key, False)

    def _choose_leader(self) -> None:
        if self.leader is None:
            if (
                self._waiting_for_seeds()
                or self._layouts_to_explore()
                or self._waiting_for_explored()
            ):
                return
            # the plans told before are ranked on the calibration of then: the explored
            # tasks' late estimates and the rounds explored while waiting move it (a 10-min
            # MobileNetV2 search took TVM's NCHW fusion, 14.9 ms as scored now, over its NHWC
            # one at 6.5, on rankings from before its NHWC calibration of -1.39)
            self._rescore()
        best = self.searcher.best(1)
        if not best:
            if self.leader is None:
                # Nothing scored yet: TVM's own fusion is tuned first (never a bad start).
                seed = next((s for s in self.pending if s.origin.startswith("seed:tvm")), None)
                if seed is not None:
                    self._set_leader(seed.partition, "the TVM seed, before any score")
            return
        partition, score, origin = best[0]
        if self.leader is None:
            self._set_leader(partition, origin)
            return
        if partition == self.leader:
            return
        current = self.scorer.score(self.leader)
        if current.unknown:
            # unknown for good: a task without an estimate whose untuned kernel was measured
            # and gave no latency; anything else unknown is still to come, so the leader stays
            estimates = self.scorer.estimates()
            lost = [
                k for k in current.unknown if estimates.get(k) is not None and self.untunable.get(k)
            ]
            if lost:
                self._set_leader(partition, origin)
            return
        # Every task of the leader decent first: while its first pass is not done a challenger
        # must be clearly better, or switching would leave both plans half tuned.
        margin = self.config.switch_margin
        if current.untuned:
            if self.config.early_switch_margin is None:
                return
            margin = max(margin, self.config.early_switch_margin)
        if score >= current.ranking * (1 - margin):
            return
        # A challenger is worth its first pass only if the budget leaves time for it and more:
        # a 10-min MobileNetV2 search took the lead for a plan with 12 tasks still to tune,
        # spent the rest of the budget on them and finished with the first plan, half tuned.
        to_tune = len(self.scorer.score(partition).untuned)
        needed = to_tune * self.round_s
        left = self.budget.left - self._reserve()
        if needed > self.config.first_pass_share * left:
            log.debug(
                "plan %s (%s) not taken: %d tasks to tune (~%.0f s) with %.0f s left",
                partition.fingerprint()[:10],
                _ms(score),
                to_tune,
                needed,
                left,
            )
            return
        self._set_leader(partition, origin)

    def _waiting_for_seeds(self) -> bool:
        """Whether the first leader waits for the seeds' scores: until every seed is scored,
        for at most `seed_wait_s` of this run. The first pass is never cut short for a better
        plan, so the first leader is the plan a search mostly ends with: a 10-min ResNet-18
        search took TVM's NCHW fusion before any score (23 ms predicted) and tuned it through,
        while its own seeds in NHWC and NCHW16c, scored 50 s later, were predicted 14.8 and
        13.0 ms."""
        return self._seed_wait_left() > 0

    def _seed_wait_left(self) -> float:
        """Seconds the first leader still waits for the seeds' scores (<= 0: none)."""
        if not any(s.origin.startswith("seed:") for s in self.pending):
            return 0.0
        # the time spent exploring layouts is not waiting: the estimates go on beside it, but
        # slower (the exploration's builds share the cores), and a layout whose seeds come
        # late would never lead
        waited = time.monotonic() - self.run_started - self.explored_s
        return min(self.config.seed_wait_s, 0.1 * self.config.budget_s) - waited

    def _waiting_for_explored(self) -> bool:
        """Whether the first leader waits for the explored tasks' estimates (at most
        `EXPLORED_WAIT_S` after the exploration): without them the exploration calibrates no
        layout (a 10-min ResNet-18 search explored 9 tasks in 95 s, and its single estimator,
        still on the seeds' tasks, had estimated none of them when the leader was chosen)."""
        if self._explored_wait_left() > 0:
            log.debug("waiting for the estimates of the explored tasks")
            return True
        return False

    def _explored_wait_left(self) -> float:
        """Seconds the first leader still waits for the explored tasks' estimates (<= 0:
        none)."""
        if not self.explored_keys or self.explored_at is None:
            return 0.0
        estimates = self.scorer.estimates()
        if all(k in estimates for k in self.explored_keys):
            return 0.0
        return EXPLORED_WAIT_S - (time.monotonic() - self.explored_at)

    def _layouts_to_explore(self) -> dict[str, LaidPartition]:
        """Layout -> TVM's fusion in it (as the searcher fits it to the limits), for the
        layouts to explore now (`_explore`): at the start, before the first leader, each layout
        once, when the exploration's share of the budget holds a round for each; none when the
        model has one layout only (no rank-4 activations: TVM's fusion is the same plan in
        every layout)."""
        if self.config.explore_tasks == 0 or not self.space.layouts or self.leader is not None:
            return {}
        if self.space.layout_share < MIN_LAYOUT_SHARE:
            return {}  # a ViT: its layouts' plans differ in the patch embedding only
        if self._explore_plans is None:
            plans: dict[str, LaidPartition] = {}
            seen: set[str] = set()
            for name, partition in self.seeds.items():
                if name.partition("/")[0] != "tvm":
                    continue
                fitted = self.space.fit_to_limits(partition)
                if fitted.fingerprint() not in seen:
                    seen.add(fitted.fingerprint())
                    plans[seed_kind(name)] = fitted
            self._explore_plans = plans
        plans = self._explore_plans
        if len(plans) < 2:
            return {}
        todo = {k: p for k, p in plans.items() if k not in self.state.explored}
        if not todo:
            return {}
        left = self._exploration_cap() - self.state.exploration_s
        if left < len(todo) * self._explore_per_layout(len(plans)) * self._explore_round_s():
            # not enough tasks of every layout for a calibration of its own (a 5-min
            # MobileNetV2 search explored 2 of each and calibrated none): none explored
            return {}
        return todo

    def _explore_per_layout(self, layouts: int) -> int:
        """Tasks explored in each layout: `explore_tasks`, or when that is None as many as the
        exploration's share of the budget holds rounds for, from `MIN_KIND_TASKS` (a
        calibration of its own) to `MAX_EXPLORE_TASKS`: 2 at 10 minutes, 6 at an hour. Two
        tasks a layout fix its calibration no better than the spread of the cost model's
        errors (a median of two draws 0.5-1 apart in log), and the first leader decides most
        of a search."""
        if self.config.explore_tasks is not None:
            return self.config.explore_tasks
        # counted at twice `_explore_round_s`: the first rounds of new tasks took 12-17 s each
        # in the 10-min CNN searches (their design-space probes, the first builds), and a
        # 10-min MobileNetV2 search counted at 8 s went for 3 tasks a layout, 9 rounds
        rounds = self._exploration_cap() / (max(1, layouts) * 2 * self._explore_round_s())
        return max(MIN_KIND_TASKS, min(MAX_EXPLORE_TASKS, int(rounds)))

    def _exploration_cap(self) -> float:
        return self.config.explore_share_of_budget * self.budget.total

    def _explore_round_s(self) -> float:
        """What one exploration round (`decent_trials` candidates) takes, from the rounds'
        pace so far (16-candidate rounds: `round_s`)."""
        # + 3 s: a 5-min MobileNetV2 search explored 6 tasks in 49 s (their design-space
        # probes, the first builds)
        return self.round_s * self.scorer.decent_trials / self.config.round_trials + 3.0

    def _explore(self, plans: dict[str, LaidPartition]) -> None:
        """Tune one round of the `_explore_per_layout` heaviest tasks of TVM's fusion in each layout
        of `plans` (`search.explore`), so each layout's estimates have a calibration of their
        own before the first leader is chosen; the seeds' estimates go on beside it. As many
        tasks as the exploration's time holds rounds for, the heaviest of every layout
        first."""
        kinds = sorted(plans)
        self.scorer.add_partitions(plans.values())
        per_layout = self._explore_per_layout(len(plans))
        tasks = exploration_tasks(self.scorer, plans, per_layout, self.untunable)
        left = self._exploration_cap() - self.state.exploration_s
        tasks = tasks[: int(left // self._explore_round_s())]
        if not tasks:
            self.state.explored.extend(kinds)
            return
        self.explored_keys = [t.key for t in tasks]
        if self.pool is not None:  # their estimates calibrate the layouts: before the rest
            todo = self.scorer.needs_estimate(self.explored_keys)
            self.pool.submit({k: self.scorer.task(k).mod for k in todo})
            self.pool.prioritize(self.explored_keys)
        started = time.monotonic()
        # the rounds planned may take longer than `_explore_round_s` says (a 10-min ResNet-18
        # search's took 16 s, not 8: the design-space probes, the first builds): the last one
        # is let finish, or its layout has one tuned task and no calibration of its own
        deadline = min(started + 1.5 * left, self.budget.deadline(self._reserve()))
        log.info(
            "exploring layouts %s: a round of %d candidates on each of %d tasks",
            ", ".join(kinds),
            self.scorer.decent_trials,
            len(tasks),
        )
        try:
            wall_s = self._explore_round(tasks, deadline, self._explore_stop)
        finally:
            # once tried, a layout is not explored again, even if a task of it failed (its
            # tasks are tuned like any other once a plan of it leads)
            self.state.explored.extend(kinds)
            self.explored_s += time.monotonic() - started
            self.state.exploration_s += time.monotonic() - started
            self.explored_at = time.monotonic()
        log.info("explored %s in %.0f s", ", ".join(kinds), wall_s)

    def _explore_round(self, tasks: list[Task], deadline: float, stop: Callable[[], bool]) -> float:
        """One round of `decent_trials` candidates on each of `tasks` (what the scorer counts
        as tuned); the wall seconds it took."""
        trials = self.scorer.decent_trials
        before = sum(r.trials for r in task_results(self.store, tasks, self.device.key))
        config = TuningConfig(
            trials=before + trials * len(tasks),
            seed=self.config.seed + 7919,
            protocol=self.config.protocol,
            measure_untuned=False,
            trials_per_round=trials,  # one round of `decent_trials` each: tuned, for the score
            max_round_trials=trials,
            transfer=self.config.transfer,
        )
        report = self.session.tune(
            tasks, config, cost_model=self.guide, deadline=deadline, stop=stop
        )
        for result in report.tasks:
            self.scorer.set_measured(result.key, result.best_seconds, result.trials)
            self._note_failing(result.key, result.best_seconds, result.trials)
        # (`round_s` is left alone: this run's time holds the tasks' design-space probes)
        return report.wall_s

    def _explore_while_waiting(self) -> None:
        """While the first leader waits for estimates (the seeds', the explored tasks'), the
        measuring core would sit idle (a 10-min ResNet-18 search waited 55 s after its
        exploration, its one estimator on the other core): a round on the next heaviest
        task of each explored layout instead, as many as the wait holds, so each layout's
        calibration rests on more tasks, tasks TVM's fusion in that layout shares with most
        plans of it. The wait's clock runs on; the leader is chosen when it ends."""
        plans = self._explore_plans
        if (
            self.leader is not None
            or self.config.explore_tasks == 0
            or not plans
            or len(plans) < 2
            or any(kind not in self.state.explored for kind in plans)
        ):
            return
        left = min(
            max(self._seed_wait_left(), self._explored_wait_left()),
            self.budget.left - self._reserve(),
        )
        round_s = max(self._explore_round_s(), self.session.pace.smallest_round_s())
        if left < round_s:
            return
        per_kind = 1 + max(self.scorer.tuned_of_kind(kind) for kind in plans)
        tasks = exploration_tasks(self.scorer, plans, per_kind, self.untunable)
        tasks = tasks[: int(left // round_s)]
        if not tasks:
            return

        def stop() -> bool:
            self._explore_stop()
            waiting = self._seed_wait_left() > 0 or self._explored_wait_left() > 0
            return self.stop_requested or not waiting

        started = time.monotonic()
        try:
            wall_s = self._explore_round(tasks, started + left, stop)
        finally:
            self.state.exploration_s += time.monotonic() - started
        log.info(
            "explored %d more tasks while the first leader waited for estimates, in %.0f s",
            len(tasks),
            wall_s,
        )

    def _explore_stop(self) -> bool:
        """Asked before each exploration round: the estimates are collected (and the queued
        ones handed out), so the explored tasks' estimates are in when it ends (without it the
        estimator sat idle through a 96-s exploration and the first leader waited 54 s more
        for them), and the next plans proposed once the queue runs low (else they wait for
        the main loop's next step, after the exploration). On the CNNs the queue never runs
        low before the first leader: a 10-min ResNet-18 search had 53 of its seeds' 123 tasks
        estimated at 192 s, 5 of 7 seeds unscored; its estimates wait while a measurement
        holds the cores (`measure.lease`)."""
        if self.pool is not None:
            try:  # an exception must not reach MetaSchedule's C++ loop
                self._collect(self.pool, wait=0.0)
                self._propose(self.pool)
            except Exception:
                log.exception("collecting estimates during the exploration failed")
        return self.stop_requested

    def _log_calibration(self) -> None:
        """Each layout's calibration, once the first leader is chosen."""
        parts = []
        for kind in self.state.explored:
            c = self.scorer.kind_calibration(kind)
            parts.append(f"{kind} {c.offset:+.2f} over {c.tasks}" if c else f"{kind} none")
        if parts:
            log.info(
                "estimates calibrated per layout (log offset over tasks): %s", ", ".join(parts)
            )
        seeds = []
        for key, partition, _ in self.searcher.scored():
            origin = self.searcher.origin(key)
            if origin.startswith("seed:"):
                score = self.scorer.score(partition)
                seeds.append(
                    f"{origin[5:]} {_ms(score.seconds)} ({_ms(score.projected)} at the end, "
                    f"{len(score.untuned)} of {len(self.scorer.tasks_of(partition))} tasks untuned)"
                )
        unscored = [s.origin[5:] for s in self.pending if s.origin.startswith("seed:")]
        log.info(
            "seeds at the first leader: %s%s (tasks estimated: %d, to come: %d)",
            "; ".join(seeds) or "none scored",
            f"; not scored yet: {', '.join(unscored)}" if unscored else "",
            len(self.scorer.estimates()),
            self.pool.pending if self.pool is not None else 0,
        )

    def _set_leader(self, partition: LaidPartition, why: str) -> None:
        if self.leader is not None and partition == self.leader:
            return
        if self.leader is None:
            self._log_calibration()
            if self.pool is not None and self.config.pace_estimates:
                # from the first leader on, estimates share the cores with its tuning: held
                # to `explore_share` of the wall time, so they never queue up on the
                # measurements
                self.pool.pace(self.config.explore_share)
        self.leader = partition
        self.leader_key = partition.fingerprint()
        score = self.scorer.score(partition)
        log.info(
            "leading plan %s (%s): %d groups, %d tasks, predicted %s, at the budget's end %s",
            self.leader_key[:10],
            why,
            partition.num_groups,
            len(self.scorer.tasks_of(partition)),
            _ms(score.seconds) if not score.unknown else "-",
            _ms(score.projected),
        )

    def _leader_tasks(self) -> list[Task]:
        assert self.leader is not None
        calls = self.scorer.tasks_of(self.leader)
        return [dataclasses.replace(self.scorer.task(k), weight=n) for k, n in calls.items()]

    def _tune_leader(self, reserve: float) -> None:
        """Tune the leader's kernels until the leader changes, is due to be timed end to end,
        the slice or the budget ends, or Ctrl-C; looking at the plans every `look_s`."""
        tasks = self._leader_tasks()
        if not tasks:
            return
        started = time.monotonic()
        # the budget's deadline is hard (no round starts that cannot end before it); the
        # slice's end soft (no round starts after it: `stop`)
        deadline = self.budget.deadline(reserve)
        slice_end = started + self.config.slice_seconds()
        results = task_results(self.store, tasks, self.device.key)
        before = sum(r.trials for r in results)
        config = TuningConfig(
            trials=before + 1_000_000,  # time ends the run, not a trial count
            seed=self.config.seed + self.slices,
            protocol=self.config.protocol,
            measure_untuned=False,  # the search scores tuned kernels; the untuned ones cost time
            trials_per_round=self._first_pass_round(sum(1 for r in results if not r.trials)),
            max_round_trials=self.config.round_trials,
            transfer=self.config.transfer,
        )
        self.slices += 1
        leader = self.leader
        last_look = started
        why: str | None = None  # why the run ended, once it should
        rounds_asked = 0  # the slice ends a run after one round at least

        def stop() -> bool:
            # Asked by every task's search before each of its rounds; once it says True it
            # keeps saying so, or the other tasks would go on with rounds until their next look.
            nonlocal last_look, why, rounds_asked
            if why is not None:
                return True
            if self.stop_requested:
                why = "Ctrl-C"
                return True
            now = time.monotonic()
            if now >= slice_end and rounds_asked:
                why = "the slice's end"
                return True
            rounds_asked += 1
            if now - last_look < self.config.look_s:
                return False
            last_look = now
            try:  # an exception must not reach MetaSchedule's C++ loop (it would abort)
                self._look(tasks)
                # a leader due to be timed end to end is timed before any challenger takes
                # over (the best verified plan on disk is a tuned one), here, between two
                # rounds: ending the run for it cost 10-20 s of restart (the tasks' contexts,
                # their first rounds' populations) on a 10-min ResNet-18 search
                if self._end_to_end_due():
                    self._check_leader()
                    last_look = time.monotonic()
                self._choose_leader()
            except Exception:
                log.exception("looking at the plans failed; the tuning run ends here")
                why = "an error while looking"
                return True
            if self.leader is not leader:
                why = "a new leader"
                return True
            return False

        self.tuning_since = time.monotonic()
        try:
            report = self.session.tune(
                tasks, config, cost_model=self.guide, deadline=deadline, stop=stop
            )
        finally:
            self.tuning_wall_s += time.monotonic() - self.tuning_since
            self.tuning_since = None
        for result in report.tasks:
            self.scorer.set_measured(result.key, result.best_seconds, result.trials)
            self._note_failing(result.key, result.best_seconds, result.trials)
        if report.trials_run >= self.config.round_trials:
            rounds = report.trials_run / self.config.round_trials
            self.round_s = report.wall_s / rounds
        log.info(
            "tuning run %d: %d trials on %d tasks in %.0f s, ended by %s; "
            "calibration %+.2f (log) over %d tasks",
            self.slices,
            report.trials_run,
            len(tasks),
            report.wall_s,
            why or "the deadline",
            self.scorer.calibration.offset,
            self.scorer.calibration.tasks,
        )

    def _first_pass_round(self, untried: int) -> int | None:
        """Candidates per round while the leader has `untried` tasks: as many as lets each of
        them have a round in `FIRST_PASS_SHARE` of the measurements the budget holds, between
        `decent_trials` and `round_trials` (None: `round_trials`, no task untried). A task left
        untried runs its untuned kernel: a 10-min MobileNetV2 search led with a 41-task plan at
        163 s, ran 530 candidates in rounds of 16 and ended at 11.98 ms."""
        if not untried:
            return None
        trials_left = self._measurement_rate() * max(0.0, self.budget.left - self._reserve())
        size = first_pass_round(
            int(trials_left), untried, FIRST_PASS_SHARE, self.config.round_trials
        )
        return max(self.scorer.decent_trials, size)

    def _look(self, tasks: list[Task]) -> None:
        """Between two rounds of a tuning run: what was measured so far is known to the scorer,
        plans are proposed, estimates collected, every plan scored again, the state saved
        (the leader is chosen after it, in the run's `stop`)."""
        assert self.pool is not None
        for task in tasks:  # two light queries a task, not every record read back
            trials = len(self.store.measured(task.key, self.device.key))
            if trials:
                best = self.store.best(task.key, self.device.key)
                seconds = best[0].median if best else None
                self.scorer.set_measured(task.key, seconds, trials)
                self._note_failing(task.key, seconds, trials)
        self._propose(self.pool)
        self._collect(self.pool, wait=0.0)
        self._measure_untunable()
        self._collect(self.pool, wait=0.0)
        self._rescore()
        self._save()

    def _end_to_end_due(self) -> bool:
        """The leader is tuned enough to time end to end: its first pass is done, and it was
        never timed, or its score improved 2 % since and `recheck_s` went by."""
        if self.leader is None:
            return False
        if self.budget.left - self._reserve() < 2.0 * self._timing_s():
            # the finish times the plan anyway: a timing now is worth its cost only with
            # tuning left after it (a 10-min ResNet-18 search timed its leader 58 s before the
            # end, in 42 s, and the finish ran 38 s over the budget)
            return False
        score = self.scorer.score(self.leader)
        if not score.final:
            return False
        previous = self.last_end_to_end.get(self.leader_key or "")
        if previous is None:
            return True
        if score.seconds > previous * 0.98:
            return False
        # timing a plan costs a build and two processes (MobileNetV2: ~17 s): re-timings
        # take at most `check_share` of the time spent (a 10-min search re-timed its leader
        # every minute, 3 x 17 s of 250)
        spent_timing = sum(e.get("seconds", 0.0) for e in self.state.end_to_end)
        if spent_timing + (self.end_to_end_s or 0.0) > self.config.check_share * self.budget.spent:
            return False
        return time.monotonic() - self.last_check_at >= self.config.recheck_seconds()

    def _rescore(self) -> None:
        self._update_projection()
        for key, partition, _ in self.searcher.scored():
            self._tell(key, partition, self.scorer.score(partition))
        self._report_progress()

    def _update_projection(self) -> None:
        """The scorer's curve (refitted each minute on every task's records) and horizon: the
        measurements the budget left holds at this run's rate (`search/curve.py`)."""
        if not self.config.project:
            return
        now = time.monotonic()
        if now - self.curve_fitted_at >= 60.0:
            self.curve_fitted_at = now
            sequences = self.store.latencies_in_order(self.device.key).values()
            curve = fit_slope(sequences, self.config.round_trials)
            if abs(curve.slope - self.scorer.curve.slope) > 0.02:
                log.info("tuning curve: slope %.3f over %d tasks", curve.slope, curve.tasks)
            self.scorer.set_curve(curve)
        self.scorer.set_horizon(
            self._measurement_rate() * max(0.0, self.budget.left - self._reserve())
        )

    def _measurement_rate(self) -> float:
        """Measurements per second of wall time from here on: what this run's tuning made per
        second of it, times the share of the time tuning gets (the rest: estimates, end-to-end
        timings, looks); before a round is done, a round per `round_s`."""
        wall = self.tuning_wall_s
        if self.tuning_since is not None:
            wall += time.monotonic() - self.tuning_since
        made = len(self.store) - self.counters.measurements_before
        if made < self.config.round_trials or wall < 10.0:
            return TUNING_SHARE * self.config.round_trials / self.round_s
        return TUNING_SHARE * made / wall

    def _tell(self, key: str, partition: LaidPartition, score: PlanScore) -> None:
        """The searcher learns a plan's score, and its cost per region (divide and conquer)."""
        if score.unknown:
            self.searcher.on_result(key, None)
            return
        regions = self.space.regions
        parts = None
        if regions is not None and regions.count > 1:
            parts = regions.costs(partition, lambda g: self.scorer.group_seconds(partition, g))
        self.searcher.on_result(key, score.ranking, parts)

    def _learn_in_model(self, planned: PlannedModel, measured: PlanMeasurement) -> dict[str, Any]:
        """Each task's kernel as the end-to-end run timed it inside the model, against its best
        record alone (what the build used): the scorer's in-model ratios. Returns the totals
        for the timing's entry: kernels inside the model, and alone (calls x best record)."""
        if not measured.kernels or not measured.verified:
            return {}
        inside = alone = 0.0
        untuned = set(measured.untuned_kernels)
        for task in planned.tasks:
            # the build merges a task's identical kernels into one function, named after its
            # first group, whose time holds all the task's calls
            names = set(task.groups) & measured.kernels.keys()
            if not names or set(task.groups) & untuned:
                continue  # not timed (a builtin now), or built without its record
            best = self.store.best(task.key, self.device.key)
            if not best or not best[0].median:
                continue
            per_call = sum(measured.kernels[n] for n in names) / max(1, task.weight)
            ratio = min(max(per_call / best[0].median, 0.5), 5.0)
            self.scorer.set_in_model(task.key, ratio)
            self.state.in_model[task.key] = ratio
            inside += per_call * task.weight
            alone += best[0].median * task.weight
        if not alone:
            log.warning("no kernel of the plan was found among the functions the VM timed")
            return {}
        log.info(
            "kernels inside the model %.4g ms, alone %.4g ms (x%.2f)",
            inside * 1e3,
            alone * 1e3,
            inside / alone,
        )
        return {"kernels_in_model_s": inside, "kernels_alone_s": alone}

    def _timing_entry(
        self,
        plan: str,
        predicted_s: float | None,
        planned: PlannedModel,
        measured: PlanMeasurement,
        seconds: float,
    ) -> dict[str, Any]:
        """`summary.json`'s record of one end-to-end timing (the in-model ratios learnt)."""
        return {
            "plan": plan,
            "predicted_s": predicted_s,
            "measured_s": measured.seconds,
            "verified": measured.verified,
            "errors": list(measured.errors),
            "at_s": self.budget.spent,
            "time": time.time(),  # the records measured by then are what it was built with
            "seconds": seconds,
            **self._learn_in_model(planned, measured),
        }

    def _check_leader(self) -> None:
        assert self.leader is not None
        if not self._end_to_end_due():
            return
        score = self.scorer.score(self.leader)
        started = self.last_check_at = time.monotonic()
        planned = self._planned(self.leader)
        measured = measure_plan(
            planned,
            self.store,
            self.device,
            self.config.protocol,
            profile_runs=self.config.profile_runs,
            library=self.folder.timed_library,
        )
        self.end_to_end_s = time.monotonic() - started
        self.state.end_to_end_s = self.end_to_end_s
        entry = self._timing_entry(
            self.leader_key or "", score.seconds, planned, measured, self.end_to_end_s
        )
        timed = self.folder.timed_plan(self.leader_key or "")
        timed.parent.mkdir(exist_ok=True)
        planned.plan.save(timed)
        self.state.end_to_end.append(entry)
        # every score from now on counts kernels as timed inside the model (the searcher's
        # too, or plans scored before and after would be compared); an improvement worth
        # another timing is measured from there
        self._rescore()
        self.last_end_to_end[self.leader_key or ""] = self.scorer.score(self.leader).seconds
        best = self.state.best
        if (
            measured.verified
            and measured.seconds is not None
            and (best is None or measured.seconds < best["measured_s"])
        ):
            self.state.best = {
                "plan": self.leader_key,
                "measured_s": measured.seconds,
                "predicted_s": score.seconds,
                "groups": self.leader.num_groups,
                "at_s": self.budget.spent,
            }
            planned.plan.save(self.folder.plan)
            self.folder.keep_library(self.folder.timed_library)
            log.info("best verified plan so far: %s", _ms(measured.seconds))

    # -- finish -------------------------------------------------------------------------------

    def _finish(self) -> dict[str, Any]:
        partition = self._best_partition()
        planned = self._planned(partition)
        score = self.scorer.score(partition)
        started = time.monotonic()
        final = measure_plan(
            planned,
            self.store,
            self.device,
            self.config.protocol,
            tvm_default=self.config.times_tvm_default(),
            profile_runs=self.config.profile_runs,
            library=self.folder.timed_library,
        )
        # the final build is one more plan timed end to end: its prediction for the score's
        # rank correlation, its kernels inside the model (a short search may time no leader)
        entry = self._timing_entry(
            partition.fingerprint(),
            None if score.unknown else score.seconds,
            planned,
            final,
            time.monotonic() - started,
        )
        self.state.end_to_end.append({**entry, "final": True})
        ours = final.seconds
        best = self.state.best
        if (
            final.verified
            and ours is not None
            and (best is None or ours <= best["measured_s"] * 1.05)
        ):
            planned.plan.save(self.folder.plan)
            self.folder.keep_library(self.folder.timed_library)
        self.state.finished = True
        summary = self._summary(final=final, interrupted=False, partition=partition)
        write_json_atomic(summary, self.folder.summary)
        return summary

    def _best_partition(self) -> LaidPartition:
        best = self.state.best
        if best is not None:
            for key, partition, _ in self.searcher.scored():
                if key == best["plan"]:
                    return partition
        # never timed end to end: the best-scored plan whose tasks are all tuned, else one
        # whose score is mostly measured
        scored = [(self.scorer.score(p), p) for _, p, _ in self.searcher.scored()]
        for keep in (
            lambda s: s.final,
            lambda s: not s.unknown and s.measured_share >= self.config.end_to_end_share,
        ):
            kept = [(s.seconds, p) for s, p in scored if keep(s)]
            if kept:
                return min(kept, key=lambda item: item[0])[1]
        if self.leader is not None:
            return self.leader
        ranked = self.searcher.best(1)
        if ranked:
            return ranked[0][0]
        return LaidPartition(seed_partition(self.prepared, "tvm").partition)

    def _estimator_nodes(self) -> int:
        """The Ray nodes the estimators ran on (asked at the end: asking at the start would
        wait for every actor to start)."""
        try:
            return len(self.pool.nodes()) if self.pool is not None else 0
        except Exception:  # noqa: BLE001 - a lost actor costs the count, not the summary
            return 0

    def _plan_info(self, partition: LaidPartition | None) -> dict[str, Any] | None:
        """The groups per layout of a plan and the layout transforms it places."""
        if partition is None:
            return None
        layouts: dict[str, int] = {}
        for group in partition.group_ids:
            name = partition.layout(group) or "NCHW"
            layouts[name] = layouts.get(name, 0) + 1
        self.scorer.add_partitions([partition])
        groups = [partition.nodes_of(g) for g in partition.group_ids]
        names = [partition.layout(g) for g in partition.group_ids]
        return {
            "key": partition.fingerprint(),
            "groups": partition.num_groups,
            "layouts": layouts,
            "transforms": self.scorer.transforms_of(partition),
            "transforms_cancelled": cancelled_borders(self.prepared.graph, groups, names),
        }

    def _summary(
        self,
        final: PlanMeasurement | None,
        interrupted: bool,
        partition: LaidPartition | None = None,
    ) -> dict[str, Any]:
        summary = search_summary(
            plan_info=self._plan_info(partition if partition is not None else self.leader),
            model=self.imported.path,
            device=self.device,
            budget=self.budget,
            state=self.state,
            final=final,
            interrupted=interrupted,
            plans_scored=len(self.searcher.scored()),
            plans_suggested=len(self.searcher),
            estimator_nodes=self._estimator_nodes(),
            measurements=len(self.store),
            measurements_before=self.counters.measurements_before,
            outputs={
                "plan": str(self.folder.plan),
                "library": str(self.folder.library),
                "database": str(self.folder.database),
            },
        )
        curve = self.scorer.curve
        summary["tuning_curve"] = {"slope": curve.slope, "tasks": curve.tasks}
        summary["transfer"] = self.session.transfer.report()
        return summary

    # -- helpers ------------------------------------------------------------------------------

    def _planned(self, partition: LaidPartition) -> PlannedModel:
        plan = partition.plan(self.prepared.graph)
        return plan_model(self.prepared, plan)

    def _learn_measured(self, tasks: list[Task]) -> None:
        """What the database already holds of new tasks (an earlier run, another plan)."""
        if not tasks:
            return
        for result in task_results(self.store, tasks, self.device.key):
            if result.trials or result.best_seconds is not None:
                self.scorer.set_measured(result.key, result.best_seconds, result.trials)

    def _restore(self, pool: EstimatorPool) -> None:
        """A resumed search: the restored plans' tasks known again (estimates from the state,
        measurements from the database), those not scored yet back in flight, the leader."""
        scored = self.searcher.scored()
        unscored = self.searcher.unscored()
        partitions = [p for _, p, _ in scored] + [s.partition for s in unscored]
        if not partitions:
            return
        tasks = self.scorer.add_partitions(partitions)
        self._learn_measured(tasks)
        keys = [k for p in partitions for k in self.scorer.tasks_of(p)]
        pool.submit({k: self.scorer.task(k).mod for k in self.scorer.needs_estimate(keys)})
        self.pending.extend(unscored)
        for key, partition, _ in scored:
            if key == self.leader_key:
                self._set_leader(partition, "resumed")

    def _save(self) -> None:
        self.state.spent_s = self.budget.spent
        self.state.round_pace = self.session.pace.to_json()
        self.state.searcher = self.searcher.save()
        self.state.leader = self.leader_key
        best = self.searcher.best(1)
        self.state.history.append(
            {
                "at_s": self.budget.spent,
                "best_predicted_s": self._predicted_now(best),
                "best_measured_s": self.state.best["measured_s"] if self.state.best else None,
                "measurements": len(self.store),
            }
        )
        self.folder.save_state(self.state)

    def _report_progress(self) -> None:
        if self.on_progress is None:
            return
        best = self.searcher.best(1)
        measured = [e["measured_s"] for e in self.state.end_to_end if e.get("verified")]
        self.on_progress(
            {
                "spent_s": self.budget.spent,
                "budget_s": self.budget.total,
                "best_predicted_s": self._predicted_now(best),
                "first_measured_s": measured[0] if measured else None,
                "best_measured_s": self.state.best["measured_s"] if self.state.best else None,
                "measurements": len(self.store),
                "plans_scored": len(self.searcher.scored()),
            }
        )

    def _predicted_now(self, best: list[tuple[LaidPartition, float, str]]) -> float | None:
        """The score as it stands of the best-ranked plan (the searcher ranks on projections)."""
        if not best:
            return None
        score = self.scorer.score(best[0][0])
        return None if score.unknown else score.seconds


def _before_fallback(error: str) -> bool:
    """An estimate's error from before the rule sets' fallback: a schedule rule's error with
    MetaSchedule's default rules only (`probe.sample_first_working` says "no rule set works"
    once it tried them all)."""
    return "ScheduleError" in error and "no rule set works" not in error


def _ms(seconds: float | None) -> str:
    return f"{seconds * 1e3:.4g} ms" if seconds is not None else "-"


__all__ += ["format_duration"]
