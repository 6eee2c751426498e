"""Monitor smoothing: property tests of the pure smoother against independent formulas, and the handle
deciding `best` on the smoothed value, evaluating on its own schedule, and tagging both values."""

from __future__ import annotations

import logging
import math
import statistics
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import mlflow_persist as mp
from mlflow_persist._policy.smoothing import MonitorSmoother
from mlflow_persist._policy.versions import tag
from mlflow_persist.testing import MemoryStore

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
values_lists = st.lists(finite, min_size=1, max_size=60)


@given(values_lists, st.floats(min_value=0.01, max_value=1.0))
def test_ema_matches_its_closed_form(values: list[float], alpha: float) -> None:
    smoother = MonitorSmoother("ema", ema_alpha=alpha)
    outputs = [smoother.update(v) for v in values]
    n = len(values) - 1
    closed = (1 - alpha) ** n * values[0] + sum(alpha * (1 - alpha) ** (n - k) * values[k] for k in range(1, n + 1))
    assert outputs[-1] == pytest.approx(closed, rel=1e-9, abs=1e-6)
    assert min(values) - 1e-6 <= outputs[-1] <= max(values) + 1e-6


@given(values_lists, st.integers(min_value=1, max_value=10))
def test_window_mean_and_median_match_numpy_over_the_last_values(values: list[float], window: int) -> None:
    mean, median = MonitorSmoother("window", window=window), MonitorSmoother("window_median", window=window)
    alias = MonitorSmoother("window_mean", window=window)
    for i, value in enumerate(values):
        m, d = mean.update(value), median.update(value)
        assert alias.update(value) == m
        if i + 1 < window:
            assert m is None and d is None  # no decision on a partial window
            continue
        last = values[i + 1 - window : i + 1]
        assert m == pytest.approx(float(np.mean(last)), rel=1e-9, abs=1e-6)
        assert d == pytest.approx(float(np.median(last)), rel=1e-9, abs=1e-6)


@given(values_lists, st.sampled_from(["none", "ema", "window", "window_median"]), st.data())
def test_a_restored_smoother_continues_the_same_curve(values: list[float], kind: str, data: Any) -> None:
    split = data.draw(st.integers(min_value=0, max_value=len(values)))
    whole = MonitorSmoother(kind, ema_alpha=0.3, window=4)
    expected = [whole.update(v) for v in values]
    first = MonitorSmoother(kind, ema_alpha=0.3, window=4)
    head = [first.update(v) for v in values[:split]]
    resumed = MonitorSmoother(kind, ema_alpha=0.3, window=4)
    resumed.load_state_dict(first.state_dict())
    assert head + [resumed.update(v) for v in values[split:]] == expected


@given(st.lists(st.one_of(finite, st.just(math.nan), st.just(math.inf)), min_size=1, max_size=40))
def test_non_finite_values_are_skipped(values: list[float]) -> None:
    smoother = MonitorSmoother("ema", ema_alpha=0.5)
    clean = MonitorSmoother("ema", ema_alpha=0.5)
    for value in values:
        out = smoother.update(value)
        if math.isfinite(value):
            assert out == clean.update(value)
        else:
            assert out is None


def test_state_saved_under_other_settings_starts_a_new_curve() -> None:
    a = MonitorSmoother("window", window=3)
    for v in (1.0, 2.0, 3.0):
        a.update(v)
    b = MonitorSmoother("window", window=5)
    b.load_state_dict(a.state_dict())
    assert b.update(10.0) is None


def test_bad_settings_are_refused_with_the_field_name() -> None:
    with pytest.raises(mp.ConfigError, match="monitor_smoothing"):
        mp.PersistConfig(monitor_smoothing="kalman")
    with pytest.raises(mp.ConfigError, match="monitor_ema_alpha"):
        mp.PersistConfig(monitor_ema_alpha=0)


# ------------------------------------------------------------------------------------------ in the handle


def _persist(store: MemoryStore, **values: Any) -> mp.Persistence:
    base = dict(
        tracking_uri="memory://",
        keep_best=100,
        keep_periodic=100,
        keep_episode=2,
        log_system_metrics=False,
        min_free_disk_mb=0,
        min_free_disk_percent=0,
        scheduler_interval_seconds=0.05,
    )
    base.update(values)
    return mp.Persistence(mp.PersistConfig(**base), store=store, install_signal_handlers=False)


