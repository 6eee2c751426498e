"""`Persistence`, the composition root, on a `MemoryStore` (tests/runtime/test_persistence.py covers it through
a real MLflow store): each job of `tick()`, the promises of `flush()` and `close()`, and what `track()` refuses.

`tick()` is called directly with the background job's interval at an hour, so nothing else runs it. Expected
values come from the store's own versions, metrics, runs and call counts, the outbox directory, and psutil."""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

import pytest
import torch
from runtime_support import wait_until
from runtime_support2 import captured_logs, outbox_entries, persistence

import mlflow_persist as mp
from mlflow_persist._runtime.persistence import Persistence
from mlflow_persist.testing import MemoryStore


class DiskStore(MemoryStore):
    """A MemoryStore whose checkpoints count as landing on the disk of `disk` (None: on no local disk)."""

    def __init__(self) -> None:
        super().__init__()
        self.disk: Path | None = None

    def checkpoint_disk_path(self, run_id: str | None = None) -> Path | None:
        return self.disk


def _steps(handle: mp.ModelHandle, count: int, **metrics: float) -> None:
    for _ in range(count):
        handle.step(**metrics)


def test_persistence_is_the_public_class() -> None:
    assert mp.Persistence is Persistence


def test_tick_marks_a_time_based_save_due_and_the_next_step_takes_it() -> None:
    store = MemoryStore()
    persist = persistence(store, periodic_every_minutes=1.0)
    try:
        handle = persist.track("net", torch.nn.Linear(2, 2))
        started = time.monotonic()
        persist.tick(now=started + 30)  # half the interval: nothing due
        _steps(handle, 2, reward=1.0)  # no monitored value: never a performance save
        assert persist.flush(timeout=10) and store.list_versions("net") == []
        persist.tick(now=started + 61)
        assert store.list_versions("net") == []  # the tick only marks it due; the training thread snapshots
        decision = handle.step(reward=1.0)
        assert decision.save and decision.category == "periodic"
        _steps(handle, 2, reward=1.0)  # taken: not due again
        assert persist.flush(timeout=10)
        assert [(v.category, v.step) for v in store.list_versions("net")] == [("periodic", 3)]
    finally:
        persist.close(final_checkpoints=False)


def test_tick_registers_what_waits_in_the_outbox(tmp_path: Path) -> None:
    store, outbox = MemoryStore(remote=True), tmp_path / "outbox"
    store.fail("write", times=None)
    persist = persistence(store, outbox_dir=str(outbox))
    try:
        handle = persist.track("net", torch.nn.Linear(2, 2))
        for loss in (2.0, 1.0):
            handle.step(loss=loss)
            assert persist.flush(timeout=10)
        assert len(outbox_entries(outbox, "net")) == 2 and store.list_versions("net") == []
        store.heal()
        persist.tick()
        assert [v.step for v in store.list_versions("net")] == [1, 2]
        assert outbox_entries(outbox, "net") == []
    finally:
        persist.close(final_checkpoints=False)


def test_tick_flushes_the_buffered_metrics_in_order() -> None:
    store = MemoryStore()
    persist = persistence(store)
    try:
        handle = persist.track("net", torch.nn.Linear(2, 2))
        values = [0.9, 0.7, 0.8, 0.6]
        for value in values:
            handle.step(accuracy=value)
        assert store.metric_history(handle.run_id, "accuracy") == []  # buffered, not sent per step
        persist.tick()
        history = store.metric_history(handle.run_id, "accuracy")
        assert [(step, value) for step, value, _ in history] == list(zip([1, 2, 3, 4], values))
    finally:
        persist.close(final_checkpoints=False)


def test_a_tick_the_metric_store_refuses_keeps_the_values_for_the_next_tick() -> None:
    store = MemoryStore()
    persist = persistence(store)
    try:
        handle = persist.track("net", torch.nn.Linear(2, 2))
        _steps(handle, 3, accuracy=0.5)
        store.fail("metrics", times=1)
        persist.tick()  # must not raise
        assert store.metric_history(handle.run_id, "accuracy") == []
        persist.tick()
        assert [step for step, _, _ in store.metric_history(handle.run_id, "accuracy")] == [1, 2, 3]  # once each
    finally:
        persist.close(final_checkpoints=False)


