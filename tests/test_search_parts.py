"""The search's parts on their own: budget, plan space, searcher, plan score (no tuning)."""

from __future__ import annotations

import json
import math
import random
import time

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ago_search.devices import host_target
from ago_search.errors import AgoSearchError
from ago_search.partition import quotient_graph
from ago_search.pipeline import import_model, prepare_model, seed_partition
from ago_search.search.budget import Budget, format_duration, parse_budget
from ago_search.search.curve import PRIOR_SLOPE, TuningCurve, allocate, fit_slope
from ago_search.search.score import PlanScorer
from ago_search.search.searcher import PlanSearcher
from ago_search.search.space import GroupLimits, PlanSpace
from cost_model.estimate import TaskEstimate


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("45s", 45), ("20m", 1200), ("2h", 7200), ("1h30m", 5400), ("1.5h", 5400), ("90", 90)],
)
def test_budgets_parse(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["", "2x", "-5m", "h", "1h1h", "0s", "two hours"])
def test_bad_budgets_name_the_text_and_the_forms(text):
    with pytest.raises(AgoSearchError, match=r"--budget .*45s, 20m, 2h or 1h30m"):
        parse_budget(text)


def test_budget_counts_what_earlier_runs_spent():
    budget = Budget(100.0, spent_before=70.0)
    assert 70.0 <= budget.spent < 71.0
    assert 29.0 < budget.left <= 30.0
    assert not budget.expired(reserve=20.0) and budget.expired(reserve=31.0)
    assert format_duration(3725) == "1h02m" and format_duration(185) == "3m05s"


@pytest.fixture(scope="module")
def squeezenet(zoo):
    entry = zoo["squeezenet"]
    imported = import_model(entry["path"], entry["inputs"])
    return prepare_model(imported, host_target())


def _acyclic(graph, partition) -> bool:
    return nx.is_directed_acyclic_graph(quotient_graph(graph, partition.assignment()))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_moves_stay_acyclic_and_within_the_limits(squeezenet, seed):
    graph = squeezenet.graph
    limits = GroupLimits(max_ops=6, max_complex=2, max_working_set=2 << 20)
    space = PlanSpace(graph, limits)
    partition = space.fit_to_limits(seed_partition(squeezenet, "intensive").partition)
    assert space.fits(partition)
    rng = random.Random(seed)
    for _ in range(10):
        step = space.neighbour(partition, rng)
        assert step is not None
        partition, kind = step
        assert kind in ("merge", "split", "move")
        assert _acyclic(graph, partition)
        assert space.fits(partition)


def test_fit_to_limits_cuts_big_seed_groups(squeezenet):
    space = PlanSpace(squeezenet.graph, GroupLimits(max_ops=3, max_complex=1))
    intensive = seed_partition(squeezenet, "intensive").partition
    assert not space.fits(intensive)
    fitted = space.fit_to_limits(intensive)
    assert space.fits(fitted) and _acyclic(squeezenet.graph, fitted)
    assert fitted.num_groups > intensive.num_groups


def _searcher(prepared, seed=3):
    space = PlanSpace(prepared.graph)
    seeds = {n: seed_partition(prepared, n).partition for n in ("tvm", "dnnfusion", "intensive")}
    return PlanSearcher(space, seeds, seed=seed)


def _fake_score(partition) -> float:
    """A deterministic stand-in score: fewer groups are better, with a twist."""
    return partition.num_groups + int(partition.fingerprint()[:4], 16) / 65536


