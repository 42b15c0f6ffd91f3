"""The bench's time budget (stages/measure/budget.py): a fast machine runs what params ask; a
slow one runs fewer rounds and shorter long sessions, never under the floors, and says so."""

from __future__ import annotations

import pytest

from stages.measure import budget
from stages.measure.budget import MIN_LONG_SESSION, MIN_REPEATS
from stages.report.class_page import budget_cut

# a first round of 20 s; two long-session variants of 1 s start-up and 10 ms a call, one slot
LONG = [(1.0, 0.01), (1.0, 0.01)]


def test_a_machine_within_the_budget_runs_what_params_ask() -> None:
    # rest: 3 rounds x 20 s + 2 x (1 + 1000 x 0.01) s = 82 s; with 30 s so far, 112 s < 180 s
    plan = budget.fit(4, 1000, 3.0, 30.0, 20.0, LONG, 1)
    assert (plan.repeats, plan.long_session, plan.cut) == (4, 1000, False)
    assert plan.projected_s == pytest.approx(112.0)
    assert plan.record() == {
        "repeats": 4,
        "long_session": 1000,
        "budget_minutes": 3.0,
        "projected_minutes": 1.9,
    }


def test_a_slow_machine_scales_rounds_and_calls_by_the_share_left() -> None:
    # rest as asked: 8 x 60 s + (2 + 2000 x 0.04) s = 562 s; 120 s left of 300: share 0.21
    long = [(1.0, 0.02), (1.0, 0.02)]
    plan = budget.fit(9, 2000, 5.0, 180.0, 60.0, long, 1)
    assert plan.cut and plan.projected_s == pytest.approx(742.0)
    assert plan.repeats == MIN_REPEATS  # 1 + floor(8 x 0.21) = 2: the floor holds
    assert plan.long_session == int(2000 * 120 / 562)  # 427
    record = plan.record()
    assert record["asked"] == {"repeats": 9, "long_session": 2000}
    assert record["repeats"] == 3 and record["projected_minutes"] == 12.4


def test_the_floors_hold_however_slow_the_machine_and_never_raise_what_params_ask() -> None:
    plan = budget.fit(4, 1000, 1.0, 600.0, 300.0, LONG, 2)  # over the budget already
    assert (plan.repeats, plan.long_session) == (MIN_REPEATS, MIN_LONG_SESSION)
    small = budget.fit(2, 50, 1.0, 600.0, 300.0, LONG, 2)  # params below the floors
    assert (small.repeats, small.long_session, small.cut) == (2, 50, False)


def test_no_budget_or_nothing_left_to_cut_runs_as_asked() -> None:
    assert not budget.fit(4, 1000, None, 1e6, 1e3, LONG, 1).cut
    assert not budget.fit(1, 0, 1.0, 1e6, 1e3, LONG, 1).cut
    assert "budget_minutes" not in budget.fit(4, 1000, None, 1.0, 1.0, LONG, 1).record()


def test_the_report_says_what_the_budget_cut_and_nothing_when_it_cut_nothing() -> None:
    long = [(1.0, 0.02), (1.0, 0.02)]
    cut = budget.fit(9, 2000, 5.0, 180.0, 60.0, long, 1)
    text = budget_cut(cut.record())
    assert "ran 3 rounds and long sessions of 427 calls" in text
    assert "asks 9 and 2000" in text and "~12.4 min" in text and "budget_minutes` 5" in text
    assert budget_cut(budget.fit(4, 1000, 3.0, 30.0, 20.0, LONG, 1).record()) == ""
    assert cut.message("bench@low").startswith("bench@low: as params.yaml asks, this machine")
    assert "3 rounds instead of 9, long sessions of 427 calls instead of 2000" in cut.message("x")


def test_seconds_per_call_reads_a_timing_run() -> None:
    run = {"cold_start_ms": 500.0, "total_ms": [10.0, 30.0]}
    assert budget.seconds_per_call(run) == (0.5, 0.02)