def test_tick_logs_system_metrics_for_every_model(tmp_path: Path) -> None:
    store = DiskStore()
    store.disk = tmp_path
    persist = persistence(store, log_system_metrics=True)
    try:
        a = persist.track("a", torch.nn.Linear(2, 2))
        b = persist.track("b", torch.nn.Linear(2, 2))
        _steps(a, 3, accuracy=0.5)
        persist.tick()
        free_mb = shutil.disk_usage(tmp_path).free / 2**20
        for handle, step in ((a, 3), (b, 0)):
            for key in ("system/cpu_percent", "system/rss_mb", "system/free_disk_mb", "system/free_disk_percent"):
                history = store.metric_history(handle.run_id, key)
                assert len(history) == 1 and history[0][0] == step, (handle.name, key)
            ((_, logged_free, _),) = store.metric_history(handle.run_id, "system/free_disk_mb")
            assert abs(logged_free - free_mb) < max(200.0, 0.05 * free_mb)
            ((_, rss, _),) = store.metric_history(handle.run_id, "system/rss_mb")
            assert rss > 10  # this interpreter holds torch: tens of MB at least
    finally:
        persist.close(final_checkpoints=False)


def test_tick_logs_what_checkpoint_writing_costs_and_how_many_performance_saves_the_budget_held_back() -> None:
    store = MemoryStore()
    persist = persistence(store, log_system_metrics=True, max_overhead=0.01)
    try:
        handle = persist.track("a", torch.nn.Linear(256, 256))
        started = time.monotonic()
        for step in range(80):
            handle.step(loss=1.0 / (step + 1))  # every step a new best: more performance saves than 1 % allows
            time.sleep(0.01)  # time for the writer to take each one, so that only the budget holds any back
        assert persist.flush(timeout=60)
        persist.tick()
        elapsed = time.monotonic() - started
        ((_, overhead, _),) = store.metric_history(handle.run_id, "system/persistence_overhead")
        ((_, held_back, _),) = store.metric_history(handle.run_id, "system/performance_saves_held_back")
        saved = [v for v in store.list_versions("a") if v.category == "performance"]
        assert 0 < overhead < 1
        assert held_back >= 1 and len(saved) < 80  # coalesced: fewer versions than improvements
        assert saved[-1].step == 80  # and the newest best landed (released by the flush)
        assert elapsed < 60
    finally:
        persist.close(final_checkpoints=False)


def test_tick_cleans_up_in_disk_pressure_order_and_a_disk_still_full_never_raises(tmp_path: Path) -> None:
    store = DiskStore()  # no local disk while saving, so the saves themselves pass the guard
    persist = persistence(store, min_free_disk_mb=10**12)
    try:
        handle = persist.track("net", torch.nn.Linear(2, 2))
        for loss in (3.0, 2.0, 1.0):
            handle.step(loss=loss)
            assert persist.flush(timeout=10)
        handle.save("periodic")
        assert persist.flush(timeout=10)
        versions = store.list_versions("net")
        assert [v.version for v in versions] == [1, 2, 3, 4] and store.alias_version("net").version == 3
        store.disk = tmp_path  # now the checkpoint disk is far short of a terabyte reserve
        with captured_logs() as logs:
            persist.tick()  # DiskFullError is logged, not raised
        left = [v.version for v in store.list_versions("net")]
        assert left == [3, 4]  # `best` and the newest are never deleted
        assert store.artifact_sources() == {v.source for v in versions if v.version in (3, 4)}
        assert any("after cleanup" in m for m in logs.messages(logging.WARNING))
    finally:
        persist.close(final_checkpoints=False)