def test_searcher_suggests_seeds_first_then_new_partitions_and_learns(squeezenet):
    searcher = _searcher(squeezenet)
    first = searcher.suggest(5)
    assert [s.origin.split("(")[0] for s in first[:3]] == [
        "seed:tvm",
        "seed:dnnfusion",
        "seed:intensive",
    ]
    for s in first:
        searcher.on_result(s.key, _fake_score(s.partition))
    seen = {s.key for s in first}
    for _ in range(5):
        batch = searcher.suggest(6)
        assert batch and not {s.key for s in batch} & seen
        seen |= {s.key for s in batch}
        for s in batch:
            searcher.on_result(s.key, _fake_score(s.partition))
    best = searcher.best(3)
    assert [b[1] for b in best] == sorted(_fake_score(p) for p, _, _ in best)
    assert best[0][1] == min(_fake_score(p) for _, p, _ in searcher.scored())
    with pytest.raises(KeyError):
        searcher.on_result("not-a-key", 1.0)


def test_searcher_state_round_trips_and_continues_the_same_way(squeezenet):
    one = _searcher(squeezenet)
    for _ in range(3):
        for s in one.suggest(6):
            one.on_result(s.key, _fake_score(s.partition))
    state = one.save()
    two = _searcher(squeezenet, seed=99)
    two.restore(state)
    assert {k for k, _, _ in two.scored()} == {k for k, _, _ in one.scored()}
    assert [s.key for s in two.suggest(6)] == [s.key for s in one.suggest(6)]


def test_scorer_sums_calls_and_calibrates_on_tuned_tasks(squeezenet):
    scorer = PlanScorer(squeezenet, decent_trials=4, launch_overhead_s=1e-6)
    partition = seed_partition(squeezenet, "tvm").partition
    tasks = scorer.add_partitions([partition])
    calls = scorer.tasks_of(partition)
    assert set(calls) == {t.key for t in tasks}
    assert sum(calls.values()) == partition.num_groups  # every group is one kernel here
    assert scorer.score(partition).unknown  # nothing known yet
    keys = sorted(calls)
    for i, key in enumerate(keys):
        scorer.set_estimate(key, TaskEstimate(math.log(1e-4 * (i + 1)), None, 64, 0.1))
    estimated = scorer.score(partition)
    assert not estimated.unknown and estimated.measured_share == 0.0
    expected = sum(calls[k] * 1e-4 * (i + 1) for i, k in enumerate(keys))
    assert estimated.kernel_seconds == pytest.approx(expected)
    assert estimated.seconds == pytest.approx(expected + 1e-6 * sum(calls.values()))
    # two tasks tuned, both measured 2x slower than estimated: the rest is shifted by log 2
    for i in (0, 1):
        scorer.set_measured(keys[i], 2 * 1e-4 * (i + 1), trials=4)
    assert scorer.calibration.offset == pytest.approx(math.log(2))
    assert scorer.calibration.tasks == 2
    calibrated = scorer.score(partition)
    assert calibrated.kernel_seconds == pytest.approx(2 * expected)
    assert 0 < calibrated.measured_share < 1
    # a task measured a little (under decent_trials) counts the better of both
    scorer.set_measured(keys[2], 1e-9, trials=1)
    assert scorer.task_seconds(keys[2]) == (1e-9, False)
    # a task that cannot be tuned (no estimate) is unknown until its untuned kernel is
    # measured, then that measurement is its latency for good
    scorer.set_estimate(keys[3], TaskEstimate(None, None, 0, 0.1, "ScheduleError"))
    assert keys[3] in scorer.score(partition).unknown
    scorer.set_measured(keys[3], 5e-4, trials=0)
    assert scorer.task_seconds(keys[3]) == (5e-4, True)
    assert not scorer.score(partition).unknown
    assert scorer.calibration.tasks == 2  # it calibrates nothing: it has no estimate