def test_best_is_decided_on_the_window_median_not_on_one_lucky_minibatch() -> None:
    store = MemoryStore()
    rng = np.random.default_rng(0)
    raw = [1.0 + 0.01 * rng.standard_normal() for _ in range(40)]
    raw[25] = 0.01  # one lucky minibatch
    with _persist(store, monitor_smoothing="window_median", monitor_window=5) as persist:
        handle = persist.track("net", torch.nn.Linear(2, 1))
        for value in raw:
            handle.step(loss=value)
            assert persist.flush(timeout=10)
    best = store.alias_version("net")
    medians = [statistics.median(raw[i - 4 : i + 1]) for i in range(4, len(raw))]
    assert best.value == pytest.approx(min(medians))
    assert best.value > 0.5  # the outlier never became `best`
    assert float(best.tags[tag("raw_value")]) == raw[best.step - 1] and best.tags[tag("smoothing")] == "window_median"
    assert float(best.tags[tag("smoothed_value")]) == best.value
    run = next(iter(store.runs.values()))
    assert [v for _, v, _ in run.metrics["loss"]] == raw
    assert [v for _, v, _ in run.metrics["loss_smoothed"]] == pytest.approx(medians)


def test_evaluate_runs_every_n_steps_and_its_value_is_the_monitor() -> None:
    store = MemoryStore()
    calls: list[int] = []
    scores = iter([0.9, 0.8, 0.85, 0.5, 0.6])

    def evaluate() -> float:
        calls.append(handle.current_step)
        return next(scores)

    with _persist(store, monitor="val_loss") as persist:
        handle = persist.track("net", torch.nn.Linear(2, 1), evaluate=evaluate, evaluate_every_steps=4)
        for i in range(1, 21):
            handle.step(loss=1.0 / i, val_loss=123.0)  # a trained val_loss is only logged
            assert persist.flush(timeout=10)  # each save registered before the next (none superseded)
    assert calls == [4, 8, 12, 16, 20]
    performance = [(v.step, v.value) for v in store.list_versions("net") if v.category == "performance"]
    assert performance == [(4, 0.9), (8, 0.8), (16, 0.5)]
    assert store.alias_version("net").value == 0.5


def test_a_failing_evaluation_never_stops_training() -> None:
    store = MemoryStore()

    def evaluate() -> float:
        raise RuntimeError("validation data missing")

    with _persist(store) as persist:
        handle = persist.track("net", torch.nn.Linear(2, 1), evaluate=evaluate, evaluate_every_steps=2)
        for _ in range(6):
            handle.step(loss=1.0)
        assert handle.evaluation_failures == 3 and handle.current_step == 6
    with pytest.raises(mp.PersistError, match="evaluate_every_steps"):
        with _persist(MemoryStore()) as persist:
            persist.track("other", torch.nn.Linear(2, 1), evaluate=evaluate)


def test_episode_saves_have_their_own_category_monitor_and_window(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryStore()
    caplog.set_level(logging.INFO, logger="mlflow_persist")
    with _persist(store) as persist:
        handle = persist.track("net", torch.nn.Linear(2, 1))
        handle.step(loss=0.5)
        for score in (1.0, 0.4, 2.0):
            handle.step(loss=0.9)
            handle.save("episode", value=score, monitor="episode/reward", wait=True, timeout=10)
        handle.save("performance", wait=True, timeout=10)  # a forced save of a worse value
    episodes = [v for v in store.list_versions("net") if v.category == "episode"]
    assert [(v.monitor, v.value) for v in episodes] == [("episode/reward", 0.4), ("episode/reward", 2.0)]
    assert store.alias_version("net").value == 0.5  # episode scores never move `best`
    lines = [r.getMessage() for r in caplog.records if "saved v" in r.getMessage()]
    assert any("episode/reward 2" in line and "(episode," in line for line in lines)
    worse = [line for line in lines if "(performance," in line][-1]
    assert "->" not in worse and "not better" in worse
