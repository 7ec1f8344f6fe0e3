"""Rounds paced to the deadline: a run learns what a round costs and starts none it cannot end."""

from __future__ import annotations

import time

import pytest

from ago_search.schedule.strategy import RoundPace, TrialBudget


def _round(budget: TrialBudget, search_s: float, trials_s: float, wanted: int) -> int:
    """One round as MetaSchedule runs it: asked, searched, cut, built and measured."""
    assert not budget.exhausted()
    time.sleep(search_s)
    taken = budget.take(wanted)
    time.sleep(trials_s * taken)
    return taken


def test_a_round_is_cut_to_the_time_left_and_none_starts_that_cannot_end():
    budget = TrialBudget(remaining=1000, deadline=time.monotonic() + 1.0)
    assert _round(budget, 0.05, 0.02, 4) == 4  # nothing learnt yet: the round as asked
    assert 0.03 < budget.pace.search_s < 0.2
    taken = _round(budget, 0.05, 0.02, 1000)  # (its start learnt the candidates' pace)
    assert 0.015 < budget.pace.trial_s < 0.1
    assert 5 < taken < 60  # ~0.9 s left after its search, 0.02 s a candidate
    # what is left now holds no round (search + one candidate): none starts
    time.sleep(max(0.0, budget.deadline - time.monotonic() - 0.5 * budget.pace.search_s))
    assert budget.exhausted()


def test_the_pace_carries_over_to_the_next_run_and_through_json():
    first = TrialBudget(remaining=100, deadline=time.monotonic() + 10.0)
    _round(first, 0.05, 0.01, 3)
    assert not first.exhausted()  # closes the round: its candidates' pace is learnt
    pace = RoundPace.from_json(first.pace.to_json())
    assert pace.search_s == first.pace.search_s and pace.trial_s == first.pace.trial_s
    # a run with less time left than one round of the pace learnt starts none at all
    second = TrialBudget(remaining=100, deadline=time.monotonic() + 0.03, pace=pace)
    assert second.exhausted()
    assert RoundPace.from_json(None).smallest_round_s() == 0.0


def test_the_mean_candidate_time_weighs_every_round_alike():
    """What a search's reserve is sized by before its first end-to-end timing: the session's
    mean, not the last rounds' pace, which swings with the tasks they tuned."""
    pace = RoundPace()
    assert pace.mean_trial_s() is None
    pace.add_trials(30.0, 10)  # a big conv's first round: 3 s a candidate
    pace.add_trials(3.0, 10)  # small kernels: 0.3 s
    pace.add_trials(1.0, 10)
    assert pace.trial_s < 0.9
    assert pace.mean_trial_s() == pytest.approx(34.0 / 30)
    again = RoundPace.from_json(pace.to_json())
    assert again.mean_trial_s() == pytest.approx(34.0 / 30) and again.trials == 30


def test_a_task_whose_search_fails_ends_without_stopping_the_run(tmp_path, caplog):
    """MetaSchedule's evolution can raise for one task (a Winograd rule on a block another rule
    inlined: "The block no longer exists"); that task's search ends (None: MetaSchedule's
    "task done") instead of taking the whole tuning run down."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.search_strategy import PySearchStrategy

    from ago_search.database.store import TuningDatabase
    from ago_search.schedule.strategy import SkipMeasured

    @derived_object
    class Failing(PySearchStrategy):
        def _initialize_with_tune_context(self, context):
            pass

        def pre_tuning(self, *args):
            pass

        def post_tuning(self):
            pass

        def generate_measure_candidates(self):
            raise RuntimeError("The block no longer exists in the IRModule")

        def notify_runner_results(self, *args):
            pass

        def clone(self):
            return Failing()

    strategy = SkipMeasured(Failing(), TuningDatabase(tmp_path / "t.db"), "dev", "task-1")
    with caplog.at_level("WARNING"):
        assert strategy.generate_measure_candidates() is None
    assert "task-1: the search failed" in caplog.text and "no longer exists" in caplog.text