def test_a_plan_is_final_only_when_every_task_is_tuned(squeezenet):
    """MobileNetV2's search timed its leader end to end with 7 of 33 tasks untuned (their
    estimates were 10 % of the score): 5.1 ms predicted, 10.8 ms measured. A score says which
    tasks are not final, whatever their share."""
    scorer = PlanScorer(squeezenet, decent_trials=4)
    partition = seed_partition(squeezenet, "tvm").partition
    scorer.add_partitions([partition])
    keys = sorted(scorer.tasks_of(partition))
    for key in keys:
        scorer.set_estimate(key, TaskEstimate(math.log(1e-4), None, 32, 0.1))
    for key in keys[:-1]:
        scorer.set_measured(key, 1e-3, trials=4)
    score = scorer.score(partition)
    assert score.measured_share > 0.9
    assert score.untuned == (keys[-1],) and not score.final
    # its search gave no working schedule: its measured untuned kernel is final
    scorer.set_measured(keys[-1], 3e-3, trials=5)
    scorer.set_untunable(keys[-1])
    assert scorer.score(partition).final
    scorer.set_measured(keys[-1], None, trials=8)  # nothing measured that works: not final
    assert not scorer.score(partition).final


def test_a_task_with_a_tiny_design_space_is_tuned_after_its_few_schedules(squeezenet):
    """SqueezeNet's concats and reshape have one schedule each: MetaSchedule measures one and
    has nothing else to propose, so waiting for `decent_trials` would never time the plan."""
    from cost_model.estimate import LatencyEstimator

    scorer = PlanScorer(squeezenet, decent_trials=8)
    partition = seed_partition(squeezenet, "tvm").partition
    tasks = scorer.add_partitions([partition])
    concat = next(t for t in tasks if t.name.endswith("concat"))
    conv = next(t for t in tasks if "conv2d" in t.name)
    estimator = LatencyEstimator(squeezenet.target, samples=16)
    for task in (concat, conv):
        scorer.set_estimate(task.key, estimator.estimate(task.mod))
    assert scorer.estimates()[concat.key].distinct == 1
    assert scorer.estimates()[conv.key].distinct > 1
    scorer.set_measured(concat.key, 1e-5, trials=1)
    scorer.set_measured(conv.key, 1e-4, trials=1)
    assert scorer.is_final(concat.key) and not scorer.is_final(conv.key)


@pytest.mark.slow
def test_the_estimator_pool_paces_estimates_to_its_share(squeezenet):
    """On 2 cores every estimate slows the tuning beside it: the pool hands tasks to its
    actors only while their CPU time stays within its share of the wall time."""
    import ray

    from ago_search.search.estimators import EstimatorPool

    scorer = PlanScorer(squeezenet)
    tasks = scorer.add_partitions([seed_partition(squeezenet, "tvm").partition])[:4]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        pool = EstimatorPool(squeezenet.target, workers=1, samples=4, share=0.0, head_start_s=0.0)
        try:
            assert pool.submit({t.key: t.mod for t in tasks}) == 4
            assert pool.submit({tasks[0].key: tasks[0].mod}) == 0  # never twice
            first = pool.drain(timeout=0)  # nothing waited for
            assert pool.pending == 4 - len(first)
            got = {}
            deadline = time.monotonic() + 120
            while not got and time.monotonic() < deadline:
                got.update(pool.poll(timeout=5.0))
            assert len(got) == 1 and pool.seconds > 0  # the one let out at the start
            time.sleep(1.0)
            assert pool.poll(timeout=1.0) == {} and pool.pending == 3  # over its share: held
            rest = pool.drain(timeout=300)  # draining hands out everything
            assert len(rest) == 3 and pool.pending == 0
            assert all(e.log_seconds is not None for e in [*got.values(), *rest.values()])
        finally:
            pool.close()
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------------------------
# layouts in the search (issue 15)


