"""The overhead budget (pure): a token bucket of save work per second of wall time, with a bounded delay."""

from __future__ import annotations

import pytest

from mlflow_persist._policy.overhead import OverheadBudget


def test_a_fresh_budget_allows_a_save_at_once_and_then_paces_saves_to_the_share() -> None:
    budget = OverheadBudget(max_overhead=0.05, burst=0.2)
    assert budget.next_performance_save(100.0) == 100.0
    budget.charge(0.5, 100.0)  # 0.2 of credit, 0.5 spent: 0.3 owed, at 0.05 s per s of wall time
    assert budget.next_performance_save(100.0) == pytest.approx(106.0)
    assert budget.next_performance_save(103.0) == pytest.approx(106.0)  # time passing pays it back
    assert budget.next_performance_save(106.0) == pytest.approx(106.0)


def test_credit_saved_up_is_capped_by_the_burst() -> None:
    budget = OverheadBudget(max_overhead=0.1, burst=0.2)
    budget.charge(0.0, 0.0)
    budget.charge(0.5, 1000.0)  # a long quiet spell earns at most 0.2 s of credit
    assert budget.next_performance_save(1000.0) == pytest.approx(1003.0)


def test_the_delay_is_bounded_so_the_newest_best_always_lands() -> None:
    budget = OverheadBudget(max_overhead=0.01, burst=0.0, max_delay=60.0)
    budget.charge(100.0, 0.0)
    assert budget.next_performance_save(0.0) == pytest.approx(60.0)


def test_the_measured_overhead_is_the_share_of_wall_time_charged() -> None:
    budget = OverheadBudget(max_overhead=0.05)
    budget.charge(0.1, 10.0)
    budget.charge(0.3, 20.0)
    assert budget.overhead(30.0) == pytest.approx(0.4 / 20.0)


@pytest.mark.parametrize("share", [0.0, -0.1, 1.5])
def test_a_share_outside_0_to_1_is_refused(share: float) -> None:
    with pytest.raises(ValueError, match="max_overhead"):
        OverheadBudget(max_overhead=share)
