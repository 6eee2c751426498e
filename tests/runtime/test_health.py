"""`ModelHealth`: failure counts, the degraded state, one alert per streak of consecutive failures, the run's
health tag; and the same promises through a `Persistence` on a failing `MemoryStore`."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import pytest
import torch
from runtime_support import wait_until
from runtime_support2 import HEALTH, captured_logs, persistence

import mlflow_persist as mp
from mlflow_persist._observe.alerts import Alert, AlertDispatcher
from mlflow_persist._runtime.health import ModelHealth
from mlflow_persist.testing import MemoryStore


@dataclass
class Wiring:
    """What a ModelHealth talks to, recorded: alerts delivered to a sink, tags set, metrics recorded."""

    alerts: list[Alert] = field(default_factory=list)
    tags: list[dict[str, str]] = field(default_factory=list)
    metrics: list[tuple[int, str, float]] = field(default_factory=list)
    tag_error: Exception | None = None
    dispatcher: AlertDispatcher | None = None

    def set_tags(self, tags: Mapping[str, str]) -> None:
        if self.tag_error is not None:
            raise self.tag_error
        self.tags.append(dict(tags))

    def record(self, step: int, key: str, value: float) -> None:
        self.metrics.append((step, key, value))

    def delivered(self) -> list[Alert]:
        assert self.dispatcher is not None and self.dispatcher.wait_delivered(timeout=10)
        return list(self.alerts)


@pytest.fixture
def wiring() -> Iterator[Wiring]:
    w = Wiring()
    w.dispatcher = AlertDispatcher([w.alerts.append])
    yield w
    w.dispatcher.close()


def _health(w: Wiring, threshold: int = 3) -> ModelHealth:
    assert w.dispatcher is not None
    return ModelHealth("dqn", w.dispatcher, threshold, w.set_tags, w.record, HEALTH)


def test_failures_below_the_threshold_are_counted_but_raise_no_alert(wiring: Wiring) -> None:
    health = _health(wiring, threshold=3)
    health.record_failure("periodic", 10, OSError("disk gone"), attempts=1, final=False)
    health.record_failure("periodic", 11, OSError("disk gone"), attempts=2, final=True)
    assert (health.failures, health.consecutive_failures, health.degraded) == (2, 2, False)
    assert wiring.delivered() == [] and wiring.tags == []
    # every failure is recorded as the running total, at the failed save's step
    assert wiring.metrics == [(10, "checkpoint/failures", 1.0), (11, "checkpoint/failures", 2.0)]


def test_the_threshold_failure_alerts_once_tags_degraded_and_later_failures_stay_quiet(wiring: Wiring) -> None:
    health = _health(wiring, threshold=3)
    for step in range(1, 7):
        health.record_failure("performance", step, OSError(f"write failed at {step}"), attempts=1, final=False)
    alerts = wiring.delivered()
    assert len(alerts) == 1
    alert = alerts[0]
    assert alert.kind == "save_failures" and alert.model == "dqn"
    assert "3 consecutive" in alert.message and "write failed at 3" in alert.message
    assert alert.details["step"] == 3 and alert.details["category"] == "performance"
    assert wiring.tags == [{HEALTH: "degraded"}]  # set once, at the alert
    assert health.degraded and health.failures == 6 and health.consecutive_failures == 6


def test_a_success_clears_the_streak_tags_ok_and_a_new_streak_alerts_again(wiring: Wiring) -> None:
    health = _health(wiring, threshold=2)
    for step in (1, 2):
        health.record_failure("periodic", step, OSError("down"), attempts=None, final=False)
    assert health.degraded
    health.record_success()
    assert not health.degraded and health.consecutive_failures == 0 and health.failures == 2
    assert wiring.tags == [{HEALTH: "degraded"}, {HEALTH: "ok"}]
    health.record_success()  # already healthy: no tag written again
    assert wiring.tags == [{HEALTH: "degraded"}, {HEALTH: "ok"}]
    for step in (3, 4):
        health.record_failure("periodic", step, OSError("down again"), attempts=1, final=False)
    alerts = wiring.delivered()
    assert [a.details["step"] for a in alerts] == [2, 4]  # one alert per streak
    assert wiring.tags[-1] == {HEALTH: "degraded"}


def test_a_success_inside_a_streak_resets_the_consecutive_count(wiring: Wiring) -> None:
    health = _health(wiring, threshold=3)
    for step in (1, 2):
        health.record_failure("periodic", step, OSError("flaky"), attempts=1, final=False)
    health.record_success()  # never degraded: no tag
    for step in (3, 4):
        health.record_failure("periodic", step, OSError("flaky"), attempts=1, final=False)
    assert health.failures == 4 and health.consecutive_failures == 2 and not health.degraded
    assert wiring.delivered() == [] and wiring.tags == []


def test_credentials_in_the_error_never_reach_the_alert_or_the_log(wiring: Wiring) -> None:
    health = _health(wiring, threshold=1)
    error = ConnectionError("cannot reach https://trainer:hunter2@mlflow.example:5000/api (refused)")
    with captured_logs() as logs:
        health.record_failure("final", 7, error, attempts=3, final=True)
    alert = wiring.delivered()[0]
    assert "hunter2" not in alert.message and "hunter2" not in alert.details["error"]
    assert "mlflow.example" in alert.message  # the rest of the reason stays readable
    failed = [m for m in logs.messages() if "step 7 failed" in m]
    assert len(failed) == 1 and "hunter2" not in failed[0] and "giving up" in failed[0]


def test_a_health_tag_the_store_refuses_never_stops_the_alert_or_the_recovery(wiring: Wiring) -> None:
    wiring.tag_error = RuntimeError("tag store down")
    health = _health(wiring, threshold=1)
    health.record_failure("periodic", 1, OSError("boom"), attempts=1, final=False)  # must not raise
    assert health.degraded and [a.kind for a in wiring.delivered()] == ["save_failures"]
    health.record_success()  # must not raise either
    assert not health.degraded and wiring.tags == []


def test_concurrent_failures_from_two_threads_alert_exactly_once(wiring: Wiring) -> None:
    health = _health(wiring, threshold=5)
    start = threading.Barrier(4)

    def fail_many(offset: int) -> None:
        start.wait()
        for i in range(50):
            health.record_failure("periodic", offset + i, OSError("x"), attempts=1, final=False)

    threads = [threading.Thread(target=fail_many, args=(k * 100,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert health.failures == 200 and health.consecutive_failures == 200
    assert len(wiring.delivered()) == 1 and wiring.tags == [{HEALTH: "degraded"}]
    assert sorted(v for _, _, v in wiring.metrics) == [float(n) for n in range(1, 201)]


def test_through_persistence_repeated_save_failures_alert_and_a_good_save_recovers() -> None:
    store = MemoryStore()
    store.fail("write", times=None)  # every save attempt fails until heal()
    alerts: list[Alert] = []
    persist = persistence(store, failure_alert_threshold=3, save_retry_attempts=1, alert_sinks=[alerts.append])
    torch.manual_seed(0)
    handle = persist.track("dqn", torch.nn.Linear(2, 1))
    for i in range(2):
        handle.step(loss=1.0 / (i + 1))  # each an improvement: a save, which fails
        assert persist.flush(timeout=10)
    assert store.calls["write"] == 2 and not handle.degraded
    assert HEALTH not in store.runs[handle.run_id].tags
    handle.step(loss=0.2)
    assert persist.flush(timeout=10) and store.calls["write"] == 3
    assert wait_until(lambda: len(alerts) == 1)
    assert alerts[0].kind == "save_failures" and alerts[0].model == "dqn"
    assert store.runs[handle.run_id].tags[HEALTH] == "degraded" and handle.degraded

    store.heal()
    handle.step(loss=0.1)
    assert persist.flush(timeout=10)
    assert [v.step for v in store.list_versions("dqn")] == [4]
    assert store.runs[handle.run_id].tags[HEALTH] == "ok" and not handle.degraded
    failures = [value for _, value, _ in store.metric_history(handle.run_id, "checkpoint/failures")]
    assert failures[:3] == [1.0, 2.0, 3.0]
    with pytest.raises(mp.PersistError, match="3 checkpoint"):  # close() reports the three saves that gave up
        persist.close(final_checkpoints=False)
    assert len(alerts) == 1