def test_layout_moves_relabel_whole_groups_and_partition_moves_keep_layouts(squeezenet):
    from ago_search.search.laid import LaidPartition

    graph = squeezenet.graph
    space = PlanSpace(graph, layouts=("NCHW", "NHWC", "NCHW16c"))
    assert space.layouts == ("NHWC", "NCHW16c")
    laid = LaidPartition(space.fit_to_limits(seed_partition(squeezenet, "tvm").partition))
    rng = random.Random(5)
    kinds = set()
    for _ in range(60):
        step = space.neighbour(laid, rng)
        assert step is not None
        laid, kind = step
        kinds.add(kind)
        assert _acyclic(graph, laid.partition) and space.fits(laid)
        for g in laid.group_ids:  # one layout per group
            assert len({laid.labels[laid.index.position[n]] for n in laid.nodes_of(g)}) == 1
    assert {"layout", "layout-region"} <= kinds and kinds & {"merge", "split", "move"}
    assert laid.has_layouts
    again = LaidPartition.from_dict(graph, json.loads(json.dumps(laid.to_dict())))
    assert again == laid and again.fingerprint() == laid.fingerprint()
    plain = LaidPartition(laid.partition)
    assert plain.fingerprint() == laid.partition.fingerprint() != laid.fingerprint()
    plan = laid.plan(graph)
    assert sorted(str(g.layout) for g in plan.groups) == sorted(
        str(laid.layout(g)) for g in laid.group_ids
    )


def test_a_plan_in_a_layout_scores_its_transforms_as_tasks(squeezenet):
    from ago_search.search.laid import LaidPartition

    space = PlanSpace(squeezenet.graph, layouts=("NHWC",))
    tvm = LaidPartition(seed_partition(squeezenet, "tvm").partition)
    nhwc = tvm.with_layout(space.layout_groups(tvm), "NHWC")
    half = tvm.with_layout(space.layout_groups(tvm)[::2], "NHWC")
    scorer = PlanScorer(squeezenet)
    scorer.add_partitions([tvm, nhwc, half])
    base = scorer.tasks_of(tvm)
    assert scorer.transforms_of(tvm) == 0
    # the whole model in NHWC: one transform, of the image; the logits are rank 2
    assert scorer.transforms_of(nhwc) == 1
    assert scorer.transforms_of(half) > 4
    for laid in (nhwc, half):
        calls = scorer.tasks_of(laid)
        assert sum(calls.values()) == sum(base.values()) + scorer.transforms_of(laid)
    conv_tasks = {k for k in scorer.tasks_of(nhwc) if "conv2d" in scorer.task(k).name}
    assert conv_tasks and conv_tasks.isdisjoint(base)  # a group in NHWC is another task


def test_the_searcher_starts_from_tvms_fusion_in_every_layout(squeezenet):
    from ago_search.search.laid import LaidPartition

    space = PlanSpace(squeezenet.graph, layouts=("NCHW", "NHWC", "NCHW16c"))
    tvm = LaidPartition(seed_partition(squeezenet, "tvm").partition)
    seeds = {"tvm": tvm}
    for layout in space.layouts:
        seeds[f"tvm/{layout}"] = tvm.with_layout(space.layout_groups(tvm), layout)
    one = PlanSearcher(space, seeds, seed=1)
    first = one.suggest(3)
    assert [s.origin for s in first] == ["seed:tvm", "seed:tvm/NHWC", "seed:tvm/NCHW16c"]
    for s in first + one.suggest(8):
        one.on_result(s.key, _fake_score(s.partition))
    two = PlanSearcher(space, seeds, seed=2)
    two.restore(one.save())
    assert {k for k, _, _ in two.scored()} == {k for k, _, _ in one.scored()}
    assert any(p.has_layouts for _, p, _ in two.scored())


