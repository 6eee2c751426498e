"""`OutboxDrain`: behind a tracking server every checkpoint is first complete on local disk; the drain uploads
and registers the waiting entries in order, quarantines damaged ones, and stops at the first failure so the
rest wait, on disk and in order, for the next drain.

The store is `MemoryStore(remote=True)`; what waits is read from the outbox directory on disk, what was
registered from the store's own versions and call counts, and the expected tensors are the test's copies."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from runtime_support import wait_until
from runtime_support2 import make_net, outbox_entries, persistence, same, snapshot, train

import mlflow_persist as mp
from mlflow_persist._runtime import outbox_drain
from mlflow_persist._runtime.outbox_drain import OutboxDrain
from mlflow_persist.errors import NotFoundError, StoreError, StoreUnavailableError
from mlflow_persist.testing import MemoryStore


class RefusingServer(MemoryStore):
    """A remote MemoryStore that refuses to register the checkpoints of the steps in `refuse_steps`: as
    unreachable (an outage), or with `answer=True` as a server that answers with an error."""

    def __init__(self, answer: bool = False) -> None:
        super().__init__(remote=True)
        self.refuse_steps: set[int] = set()
        self.refused: list[int] = []
        self.answer = answer

    def register_version(
        self,
        name: str,
        source: str,
        run_id: str | None,
        tags: Mapping[str, Any],
        retried: bool = True,
        description: str | None = None,
    ) -> mp.VersionInfo:
        step = int(str(tags["mlflow_persist.step"]))
        if step in self.refuse_steps:
            self.refused.append(step)
            if self.answer:
                raise StoreError(f"INVALID_PARAMETER_VALUE: injected, the server rejects step {step}")
            raise StoreUnavailableError(f"injected: the server refused step {step}")
        return super().register_version(name, source, run_id, tags, retried, description)


def _outage_with_three_entries(
    store: MemoryStore, outbox: Path, **overrides: Any
) -> tuple[mp.Persistence, mp.ModelHandle, list[dict[str, torch.Tensor]]]:
    """While the server is down: performance saves at steps 1 and 2, a periodic one at step 3. Returns the
    open persistence, the handle and the model states of the three saves."""
    store.fail("write", times=None)
    model, opt = make_net(1)
    persist = persistence(store, outbox_dir=str(outbox), **overrides)
    handle = persist.track("net", model, opt)
    states = []
    for loss in (2.0, 1.0):
        train(model, opt)
        handle.step(loss=loss)
        states.append(snapshot(model)[0])
        assert persist.flush(timeout=10)
    train(model, opt)
    handle.step(loss=1.5)
    assert handle.save("periodic", wait=True, timeout=10) is not None
    states.append(snapshot(model)[0])
    assert len(outbox_entries(outbox, "net")) == 3 and store.list_versions("net") == []
    store.heal("write")
    return persist, handle, states


def _registered(store: MemoryStore) -> list[tuple[int, str]]:
    return [(int(v.tags["mlflow_persist.step"]), v.category) for v in store.list_versions("net")]


def test_the_save_pipeline_is_an_outbox_drain(tmp_path: Path) -> None:
    with persistence(MemoryStore(remote=True), outbox_dir=str(tmp_path / "outbox")) as persist:
        handle = persist.track("net", torch.nn.Linear(2, 2))
        assert isinstance(handle.pipeline, OutboxDrain)
        persist.close(final_checkpoints=False)


def test_entries_wait_through_an_outage_and_are_registered_in_order_with_their_bytes(tmp_path: Path) -> None:
    store, outbox = MemoryStore(remote=True), tmp_path / "outbox"
    persist, handle, states = _outage_with_three_entries(store, outbox)
    try:
        assert handle.pending_outbox() == 3
        assert handle.pipeline.drain_outbox(blocking=True) == 0
        assert _registered(store) == [(1, "performance"), (2, "performance"), (3, "periodic")]
        for info, expected in zip(store.list_versions("net"), states):
            assert same(dict(store.load_version(info).model_state), expected)
        assert outbox_entries(outbox, "net") == [] and handle.pending_outbox() == 0
        assert store.alias_version("net").step == 2  # the best performance value, 1.0
    finally:
        persist.close(final_checkpoints=False)


def test_the_drain_stops_at_the_first_failure_and_later_entries_stay_on_disk_in_order(tmp_path: Path) -> None:
    store, outbox = RefusingServer(), tmp_path / "outbox"
    persist, handle, _ = _outage_with_three_entries(store, outbox)
    try:
        waiting = outbox_entries(outbox, "net")
        store.refuse_steps = {2}
        uploads, failures = store.calls["write"], handle.failures
        assert handle.pipeline.drain_outbox(blocking=True) == 2
        assert _registered(store) == [(1, "performance")]
        assert store.refused == [2]  # step 3 was never tried
        assert store.calls["write"] == uploads + 2  # steps 1 and 2 uploaded, step 3 not
        assert outbox_entries(outbox, "net") == waiting[1:]
        assert handle.failures == failures + 1  # the failed registration counts against the model's health

        store.refuse_steps = set()
        assert handle.pipeline.drain_outbox(blocking=True) == 0
        assert _registered(store) == [(1, "performance"), (2, "performance"), (3, "periodic")]
        assert outbox_entries(outbox, "net") == []
    finally:
        persist.close(final_checkpoints=False)


def test_an_entry_the_server_keeps_rejecting_is_set_aside_in_time_and_the_rest_register(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, outbox, alerts = RefusingServer(answer=True), tmp_path / "outbox", []
    persist, handle, states = _outage_with_three_entries(store, outbox, alert_sinks=[alerts.append])
    try:
        rejected = outbox_entries(outbox, "net")[0]
        kept = (outbox / "net" / rejected / "checkpoint.pt").read_bytes()
        store.refuse_steps = {1}
        for _ in range(outbox_drain.MAX_ENTRY_FAILURES + 2):  # a server that errs for a while costs nothing
            assert handle.pipeline.drain_outbox(blocking=True) == 3
        assert _registered(store) == [] and "outbox_entry_abandoned" not in [a.kind for a in alerts]

        monkeypatch.setattr(outbox_drain, "ENTRY_GIVE_UP_SECONDS", 0.0)  # ... until it has refused long enough
        assert handle.pipeline.drain_outbox(blocking=True) == 0
        assert _registered(store) == [(2, "performance"), (3, "periodic")]
        for info, expected in zip(store.list_versions("net"), states[1:]):
            assert same(dict(store.load_version(info).model_state), expected)
        assert (outbox / "_quarantine" / "net" / rejected / "checkpoint.pt").read_bytes() == kept
        abandoned = [a for a in alerts if a.kind == "outbox_entry_abandoned"]
        assert len(abandoned) == 1 and abandoned[0].details["step"] == 1
        assert "INVALID_PARAMETER_VALUE" in abandoned[0].details["error"]
    finally:
        persist.close(final_checkpoints=False)


def test_a_truncated_entry_is_quarantined_with_its_bytes_and_the_others_go_on(tmp_path: Path) -> None:
    store, outbox = MemoryStore(remote=True), tmp_path / "outbox"
    persist, handle, states = _outage_with_three_entries(store, outbox)
    try:
        damaged = outbox_entries(outbox, "net")[1]
        checkpoint = outbox / "net" / damaged / "checkpoint.pt"
        with open(checkpoint, "r+b") as f:
            f.truncate(checkpoint.stat().st_size // 2)
        kept = checkpoint.read_bytes()
        failures = handle.failures
        assert handle.pipeline.drain_outbox(blocking=True) == 0
        assert _registered(store) == [(1, "performance"), (3, "periodic")]
        assert same(dict(store.load_version(store.list_versions("net")[-1]).model_state), states[2])
        moved = outbox / "_quarantine" / "net" / damaged / "checkpoint.pt"
        assert moved.read_bytes() == kept  # set aside for the operator, not deleted
        assert outbox_entries(outbox, "net") == [] and handle.failures == failures
    finally:
        persist.close(final_checkpoints=False)


def test_an_entry_whose_run_the_server_lost_is_quarantined_and_the_rest_register(tmp_path: Path) -> None:
    store, outbox = MemoryStore(remote=True), tmp_path / "outbox"
    persist, handle, _ = _outage_with_three_entries(store, outbox)
    try:
        first = outbox_entries(outbox, "net")[0]
        store.fail("register", times=1, error=NotFoundError("Run 'run0001' not found on the server"))
        assert handle.pipeline.drain_outbox(blocking=True) == 0
        assert _registered(store) == [(2, "performance"), (3, "periodic")]
        assert (outbox / "_quarantine" / "net" / first / "entry.json").is_file()
    finally:
        persist.close(final_checkpoints=False)


def test_a_drain_that_finds_another_draining_returns_at_once_unless_blocking(tmp_path: Path) -> None:
    store, outbox = MemoryStore(remote=True), tmp_path / "outbox"
    persist, handle, _ = _outage_with_three_entries(store, outbox)
    try:
        store.hang("write", seconds=1.0)  # the first upload of the background drain is slow
        uploads = store.calls["write"]
        result: list[int] = []
        drainer = threading.Thread(target=lambda: result.append(handle.pipeline.drain_outbox(blocking=True)))
        drainer.start()
        assert wait_until(lambda: store.calls["write"] > uploads)  # the drainer is inside its upload now
        assert handle.pipeline.drain_outbox() == -1  # the scheduler's non-blocking call does not wait
        assert handle.pipeline.drain_outbox(blocking=True) == 0  # a blocking one waits for it, then finds none
        drainer.join(timeout=10)
        assert result == [0]
        assert [s for s, _ in _registered(store)] == [1, 2, 3]  # each entry registered once
    finally:
        persist.close(final_checkpoints=False)


def test_the_next_save_drains_the_older_entries_first(tmp_path: Path) -> None:
    store, outbox = MemoryStore(remote=True), tmp_path / "outbox"
    persist, handle, _ = _outage_with_three_entries(store, outbox)
    try:
        handle.step(loss=0.5)  # step 4, an improvement: written to the outbox, then the drain runs
        assert persist.flush(timeout=10)
        assert [s for s, _ in _registered(store)] == [1, 2, 3, 4]
        assert [v.version for v in store.list_versions("net")] == [1, 2, 3, 4]
        assert outbox_entries(outbox, "net") == []
    finally:
        persist.close(final_checkpoints=False)


def test_entries_left_by_a_process_are_registered_by_the_next_one_under_the_same_run(tmp_path: Path) -> None:
    store, outbox = MemoryStore(remote=True), tmp_path / "outbox"
    persist, handle, states = _outage_with_three_entries(store, outbox)
    store.fail("write", times=None)  # still down when the first process ends
    run_id = handle.run_id
    persist.close(final_checkpoints=False)
    assert len(outbox_entries(outbox, "net")) == 3
    store.heal()

    later = persistence(store, outbox_dir=str(outbox))
    try:
        later.track("net", make_net(9)[0])
        assert later.flush(timeout=10)  # a flush registers what waits in the outbox
        assert [s for s, _ in _registered(store)] == [1, 2, 3]
        assert {v.run_id for v in store.list_versions("net")} == {run_id}
        assert same(dict(store.load_version(store.list_versions("net")[0]).model_state), states[0])
        assert outbox_entries(outbox, "net") == []
    finally:
        later.close(final_checkpoints=False)


def test_without_an_outbox_there_is_nothing_to_drain() -> None:
    store = MemoryStore()
    with persistence(store) as persist:
        handle = persist.track("net", torch.nn.Linear(2, 2))
        assert handle.pipeline.outbox is None
        assert handle.pipeline.drain_outbox(blocking=True) == 0 and handle.pending_outbox() == 0
        persist.close(final_checkpoints=False)
    assert store.calls["write"] == 0


@pytest.mark.parametrize("blocking", [True, False])
def test_a_drain_never_raises_while_the_server_is_down(tmp_path: Path, blocking: bool) -> None:
    store, outbox = MemoryStore(remote=True), tmp_path / "outbox"
    persist, handle, _ = _outage_with_three_entries(store, outbox)
    try:
        store.fail("write", times=None)
        assert handle.pipeline.drain_outbox(blocking=blocking) == 3
        assert len(outbox_entries(outbox, "net")) == 3 and store.list_versions("net") == []
    finally:
        store.heal()
        persist.close(final_checkpoints=False)
