"""Pure decision logic: scripted sequences and hypothesis properties."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from mlflow_persist._policy.policy import (
    PERFORMANCE,
    PERIODIC,
    PerformanceTracker,
    PeriodicSchedule,
    VersionSummary,
    decide_save,
    disk_pressure_order,
    is_better,
    retention_deletions,
    select_best,
)

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)


def test_scripted_losses_save_exactly_on_improvement_beyond_min_delta() -> None:
    tracker = PerformanceTracker("loss", "min", min_delta=0.05)
    schedule = PeriodicSchedule()
    losses = [1.0, 0.98, 0.94, 0.95, 0.80, 0.76, 0.7, 0.7, 0.64, 2.0]
    saved = [step for step, loss in enumerate(losses) if decide_save(tracker, schedule, step, loss).save]
    # 1.0 first; 0.94 (not > 0.05 better than 1.0: 0.06 is) ... computed by hand:
    # best 1.0 -> 0.94 (gain .06) -> 0.80 (.14) -> 0.76 no (.04) -> 0.7 (.1) -> 0.64 (.06)
    assert saved == [0, 2, 4, 6, 8]
    assert tracker.best_value == 0.64


def test_max_mode_and_relative_delta() -> None:
    tracker = PerformanceTracker("accuracy", "max", min_delta=0.1, min_delta_mode="rel")
    schedule = PeriodicSchedule()
    decisions = [decide_save(tracker, schedule, i, v).save for i, v in enumerate([0.5, 0.54, 0.56, 0.62])]
    assert decisions == [True, False, True, True]  # 0.56 > 0.55 ; 0.62 > 0.616


def test_periodic_every_steps_keeps_its_own_rhythm() -> None:
    tracker = PerformanceTracker("loss", "min")
    schedule = PeriodicSchedule(every_steps=10)
    schedule.start(0, now=0.0)
    categories = {}
    for step in range(1, 41):
        value = 1.0 / step if step == 10 else 5.0  # an improvement exactly when a periodic save is due
        decision = decide_save(tracker, schedule, step, value)
        if decision.save:
            categories[step] = decision.category
            if decision.category == PERIODIC:
                schedule.taken(step, now=float(step))
    assert categories[1] == PERFORMANCE
    assert categories[10] == PERFORMANCE
    assert categories[11] == PERIODIC  # postponed one step, not skipped
    assert [s for s, c in categories.items() if c == PERIODIC] == [11, 20, 30, 40]


def test_periodic_every_minutes_is_marked_by_the_clock_passed_in() -> None:
    schedule = PeriodicSchedule(every_seconds=60)
    schedule.start(0, now=1000.0)
    assert not schedule.check_time(now=1059.0)
    assert not schedule.due(5)
    assert schedule.check_time(now=1060.0)
    assert schedule.due(5)
    schedule.taken(5, now=1061.0)
    assert not schedule.due(6)


@given(st.lists(finite, min_size=1, max_size=60), st.floats(min_value=0, max_value=10), st.sampled_from(["min", "max"]))
def test_performance_save_iff_beats_running_best(values: list[float], delta: float, mode: str) -> None:
    tracker = PerformanceTracker("m", mode, min_delta=delta)  # type: ignore[arg-type]
    schedule = PeriodicSchedule()
    best = None
    for step, value in enumerate(values):
        expected = best is None or (value < best - delta if mode == "min" else value > best + delta)
        decision = decide_save(tracker, schedule, step, value)
        assert decision.save == expected
        if expected:
            best = value
            assert decision.category == PERFORMANCE
    assert tracker.best_value == best


versions_strategy = st.lists(
    st.tuples(
        st.sampled_from(["performance", "periodic", "final", "legacy", "rollback"]),
        st.one_of(st.none(), finite),
        st.booleans(),
    ),
    min_size=1,
    max_size=40,
).map(lambda rows: [VersionSummary(i + 1, c, v, i, corrupt and i % 5 == 0) for i, (c, v, corrupt) in enumerate(rows)])


@settings(max_examples=300)
@given(versions_strategy, st.integers(1, 5), st.integers(1, 5), st.integers(1, 3), st.sampled_from(["min", "max"]))
def test_retention_invariants(
    versions: list[VersionSummary], keep_best: int, keep_periodic: int, keep_final: int, mode: str
) -> None:
    best = select_best(versions, mode)  # type: ignore[arg-type]
    best_version = best.version if best else None
    doomed = set(retention_deletions(versions, mode, keep_best, keep_periodic, keep_final, best_version))  # type: ignore[arg-type]
    newest = max(v.version for v in versions)
    assert newest not in doomed
    assert best_version not in doomed
    kept = [v for v in versions if v.version not in doomed]
    valid_perf = [v for v in versions if v.category == "performance" and not v.corrupt]
    assert len([v for v in kept if v.category == "performance" and not v.corrupt]) >= min(keep_best, len(valid_perf))
    # the newest `keep_periodic` valid periodic versions always survive
    periodic = sorted((v.version for v in versions if v.category == "periodic" and not v.corrupt), reverse=True)
    assert not set(periodic[:keep_periodic]) & doomed
    # never more than the windows (plus the protected ones) remain
    assert len([v for v in kept if v.category == "periodic" and not v.corrupt]) <= keep_periodic + 2
    # legacy, rollback and corrupt versions are the operator's to remove
    assert not {v.version for v in versions if v.category in ("legacy", "rollback") or v.corrupt} & doomed
    # the top keep_best performance values survive
    ranked = sorted(
        valid_perf,
        key=lambda v: (math.inf if v.value is None else (v.value if mode == "min" else -v.value), -v.version),
    )
    assert not {v.version for v in ranked[:keep_best]} & doomed


@given(versions_strategy, st.sampled_from(["min", "max"]))
def test_select_best_is_the_optimum_of_valid_candidates(versions: list[VersionSummary], mode: str) -> None:
    best = select_best(versions, mode)  # type: ignore[arg-type]
    candidates = [
        v
        for v in versions
        if v.category in ("performance", "legacy", "rollback") and not v.corrupt and v.value is not None
    ]
    if not candidates:
        assert best is None
        return
    assert best in candidates
    for other in candidates:
        assert not is_better(other.value, best.value, mode)  # type: ignore[arg-type]


@given(versions_strategy, st.sampled_from(["min", "max"]))
def test_disk_pressure_order_never_touches_best_or_newest(versions: list[VersionSummary], mode: str) -> None:
    best = select_best(versions, mode)  # type: ignore[arg-type]
    order = disk_pressure_order(versions, mode, best.version if best else None)  # type: ignore[arg-type]
    assert max(v.version for v in versions) not in order
    if best:
        assert best.version not in order
    categories = [next(v.category for v in versions if v.version == n) for n in order]
    # periodic first, then final, then performance; legacy and rollback never
    rank = {"periodic": 0, "final": 1, "performance": 2}
    assert all(c in rank for c in categories)
    assert [rank[c] for c in categories] == sorted(rank[c] for c in categories)
    periodic = [n for n, c in zip(order, categories) if c == "periodic"]
    assert periodic == sorted(periodic)  # oldest first


def test_degradation_streak_counts_consecutive_worse_steps() -> None:
    tracker = PerformanceTracker("loss", "min")
    tracker.accept_best(0, 1.0)
    streaks = [tracker.update_degradation(v, 0.1, "rel") for v in [1.2, 1.3, 1.05, 1.2, 1.2]]
    assert streaks == [1, 2, 0, 1, 2]


def test_best_compares_only_values_of_the_same_monitor_and_skips_superseded() -> None:
    versions = [
        VersionSummary(1, "legacy", 87.3, None, monitor="performance_score"),
        VersionSummary(2, "performance", 0.5, 10, monitor="loss"),
        VersionSummary(3, "performance", 0.4, 20, monitor="loss", superseded=True),
        VersionSummary(4, "performance", 0.45, 30, monitor="loss"),
    ]
    assert select_best(versions, "min", "loss").version == 4
    assert select_best(versions, "max", "performance_score").version == 1
    assert select_best(versions[:1], "min", "loss") is None
    assert 3 not in retention_deletions(versions, "min", keep_best=1, keep_periodic=1, keep_final=1, best_version=4)
    assert 3 not in disk_pressure_order(versions, "min", best_version=4)


outcomes = st.lists(st.tuples(finite, st.sampled_from(["saved", "failed", "dropped", "later"])), max_size=60)


@given(outcomes, st.sampled_from(["min", "max"]), st.randoms(use_true_random=False))
@settings(max_examples=200, deadline=None)
def test_best_rests_only_on_stored_or_in_flight_values(
    sequence: list[tuple[float, str]], mode: str, rng: object
) -> None:
    """No phantom best: after every settlement, the tracker's best is the best of the values whose save was
    stored plus those still in flight; a failed or dropped save leaves no trace."""
    tracker = PerformanceTracker("loss", mode)  # type: ignore[arg-type]
    schedule = PeriodicSchedule()
    stored: list[float] = []
    in_flight: dict[int, float] = {}
    pending: list[tuple[int, str]] = []
    for step, (value, outcome) in enumerate(sequence):
        decision = decide_save(tracker, schedule, step, value)
        if decision.category == PERFORMANCE:
            in_flight[step] = value
            pending.append((step, outcome if outcome != "later" else rng.choice(["saved", "failed"])))  # type: ignore[attr-defined]
        if pending and (outcome != "later" or rng.random() < 0.3):  # type: ignore[attr-defined]
            settled_step, result = pending.pop(rng.randrange(len(pending)))  # type: ignore[attr-defined]
            tracker.settle(settled_step, stored=result == "saved")
            value_of = in_flight.pop(settled_step)
            if result == "saved":
                stored.append(value_of)
        held = stored + list(in_flight.values())
        expected = (min(held) if mode == "min" else max(held)) if held else None
        assert tracker.best_value == expected


def test_a_failed_improvement_does_not_block_a_smaller_later_one() -> None:
    tracker = PerformanceTracker("loss", "min")
    schedule = PeriodicSchedule()
    assert decide_save(tracker, schedule, 1, 1.0).category == PERFORMANCE
    tracker.settle(1, stored=True)
    assert decide_save(tracker, schedule, 2, 0.5).category == PERFORMANCE
    tracker.settle(2, stored=False)  # that save failed: 0.5 is in no version
    assert tracker.best_value == 1.0
    assert decide_save(tracker, schedule, 3, 0.8).category == PERFORMANCE  # was skipped before (phantom 0.5)


def test_version_and_model_descriptions_read_at_a_glance() -> None:
    from mlflow_persist._store.descriptions import model_description, version_description

    assert (
        version_description("performance", 812, "loss", 0.398, int(2.4 * 2**20), previous=(0.412, 16))
        == "performance \u00b7 step 812 \u00b7 loss 0.398 (\u22123.4% vs v16) \u00b7 2.4 MB"
    )
    assert (
        version_description("periodic", 5, "reward", None, 2048, cut="00000003-ab")
        == "periodic \u00b7 step 5 \u00b7 2 KB \u00b7 system checkpoint 00000003-ab"
    )
    text = model_description("cnn")
    assert 'load_checkpoint("models:/cnn@best")' in text and "mlflow-persist history cnn" in text