def test_a_group_that_cannot_take_a_layout_leaves_its_plans_unscored(squeezenet, monkeypatch):
    from ago_search.plan import apply as plan_apply
    from ago_search.search.laid import LaidPartition
    from ago_search.search.score import FAILED_TASK

    real = plan_apply.transform_primfunc

    def refuse_pools(func, roles, layout):
        if "pool" in str(func.body):
            raise RuntimeError("ScheduleError: a primitive refused this block")
        return real(func, roles, layout)

    monkeypatch.setattr(plan_apply, "transform_primfunc", refuse_pools)
    space = PlanSpace(squeezenet.graph, layouts=("NHWC",))
    tvm = LaidPartition(seed_partition(squeezenet, "tvm").partition)
    nhwc = tvm.with_layout(space.layout_groups(tvm), "NHWC")
    scorer = PlanScorer(squeezenet)
    scorer.add_partitions([tvm, nhwc])  # no exception: the pool groups are marked
    assert FAILED_TASK in scorer.tasks_of(nhwc) and FAILED_TASK not in scorer.tasks_of(tvm)
    assert FAILED_TASK not in scorer.needs_estimate(scorer.tasks_of(nhwc))
    assert FAILED_TASK in scorer.score(nhwc).unknown


def test_each_layout_is_explored_until_it_has_a_calibration_of_its_own(squeezenet, monkeypatch):
    from ago_search.search import explore
    from ago_search.search.explore import exploration_tasks, roofline_work
    from ago_search.search.laid import LaidPartition
    from ago_search.search.score import MIN_KIND_TASKS

    space = PlanSpace(squeezenet.graph, layouts=("NHWC",))
    tvm = LaidPartition(seed_partition(squeezenet, "tvm").partition)
    nhwc = tvm.with_layout(space.layout_groups(tvm), "NHWC")
    scorer = PlanScorer(squeezenet, decent_trials=4)
    scorer.add_partitions([tvm, nhwc])
    plans = {"NCHW": tvm, "NHWC": nhwc}

    # before any estimate: the heaviest tasks of each layout by their roofline work x calls,
    # in rounds across the layouts, taken in turns from the kernels bound by compute and by
    # memory while each class holds `CLASS_SHARE` of the plan's work
    def work_of(plan, kind):
        calls = scorer.tasks_of(plan)
        return {
            k: (roofline_work(scorer.task(k))[0] * calls[k], roofline_work(scorer.task(k))[1])
            for k in calls
            if scorer.kind_of(k) == kind and scorer.task(k).flops > 0
        }

    for share in (1.01, 0.0):  # no class has a turn of its own; every class has
        monkeypatch.setattr(explore, "CLASS_SHARE", share)
        picks = exploration_tasks(scorer, plans, per_kind=MIN_KIND_TASKS)
        kinds = [scorer.kind_of(t.key) for t in picks]
        assert kinds == ["NCHW", "NHWC"] * MIN_KIND_TASKS
        for kind, plan in plans.items():
            calls = scorer.tasks_of(plan)
            work = work_of(plan, kind)
            chosen = [t.key for t in picks if scorer.kind_of(t.key) == kind]
            assert all(t.weight == calls[t.key] for t in picks if t.key in chosen)
            if share > 1:  # the heaviest, whatever bounds them
                rest = [w for k, (w, _) in work.items() if k not in chosen]
                assert min(work[k][0] for k in chosen) >= max(rest)
            else:  # the heaviest bound by compute and the heaviest bound by memory
                for bound in (False, True):
                    mine = {k: w for k, (w, b) in work.items() if b == bound}
                    assert [k for k in chosen if work[k][1] == bound] == [max(mine, key=mine.get)]
    # estimates: NHWC tasks predicted 4x slower than they measure, NCHW ones right
    keys = sorted(set(scorer.tasks_of(tvm)) | set(scorer.tasks_of(nhwc)))
    for i, key in enumerate(keys):
        scorer.set_estimate(key, TaskEstimate(math.log(1e-5 * (i + 1)), None, 32, 0.1))
    for task in picks:
        estimate = math.exp(scorer.estimates()[task.key].log_seconds)
        factor = 0.25 if scorer.kind_of(task.key) == "NHWC" else 1.0
        scorer.set_measured(task.key, estimate * factor, trials=4)
    assert scorer.kind_calibration("NHWC").offset == pytest.approx(math.log(0.25))
    assert scorer.kind_calibration("NCHW").offset == pytest.approx(0.0)
    untuned = next(
        k for k in scorer.tasks_of(nhwc) if scorer.kind_of(k) == "NHWC" and not scorer.is_final(k)
    )
    raw = math.exp(scorer.estimates()[untuned].log_seconds)
    assert scorer.task_seconds(untuned) == (pytest.approx(raw * 0.25), False)
    # every layout has its calibration now: nothing more to explore
    assert exploration_tasks(scorer, plans, per_kind=MIN_KIND_TASKS) == []
    # one more a layout (what the search explores while its first leader waits for
    # estimates): each layout's next heaviest, in rounds across the layouts
    more = exploration_tasks(scorer, plans, per_kind=MIN_KIND_TASKS + 1)
    assert [scorer.kind_of(t.key) for t in more] == ["NCHW", "NHWC"]
    assert not {t.key for t in more} & {t.key for t in picks}
    for task in more:
        kind = scorer.kind_of(task.key)
        rest = [w for k, (w, _) in work_of(plans[kind], kind).items() if not scorer.is_final(k)]
        assert work_of(plans[kind], kind)[task.key][0] == max(rest)


