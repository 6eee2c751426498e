"""The training thread never waits untimed on the store (issue "Trust, round 3", defect 6), on `MemoryStore`.

With the store hanging, every call a training loop makes (`step`, `save`, `save_all`, a degradation revert, a
health tag) returns within `max_training_wait_seconds` plus scheduling slack, and what was skipped is reported.
The slack below is a hang guard (the failure mode is a wait of tens of seconds), not a speed measurement.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import torch

import mlflow_persist as mp
from mlflow_persist._runtime.background_call import BackgroundCall
from mlflow_persist.testing import MemoryStore

BOUND = 0.3
GUARD = BOUND + 2.0


def _config(**fields: Any) -> mp.PersistConfig:
    return mp.PersistConfig(
        log_system_metrics=False, max_training_wait_seconds=BOUND, scheduler_interval_seconds=3600, **fields
    )


def _timed(call: Any) -> tuple[float, Any]:
    started = time.monotonic()
    result = call()
    return time.monotonic() - started, result


@pytest.mark.slow  # seconds of work: in `make test`, not in `make test-fast`
def test_forced_saves_with_a_hanging_store_return_in_time_and_report_what_they_skipped() -> None:
    store = MemoryStore()
    persist = mp.Persistence(_config(), store=store, install_signal_handlers=False)
    handle = persist.track("net", torch.nn.Linear(2, 2))
    store.hang("write", 6.0, times=None)
    slowest, outcomes = 0.0, []
    for step in range(4):  # one hangs in the writer, two queue behind it (the memory bound), the fourth is skipped
        handle.current_step = step + 1
        elapsed, job = _timed(lambda: handle.save("periodic"))
        slowest = max(slowest, elapsed)
        outcomes.append(job.outcome if job is not None else None)
    assert slowest < GUARD, f"a save() waited {slowest:.1f} s on a hanging store"
    assert persist.writer.skipped >= 1 and "dropped" in outcomes, outcomes
    elapsed, _ = _timed(lambda: handle.step(loss=1.0))
    assert elapsed < GUARD
    with pytest.raises(mp.PersistError, match="could never be written"):  # and close() says what was not stored
        persist.close(final_checkpoints=False, timeout=1.0)


def test_the_first_save_all_reads_nothing_from_the_registry_on_the_training_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = MemoryStore()
    persist = mp.Persistence(_config(), store=store, install_signal_handlers=False)
    for name in ("a", "b"):
        persist.track(name, torch.nn.Linear(2, 2))
    listed: list[str] = []
    real_list = store.list_versions

    training_thread = threading.get_ident()

    def slow_list(name: str) -> Any:
        if threading.get_ident() == training_thread:  # the writer's own registry reads may wait
            listed.append(name)
            time.sleep(6.0)
        return real_list(name)

    monkeypatch.setattr(store, "list_versions", slow_list)
    elapsed, cut_id = _timed(persist.save_all)
    assert elapsed < GUARD and listed == [], (elapsed, listed)
    later, next_id = _timed(persist.save_all)
    assert later < GUARD
    from mlflow_persist._policy.cuts import cut_sequence

    assert cut_sequence(next_id) > cut_sequence(cut_id)  # later cuts still order after earlier ones
    monkeypatch.setattr(store, "list_versions", real_list)
    persist.close(final_checkpoints=False, timeout=30)


@pytest.mark.slow  # seconds of work: in `make test`, not in `make test-fast`
def test_a_degradation_revert_on_a_slow_store_is_applied_at_a_later_step() -> None:
    store = MemoryStore()
    persist = mp.Persistence(
        _config(
            degradation_margin=0.5, degradation_margin_mode="abs", degradation_patience=2, revert_on_degradation=True
        ),
        store=store,
        install_signal_handlers=False,
    )
    torch.manual_seed(3)
    model = torch.nn.Linear(2, 2)
    handle = persist.track("net", model)
    handle.step(loss=1.0)
    assert persist.flush(timeout=30)
    best = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.add_(5.0)
    store.hang("load", 2.0)
    slowest = 0.0
    for _ in range(2):  # the second degraded step fires the revert
        elapsed, _ = _timed(lambda: handle.step(loss=9.0))
        slowest = max(slowest, elapsed)
    assert slowest < GUARD, f"step() waited {slowest:.1f} s for the revert's load"
    assert handle.reverts == 0  # still loading
    deadline = time.monotonic() + 30
    while handle.reverts == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        handle.step(loss=1.0)  # later step boundaries apply it once the load is done
    assert handle.reverts == 1
    for key, value in best.items():
        assert torch.equal(model.state_dict()[key], value)
    persist.close(final_checkpoints=False)


def test_a_health_tag_write_that_hangs_does_not_hold_the_caller() -> None:
    store = MemoryStore()
    persist = mp.Persistence(
        _config(failure_alert_threshold=1, save_retry_attempts=1), store=store, install_signal_handlers=False
    )
    handle = persist.track("net", torch.nn.Linear(2, 2))
    real = store.set_run_tags

    def hanging_tags(run_id: str, tags: Any) -> None:
        time.sleep(6.0)
        real(run_id, tags)

    store.set_run_tags = hanging_tags  # type: ignore[method-assign]
    elapsed, _ = _timed(lambda: handle.health.record_failure("periodic", 1, OSError("disk"), 1, True))
    assert elapsed < GUARD and handle.degraded
    store.set_run_tags = real  # type: ignore[method-assign]
    persist.close(final_checkpoints=False, timeout=5)


def test_a_background_call_hands_back_its_value_or_its_error() -> None:
    ok = BackgroundCall(lambda: 41 + 1, "test")
    assert ok.wait(5) and ok.done and ok.result() == 42

    def broken() -> int:
        raise ValueError("no")

    failed = BackgroundCall(broken, "test")
    assert failed.wait(5)
    with pytest.raises(ValueError, match="no"):
        failed.result()
    slow = BackgroundCall(lambda: time.sleep(5), "test")
    assert not slow.wait(0.05) and not slow.done
    with pytest.raises(RuntimeError, match="not finished"):
        slow.result()
