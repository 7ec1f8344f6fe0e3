"""The cost model: metrics on hand-made rankings, training on the smoke traces (the loss
falls, a held-out task ranks better than chance), save/load, the XGB baseline on the same
records, the held-out-model report, and the GNN steering a short MetaSchedule tuning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cost_model.configs.default import Config
from cost_model.metrics import (
    TaskPrediction,
    evaluate_tasks,
    kendall_tau,
    mape,
    pairwise_accuracy,
    peak_score,
)

SMOKE_TRACES = Path(__file__).parent / "data" / "smoke_traces.jsonl.gz"
SMALL = Config(hidden=32, num_layers=2, num_steps=300, eval_every=100)


# ------------------------------------------------------------------------ metrics


def test_metrics_on_perfect_and_reversed_rankings() -> None:
    true = np.array([1.0, 2.0, 3.0, 4.0, 8.0])
    assert pairwise_accuracy(true, true) == 1.0 and kendall_tau(true, true) == 1.0
    assert pairwise_accuracy(-true, true) == 0.0 and kendall_tau(-true, true) == -1.0
    assert peak_score(true, true, 1) == 1.0 and peak_score(-true, true, 1) == 1.0 / 8.0
    assert peak_score(-true, true, 5) == 1.0  # the top 5 hold the best
    assert peak_score(-true, true, 2) == 1.0 / 4.0
    assert mape(true, true) == 0.0 and mape(2 * true, true) == pytest.approx(1.0)
    assert np.isnan(pairwise_accuracy([1, 2], [3, 3])) and np.isnan(kendall_tau([1, 1], [1, 2]))
    assert pairwise_accuracy([1, 1], [1, 2]) == 0.5  # a predicted tie counts half


def test_kendall_tau_matches_scipy() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(5):
        a = rng.integers(0, 6, 30).astype(float)  # with ties
        b = a + rng.normal(0, 2, 30)
        assert kendall_tau(b, a) == pytest.approx(scipy_stats.kendalltau(b, a).statistic)


def test_evaluate_tasks_weights_tasks() -> None:
    true = np.array([1.0, 2.0, 3.0])
    good = TaskPrediction("a", true, np.log(true), true, weight=3.0)
    bad = TaskPrediction("b", true, -true, None, weight=1.0)
    result = evaluate_tasks([good, bad, TaskPrediction("c", true[:1], true[:1])])
    assert result["tasks"] == 2.0
    assert result["pairwise_accuracy"] == pytest.approx(0.75)
    assert result["kendall_tau"] == pytest.approx(0.5)
    assert result["top1_peak"] == pytest.approx((3 * 1 + 1 / 3) / 4)
    assert result["mape"] == 0.0  # only the task with latencies counts


# ------------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def smoke():
    from cost_model.input_pipeline import load_dataset

    assert SMOKE_TRACES.exists(), "regenerate with cost_model.smoke_data.generate_smoke_traces"
    return load_dataset(SMOKE_TRACES)


def test_smoke_dataset_has_labelled_tasks(smoke) -> None:
    assert smoke.models == ["model_a", "model_b", "model_c"]
    assert len(smoke.tasks) == 6 and len(smoke) >= 200
    for task in smoke.tasks:
        assert len(task.graphs) == len(task.latencies) == len(task.traces)
        assert task.latencies.max() / task.latencies.min() > 2  # schedules differ


@pytest.fixture(scope="module")
def trained_on_all_but_one_task(smoke):
    from cost_model.input_pipeline import split_by_tasks
    from cost_model.train import train

    held_out = next(t.task_key for t in smoke.tasks if t.name == "model_a/matmul_64")
    train_set, test_set = split_by_tasks(smoke, [held_out])
    return train(SMALL, train_set, test_set), test_set


@pytest.mark.slow
def test_training_lowers_the_loss_and_ranks_a_held_out_task(trained_on_all_but_one_task):
    result, _ = trained_on_all_but_one_task
    first, last = result.history[0], result.history[-1]
    assert last["loss"] < first["loss"]
    assert last["eval"]["pairwise_accuracy"] > 0.6  # random ranks at 0.5
    assert last["eval"]["kendall_tau"] > 0.2


@pytest.mark.slow
def test_predictor_round_trip_and_pretrained(tmp_path: Path, trained_on_all_but_one_task):
    from cost_model.predictor import Predictor, load_pretrained

    result, test_set = trained_on_all_but_one_task
    predictor = Predictor(
        SMALL, result.model, result.feature_stats, result.target_stats, {"what": "test"}
    )
    graphs = list(test_set.tasks[0].graphs)
    before = predictor.predict(graphs)
    again = Predictor.load(predictor.save(tmp_path / "m"))
    np.testing.assert_allclose(again.predict(graphs), before, rtol=1e-5)
    assert again.info == {"what": "test"} and again.config == SMALL
    # log latencies of the right magnitude (seconds: microseconds to milliseconds)
    assert np.all((before > np.log(1e-7)) & (before < np.log(1e-1)))
    shipped = load_pretrained()  # the default: trained on the host's trace collection
    assert len(shipped.info["trained_on_models"]) >= 6 and shipped.info["records"] > 1000
    assert shipped.predict(graphs).shape == (len(graphs),)
    # a model saved before the readout option existed loads as what it was (pool readout)
    legacy = load_pretrained("host-smoke")
    assert legacy.config.readout == "pool" and "smoke" in legacy.info["label"]
    assert np.all(np.isfinite(legacy.predict(graphs)))
    with pytest.raises(FileNotFoundError, match="no pretrained"):
        load_pretrained("nope")


@pytest.mark.slow
def test_held_out_model_report_with_xgb(tmp_path: Path, smoke) -> None:
    from cost_model.training import train_cost_model

    metrics = train_cost_model(
        SMOKE_TRACES, tmp_path / "out", ["model_c"], SMALL.replace(num_steps=100), dataset=smoke
    )
    assert metrics["held_out_models"] == ["model_c"] and metrics["test"]["tasks"] == 2
    assert metrics["train"]["models"] == ["model_a", "model_b"]
    for who in ("gnn", "xgb"):
        for name in ("pairwise_accuracy", "kendall_tau", "top1_peak", "top5_peak"):
            assert metrics[who][name] is not None, (who, name)
        assert 0 < metrics[who]["top1_peak"] <= 1
    assert metrics["gnn"]["mape"] is not None and metrics["xgb"]["mape"] is None
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["gnn"] == metrics["gnn"]
    assert (tmp_path / "out" / "params.npz").exists()


# ------------------------------------------------------------------------ MetaSchedule


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_gnn_guides_metaschedule_tuning(tmp_path: Path) -> None:
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from ago_search.measure import register_cpu_tensor_intrinsics
    from ago_search.schedule.tasks import workload_module
    from cost_model.factory import make_cost_model
    from cost_model.ms_adapter import GNNCostModel
    from cost_model.smoke_data import SMOKE_TARGET, _in_process_builder_and_runner, _matmul

    target = tvm.target.Target(SMOKE_TARGET)
    register_cpu_tensor_intrinsics(target)
    mod = workload_module(_matmul(32, 32, 32))
    model = make_cost_model("gnn", online_steps=3, xgb_warmup_samples=4)
    assert isinstance(model, GNNCostModel)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    builder, runner = _in_process_builder_and_runner(artifacts)
    db = ms.tune_tir(
        mod,
        target,
        str(tmp_path / "work"),
        max_trials_global=8,
        num_trials_per_iter=4,
        builder=builder,
        runner=runner,
        cost_model=model,
        strategy=ms.search_strategy.EvolutionarySearch(population_size=16),
        num_tuning_cores=1,
        seed=0,
    )
    assert len(db.get_all_tuning_records()) == 8
    assert model.calls["predict"] >= 1 and model.calls["update"] == 2
    assert sum(len(v) for v in model._seen.values()) == 8  # every ok result kept
    # higher is better, in (0, 1], best candidate 1
    records = db.get_all_tuning_records()
    context = ms.TuneContext(mod=mod, target=target, task_name="check", num_threads=1)
    candidates = [r.as_measure_candidate() for r in records]
    scores = model.predict(context, candidates)
    assert scores.shape == (8,) and np.all((scores > 0) & (scores <= 1)) and scores.max() == 1
    # the online XGB has learnt from the 8 measurements and has its share of the ranking
    assert model.xgb_weight(context) == pytest.approx(8 / (8 + model.blend_trials))
    alone = GNNCostModel(model.predictor, blend_trials=None).predict(context, candidates)
    assert not np.allclose(np.log(alone), np.log(scores))
    # the XGB reads the store columns of the GNN's features: what its own extractor gives
    inst = model._xgb._inst
    assert np.ptp(inst.predict(context, candidates)) > 0  # a ranking, not a constant
    np.testing.assert_allclose(
        model._xgb_predict(model._store_parts(context, candidates)),
        inst.predict(context, candidates),
        rtol=1e-5,
        atol=1e-7,
    )
    # the fine-tuned GNN ranks only the task it was fine-tuned on; a task the run has not
    # measured is ranked by the model as loaded (fine-tuning on one task's rounds made the
    # next task's first round worse)
    graphs = [p.graph() for p in model._store_parts(context, candidates)]
    tuned, base = model.predictor.predict(graphs), model._base.predict(graphs)
    assert not np.allclose(tuned, base)  # fine-tuning changed the model, not the base
    np.testing.assert_allclose(
        base, GNNCostModel(blend_trials=None).predictor.predict(graphs), rtol=1e-5
    )
    unseen = ms.TuneContext(
        mod=workload_module(_matmul(48, 32, 32)), target=target, task_name="new", num_threads=1
    )
    assert model.xgb_weight(unseen) == 0.0
    np.testing.assert_allclose(
        np.log(model.predict(unseen, candidates)), -(base - base.min()), rtol=1e-5, atol=1e-6
    )
    # an XGB short of its warm-up samples (it would predict noise) has no say
    cold = GNNCostModel(model.predictor)  # warm-up: 100 samples
    cold._measured = dict(model._measured)
    cold._xgb._inst.booster = inst.booster
    cold._xgb._inst.data_size = inst.data_size  # 8
    assert cold.xgb_weight(context) == 0.0
    cold._xgb._inst.num_warmup_samples = 8
    assert cold.xgb_weight(context) > 0
    model.save(str(tmp_path / "saved"))
    fresh = GNNCostModel()
    fresh.load(str(tmp_path / "saved"))
    assert fresh.predictor.config == model.predictor.config


@pytest.mark.slow
def test_feature_cache_reuses_features_and_ignores_stale_files(tmp_path: Path, smoke) -> None:
    from cost_model.feature_cache import FeatureCache
    from cost_model.input_pipeline import load_dataset

    class NoFeaturizer:
        def parts_from_traces(self, workload, traces):
            raise AssertionError("featurised again despite the cache")

    cache = FeatureCache(tmp_path / "cache")
    first = load_dataset(SMOKE_TRACES, cache=cache)
    assert len(list(cache.directory.glob("*.npz"))) == len(first.tasks)
    again = load_dataset(SMOKE_TRACES, cache=cache, featurizer=NoFeaturizer())
    assert [t.task_key for t in again.tasks] == [t.task_key for t in first.tasks]
    for a, b in zip(first.tasks, again.tasks, strict=True):
        np.testing.assert_array_equal(a.latencies, b.latencies)
        for ga, gb in zip(a.graphs, b.graphs, strict=True):
            np.testing.assert_array_equal(ga.node_features, gb.node_features)
            np.testing.assert_array_equal(ga.senders, gb.senders)
            np.testing.assert_array_equal(ga.globals, gb.globals)
    # and the same graphs as without a cache
    plain = load_dataset(SMOKE_TRACES, cache=False)
    np.testing.assert_array_equal(
        plain.tasks[0].graphs[0].node_features, first.tasks[0].graphs[0].node_features
    )
    # a file written under another tag (feature version, TVM, target) is not trusted
    key = first.tasks[0].task_key
    assert cache.load(key, "v0-stale") == {}
    with pytest.raises(AssertionError, match="featurised again"):
        cache.save(key, "v0-stale", {})
        load_dataset(SMOKE_TRACES, cache=cache, featurizer=NoFeaturizer())


@pytest.mark.slow
def test_xgb_baseline_on_graph_features_equals_metaschedule_on_replayed_traces(smoke) -> None:
    """The baseline feeds XGBModel the store rows of our graphs; MetaSchedule's own path
    (replay every trace, PerStoreFeature) must give the same model and predictions."""
    import tvm
    from tvm.s_tir import meta_schedule as ms

    from cost_model.features import Featurizer, replay_trace
    from cost_model.input_pipeline import Dataset
    from cost_model.xgb_baseline import fit_xgb, xgb_predictions

    train, test = Dataset(smoke.tasks[:4], smoke.target), Dataset(smoke.tasks[4:], smoke.target)
    ours = [p.score for p in xgb_predictions(fit_xgb(train, seed=0, variant="xgb-ms"), test)]

    featurizer = Featurizer(json.loads(smoke.target))

    def candidates(task):
        out = []
        for trace in task.traces:
            sch = replay_trace(task.workload, trace)
            args = ms.arg_info.ArgInfo.from_prim_func(sch.mod["main"])
            out.append(ms.MeasureCandidate(sch, args))
        return out

    np.random.seed(0)
    model = ms.cost_model.XGBModel(num_warmup_samples=0, adaptive_training=True, verbose_eval=0)
    for i, task in enumerate(train.tasks):
        model.last_train_size = 0 if i == len(train.tasks) - 1 else 1 << 60
        results = [
            ms.runner.RunnerResult([tvm.tirx.FloatImm("float64", float(s))], None)
            for s in task.latencies
        ]
        model.update(featurizer.context(task.workload), candidates(task), results)
    for task, score in zip(test.tasks, ours, strict=True):
        theirs = -np.asarray(model.predict(featurizer.context(task.workload), candidates(task)))
        np.testing.assert_allclose(score, theirs, rtol=1e-5, atol=1e-6)


def test_lambda_ranking_loss_weighs_the_top_of_the_ranking() -> None:
    import jax.numpy as jnp

    from cost_model.train import ranking_loss

    y = jnp.asarray([0.0, 0.5, 1.0, 1.5, 2.0, 0.0], jnp.float32)
    task = jnp.asarray([0, 0, 0, 0, 0, -1], jnp.int32)  # the last is padding
    right = y * 3.0
    top_swapped = right.at[0].set(1.6)  # the best now ranked 2nd
    bottom_swapped = right.at[4].set(2.9)  # the worst now ranked 3rd
    for scale in (0.0, 2.0):
        perfect = float(ranking_loss(right, y, task, scale))
        reversed_ = float(ranking_loss(-right, y, task, scale))
        assert np.isfinite(perfect) and perfect < reversed_
    # with LambdaRank weights, getting the best candidate wrong costs more than the worst
    lam_top = float(ranking_loss(top_swapped, y, task, 2.0))
    lam_bottom = float(ranking_loss(bottom_swapped, y, task, 2.0))
    assert lam_top > lam_bottom
    # so it does with weights from the gap in relative speed alone (no rank discount)
    gap_top = float(ranking_loss(top_swapped, y, task, 2.0, False))
    gap_bottom = float(ranking_loss(bottom_swapped, y, task, 2.0, False))
    assert gap_top > gap_bottom
    # which plain pairs do not: there the bottom mistake costs more
    plain = [float(ranking_loss(p, y, task)) for p in (top_swapped, bottom_swapped)]
    assert plain[0] < plain[1]


@pytest.mark.slow
def test_task_context_readout_compares_candidates_within_their_task(smoke) -> None:
    """With task_context, a candidate's score depends on the other candidates of its task
    in the batch, never on another task's; without it, on neither."""
    import jax.numpy as jnp

    from cost_model.features import FeatureStats, pad_batch
    from cost_model.train import create_model, predict_normalised

    stats = FeatureStats.fit(smoke.all_graphs(), 4.0)
    a, b = ([stats.apply(g) for g in t.graphs[:4]] for t in smoke.tasks[:2])
    other_b = [stats.apply(g) for g in smoke.tasks[2].graphs[:4]]
    task = jnp.asarray([0] * 4 + [1] * 4 + [-1], jnp.int32)

    def scores(model, graphs):
        return np.asarray(model(pad_batch(graphs, 4096, 8192, 9), task))

    for context in (True, False):
        model = create_model(SMALL.replace(task_context=context))
        base = scores(model, a + b)
        # task 1's candidates replaced: task 0's scores stay
        np.testing.assert_allclose(scores(model, a + other_b)[:4], base[:4], rtol=1e-5)
        # one candidate of task 0 replaced: the other three move only with the context
        changed = scores(model, [b[0]] + a[1:] + b)
        moved = np.abs(changed[1:4] - base[1:4]).max()
        assert (moved > 1e-4) if context else (moved < 1e-5)
        # at inference (no task ids), every real graph is of one task
        np.testing.assert_allclose(
            np.asarray(model(pad_batch(a, 4096, 8192, 5)))[:4], base[:4], rtol=1e-5
        )
        # and predicting a task's candidates scores them together, however many
        np.testing.assert_allclose(predict_normalised(model, a, batch_size=2), base[:4], rtol=1e-5)