def test_a_tuned_tasks_late_estimate_calibrates(squeezenet):
    """Exploration tunes tasks before their estimates come back: an estimate that arrives
    for a tuned task refits the calibration."""
    scorer = PlanScorer(squeezenet, decent_trials=4)
    partition = seed_partition(squeezenet, "tvm").partition
    scorer.add_partitions([partition])
    keys = sorted(scorer.tasks_of(partition))
    for key in keys[:3]:
        scorer.set_measured(key, 2e-4, trials=4)
    assert scorer.calibration.tasks == 0
    for key in keys[:3]:
        scorer.set_estimate(key, TaskEstimate(math.log(1e-4), None, 32, 0.1))
    assert scorer.calibration.tasks == 3
    assert scorer.calibration.offset == pytest.approx(math.log(2))


def test_the_searcher_names_its_seeds(squeezenet):
    from ago_search.search.laid import LaidPartition

    space = PlanSpace(squeezenet.graph, layouts=("NHWC",))
    tvm = LaidPartition(seed_partition(squeezenet, "tvm").partition)
    seeds = {"tvm": tvm, "tvm/NHWC": tvm.with_layout(space.layout_groups(tvm), "NHWC")}
    searcher = PlanSearcher(space, seeds, seed=0)
    first = searcher.suggest(2)
    searcher.on_result(first[0].key, 1e-3)
    named = searcher.seeds()
    assert set(named) == {"tvm", "tvm/NHWC"}
    assert named["tvm"][1] == 1e-3 and named["tvm/NHWC"][1] is None
    assert named["tvm/NHWC"][0].has_layouts


def test_a_search_resumed_with_layouts_suggests_the_layout_seeds_it_never_had(squeezenet):
    from ago_search.search.laid import LaidPartition

    space = PlanSpace(squeezenet.graph, layouts=("NHWC",))
    tvm = LaidPartition(seed_partition(squeezenet, "tvm").partition)
    nchw_only = PlanSearcher(PlanSpace(squeezenet.graph), {"tvm": tvm}, seed=0)
    for s in nchw_only.suggest(4):
        nchw_only.on_result(s.key, _fake_score(s.partition))
    seeds = {"tvm": tvm, "tvm/NHWC": tvm.with_layout(space.layout_groups(tvm), "NHWC")}
    resumed = PlanSearcher(space, seeds, seed=0)
    resumed.restore(nchw_only.save())
    first = resumed.suggest(1)
    assert [s.origin for s in first] == ["seed:tvm/NHWC"]  # tvm itself was scored before