def test_flush_reports_a_timeout_then_waits_for_the_slow_write() -> None:
    store = MemoryStore()
    persist = persistence(store)
    try:
        handle = persist.track("net", torch.nn.Linear(2, 2))
        store.hang("write", seconds=1.0)
        handle.step(loss=1.0)
        assert persist.flush(timeout=0.1) is False
        assert persist.flush(timeout=10) is True
        assert [v.step for v in store.list_versions("net")] == [1]
        assert [v for _, v, _ in store.metric_history(handle.run_id, "loss")] == [1.0]  # metrics sent as well
    finally:
        persist.close(final_checkpoints=False)


def test_flush_behind_a_server_registers_what_it_can_and_leaves_the_rest_waiting(tmp_path: Path) -> None:
    store, outbox = MemoryStore(remote=True), tmp_path / "outbox"
    persist = persistence(store, outbox_dir=str(outbox))
    try:
        handle = persist.track("net", torch.nn.Linear(2, 2))
        handle.step(loss=1.0)
        assert persist.flush(timeout=10)
        assert [v.step for v in store.list_versions("net")] == [1] and outbox_entries(outbox, "net") == []
        store.fail("write", times=None)
        handle.step(loss=0.5)
        assert persist.flush(timeout=10)  # written, durably, to the outbox
        assert [v.step for v in store.list_versions("net")] == [1]
        assert len(outbox_entries(outbox, "net")) == 1 and handle.pending_outbox() == 1
        store.heal()
        assert persist.flush(timeout=10)
        assert [v.step for v in store.list_versions("net")] == [1, 2] and handle.pending_outbox() == 0
    finally:
        store.heal()
        persist.close(final_checkpoints=False)


def test_close_takes_one_final_checkpoint_per_model_finishes_the_runs_and_a_second_close_does_nothing() -> None:
    store = MemoryStore()
    persist = persistence(store)
    a = persist.track("a", torch.nn.Linear(2, 2))
    b = persist.track("b", torch.nn.Linear(2, 2))
    _steps(a, 3, accuracy=0.5)
    persist.close()
    for name, handle, step in (("a", a, 3), ("b", b, 0)):
        (final,) = store.list_versions(name)
        assert (final.category, final.step) == ("final", step)
        assert final.tags.get("mlflow_persist.cut_complete") == "true"  # the finals are one complete cut
        assert store.runs[handle.run_id].status == "FINISHED"
    calls = dict(store.calls)
    persist.close()
    persist.close(final_checkpoints=True)
    assert store.calls == calls and len(store.list_versions("a")) == 1
    assert a.save("final") is None  # the writer is closed: refused, counted, never raised
    assert a.failures == 1 and len(store.list_versions("a")) == 1


def test_close_without_final_checkpoints_saves_nothing_new() -> None:
    store = MemoryStore()
    with persistence(store) as persist:
        handle = persist.track("net", torch.nn.Linear(2, 2))
        _steps(handle, 2, accuracy=0.5)
        persist.close(final_checkpoints=False)
    assert store.list_versions("net") == [] and store.calls["write"] == 0
    assert store.runs[handle.run_id].status == "FINISHED"


def test_close_reports_lost_saves_once() -> None:
    store = MemoryStore()
    store.fail("write", times=None)
    persist = persistence(store, save_retry_attempts=1)
    handle = persist.track("net", torch.nn.Linear(2, 2))
    handle.step(loss=1.0)
    assert persist.flush(timeout=10)
    with pytest.raises(mp.PersistError, match=r"1 checkpoint\(s\) could never be written .*net step 1"):
        persist.close(final_checkpoints=False)
    persist.close(final_checkpoints=False)  # already closed: nothing to report again
    assert store.runs[handle.run_id].status == "FINISHED"


def test_the_context_manager_closes_with_final_checkpoints() -> None:
    store = MemoryStore()
    with persistence(store) as persist:
        handle = persist.track("net", torch.nn.Linear(2, 2))
        _steps(handle, 4, accuracy=0.5)
    assert [(v.category, v.step) for v in store.list_versions("net")] == [("final", 4)]
    assert store.runs[handle.run_id].status == "FINISHED"