def test_kernels_timed_inside_the_model_scale_their_tasks_and_the_rest(squeezenet):
    scorer = PlanScorer(squeezenet, decent_trials=4, launch_overhead_s=0.0)
    partition = seed_partition(squeezenet, "tvm").partition
    scorer.add_partitions([partition])
    calls = scorer.tasks_of(partition)
    keys = sorted(calls)
    for key in keys:
        scorer.set_estimate(key, TaskEstimate(math.log(1e-4), None, 32, 0.1))
        scorer.set_measured(key, 1e-4, trials=8)
    alone = scorer.score(partition).seconds
    assert alone == pytest.approx(1e-4 * sum(calls.values()))
    # three kernels timed inside a model: their own ratios, the median (1.5) for the rest
    for key, ratio in zip(keys[:3], (1.2, 1.5, 2.0), strict=True):
        scorer.set_in_model(key, ratio)
    assert scorer.in_model_ratio(keys[0]) == 1.2 and scorer.in_model_ratio(keys[2]) == 2.0
    assert scorer.in_model_ratio(keys[5]) == pytest.approx(1.5)
    expected = 1e-4 * sum(
        calls[k] * {keys[0]: 1.2, keys[1]: 1.5, keys[2]: 2.0}.get(k, 1.5) for k in keys
    )
    assert scorer.score(partition).seconds == pytest.approx(expected)
    from ago_search.search.laid import LaidPartition

    laid = LaidPartition(partition)
    for group in partition.group_ids:  # a group's share of the score: its task's, scaled
        key = scorer._group_task[(laid.groups[group], laid.layout(group))]
        if key is not None:
            expected = 1e-4 * scorer.in_model_ratio(key)
            assert scorer.group_seconds(partition, group) == pytest.approx(expected)


def test_a_layout_with_kernels_timed_inside_the_model_has_its_own_ratio(squeezenet):
    from ago_search.search.laid import LaidPartition

    space = PlanSpace(squeezenet.graph, layouts=("NHWC",))
    tvm = LaidPartition(seed_partition(squeezenet, "tvm").partition)
    nhwc = tvm.with_layout(space.layout_groups(tvm), "NHWC")
    scorer = PlanScorer(squeezenet, decent_trials=4, launch_overhead_s=0.0)
    scorer.add_partitions([tvm, nhwc])
    nchw_keys = [k for k in scorer.tasks_of(tvm) if scorer.kind_of(k) == "NCHW"]
    nhwc_keys = [k for k in scorer.tasks_of(nhwc) if scorer.kind_of(k) == "NHWC"]
    for key in nchw_keys[:3]:
        scorer.set_in_model(key, 1.2)
    for key in nhwc_keys[:3]:
        scorer.set_in_model(key, 2.0)
    scorer.set_in_model(nchw_keys[3], 1.3)  # all: median of 1.2 x3, 1.3, 2.0 x3 = 1.3
    assert scorer.in_model_ratio(nhwc_keys[5]) == pytest.approx(2.0)  # its layout's
    assert scorer.in_model_ratio(nchw_keys[5]) == pytest.approx(1.2)
    transforms = [k for k in scorer.tasks_of(nhwc) if scorer.kind_of(k) == "transform"]
    assert transforms and scorer.in_model_ratio(transforms[0]) == pytest.approx(1.3)  # all


def _power_law(first: float, slope: float, trials: int, rng: random.Random) -> list[float | None]:
    """A task's latencies in measurement order whose running best falls as trials^-slope (with
    failed and slower candidates between the new bests)."""
    out: list[float | None] = []
    for n in range(1, trials + 1):
        best = first * n ** (-slope)
        out.append(None if rng.random() < 0.1 else best * (1 + 2 * rng.random()))
        if n in (16, 32, 64, 128) or n == trials:
            out[-1] = best
    return out