def test_track_refuses_a_second_model_of_the_same_name_and_keeps_the_first() -> None:
    store = MemoryStore()
    with persistence(store) as persist:
        first = persist.track("net", torch.nn.Linear(2, 2))
        with pytest.raises(mp.PersistError, match="already tracked"):
            persist.track("net", torch.nn.Linear(3, 3))
        assert persist.handles == {"net": first}
        persist.close(final_checkpoints=False)


@pytest.mark.parametrize("name", ["", "a/b", "../etc", "/abs", "a..b"])
def test_track_refuses_an_unsafe_name_before_touching_the_store(name: str) -> None:
    store = MemoryStore()
    with persistence(store) as persist:
        with pytest.raises(mp.ConfigError):
            persist.track(name, torch.nn.Linear(2, 2))
        assert persist.handles == {} and store.runs == {}
        persist.close(final_checkpoints=False)


def test_track_refuses_a_bad_prefix_before_touching_the_store() -> None:
    store = MemoryStore()
    with persistence(store, registered_model_prefix="team/") as persist:
        with pytest.raises(mp.ConfigError):
            persist.track("net", torch.nn.Linear(2, 2))
        assert persist.handles == {} and store.runs == {}
        persist.close(final_checkpoints=False)


def test_an_evaluation_without_its_interval_is_refused_and_the_name_stays_free() -> None:
    store = MemoryStore()
    with persistence(store) as persist:
        with pytest.raises(mp.PersistError, match="evaluate_every_steps"):
            persist.track("net", torch.nn.Linear(2, 2), evaluate=lambda: 0.5)
        assert persist.handles == {}
        handle = persist.track("net", torch.nn.Linear(2, 2), evaluate=lambda: 0.5, evaluate_every_steps=2)
        handle.step()
        handle.step()  # step 2 evaluates: the first value is an improvement
        assert persist.flush(timeout=10)
        persist.close(final_checkpoints=False)
    assert [(v.category, v.step, v.value) for v in store.list_versions("net")] == [("performance", 2, 0.5)]


def test_a_full_metric_buffer_wakes_the_background_job_to_flush_early() -> None:
    store = MemoryStore()
    persist = persistence(store, metrics_flush_size=5)  # the job's own interval is an hour
    try:
        handle = persist.track("net", torch.nn.Linear(2, 2))
        _steps(handle, 5, accuracy=0.5)
        assert wait_until(lambda: len(store.metric_history(handle.run_id, "accuracy")) == 5, timeout=10)
    finally:
        persist.close(final_checkpoints=False)


def test_the_outbox_exists_only_for_a_remote_store_at_the_configured_place(tmp_path: Path) -> None:
    with persistence(MemoryStore()) as local:
        assert local.outbox is None
        local.close(final_checkpoints=False)
    outbox = tmp_path / "somewhere" / "outbox"
    with persistence(MemoryStore(remote=True), outbox_dir=str(outbox)) as remote:
        assert remote.outbox is not None and remote.outbox.root == outbox and outbox.is_dir()
        remote.close(final_checkpoints=False)


def test_the_budget_is_charged_with_the_training_threads_own_time_in_a_save() -> None:
    """What a save costs training includes the time the training thread itself spends in it (the snapshot copy,
    a wait for room in the writer), not only the writer's CPU: with the writer stuck on a hung store, a save that
    waited for room is charged at least the time it blocked, as measured around the call."""
    store = MemoryStore()
    persist = persistence(store, max_overhead=0.05, max_training_wait_seconds=0.3)
    try:
        handle = persist.track("a", torch.nn.Linear(8, 8))
        store.hang("write", 1.5)  # the writer's CPU stays near zero meanwhile: a sleep
        blocked = 0.0
        for step in range(4):  # one hangs in the writer, two queue behind it, the fourth waits for room
            handle.current_step = step + 1
            started = time.monotonic()
            handle.save("periodic")
            blocked = time.monotonic() - started
        budget = persist.writer.budget
        assert budget is not None and blocked >= 0.3
        assert budget.spent >= blocked
    finally:
        persist.close(final_checkpoints=False)