def test_the_tuning_curve_is_fitted_on_tasks_with_two_rounds():
    rng = random.Random(0)
    tasks = [_power_law(1e-3 * (i + 1), 0.3, 32 + 16 * (i % 6), rng) for i in range(20)]
    short = [_power_law(1e-3, 0.9, 20, rng) for _ in range(10)]  # under two rounds: ignored
    failed = [[None] * 16 + [1e-4] * 40]  # nothing worked in its first round: ignored
    curve = fit_slope(tasks + short + failed, first_round=16)
    assert curve.tasks == 20
    # the prior counts as 5 tasks: (5 x PRIOR_SLOPE + 20 x 0.3) / 25, within the noise of the
    # first round's best (a candidate before trial 16 may beat the curve's best at 16)
    assert curve.slope == pytest.approx((5 * PRIOR_SLOPE + 20 * 0.3) / 25, abs=0.03)
    assert fit_slope([], first_round=16) == TuningCurve()
    assert curve.at(1e-3, 16, 64) == pytest.approx(1e-3 * 4 ** (-curve.slope))
    assert curve.at(1e-3, 16, 8) > 1e-3  # fewer trials: slower


def test_trials_left_are_shared_by_weight_and_no_task_loses_its_trials():
    final = allocate({"a": 4.0, "b": 1.0, "c": 1.0}, {"c": 90}, trials_left=60, slope=0.0)
    # total 150: a 4/6 of it, b 1/6, c keeps its 90 (more than its 1/6)
    assert final == {"a": pytest.approx(100.0), "b": pytest.approx(25.0), "c": 90.0}
    steep = allocate({"a": 4.0, "b": 1.0}, {}, trials_left=100, slope=1.0)
    assert steep["a"] == pytest.approx(100 * 2 / 3)  # weight^(1/2): 2 against 1
    assert allocate({"a": 0.0}, {}, 10, 0.2) == {}


def test_a_plan_is_projected_to_the_end_of_the_budget(squeezenet):
    """What the rest of the budget does to a plan: its tasks' trials then, along the curve.
    The 1-h MobileNetV2 search spread its measurements over 126 tasks and ended on 50 distinct
    tasks tuned 44 trials each, MetaSchedule alone on 33 with 182 each, 1.28x faster."""
    scorer = PlanScorer(squeezenet, decent_trials=8, launch_overhead_s=0.0)
    scorer.set_curve(TuningCurve(0.25, 10))
    partition = seed_partition(squeezenet, "tvm").partition
    scorer.add_partitions([partition])
    calls = scorer.tasks_of(partition)
    keys = sorted(calls)
    for key in keys:
        scorer.set_estimate(key, TaskEstimate(math.log(1e-4), None, 64, 0.1))
    now = scorer.score(partition)
    assert now.projected is None and now.ranking == now.seconds  # no horizon: as it stands
    scorer.set_horizon(8.0 * sum(calls.values()))
    short = scorer.score(partition)
    scorer.set_horizon(64.0 * sum(calls.values()))
    long = scorer.score(partition)
    assert long.projected < short.projected < short.seconds == now.seconds
    # no measurement left: a task never tuned would run on fewer than `decent_trials`
    scorer.set_horizon(0.0)
    assert scorer.score(partition).projected > now.seconds
    # the calibration reads tuned tasks at `decent_trials`: 1e-4 after 64 trials stands for
    # 1e-4 x 8^0.25 after 8, so the tasks not tuned are estimated that, not 1e-4
    for key in keys[:3]:
        scorer.set_measured(key, 1e-4, trials=64)
    assert scorer.calibration.offset == pytest.approx(0.25 * math.log(8))
    # the trials a task holds count: the tuned tasks' share of the trials left is spent on
    # the others, so a plan whose tasks are tuned projects further ahead than its score
    scorer.set_horizon(0.0)
    tuned = scorer.score(partition)
    for key in keys[:3]:
        seconds, final = scorer.task_seconds(key)
        assert final and seconds == pytest.approx(1e-4)
    assert tuned.projected > tuned.seconds  # the untuned ones get no trial at all
