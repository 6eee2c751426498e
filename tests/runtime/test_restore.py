"""`HandleRestore`: restore() loads the newest valid version (or `best`) into every tracked object, all or
nothing; damaged versions are tagged corrupt and passed over; an intact checkpoint that does not fit raises
CheckpointMismatchError and changes nothing (objects nor registry); transient store errors are retried;
revert_to_best(); resuming from the outbox while the server is unreachable.

Every expected state is a deep copy the test took itself when the checkpoint was snapshotted."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from runtime_support2 import CORRUPT, make_net, outbox_entries, persistence, same, snapshot, train

import mlflow_persist as mp
from mlflow_persist._runtime.restore import RESTORE_LOAD_ATTEMPTS, HandleRestore, RestoreInfo
from mlflow_persist.errors import CheckpointMismatchError, StoreError, StoreUnavailableError
from mlflow_persist.testing import MemoryStore


class Counter:
    """An `extra` application object: a count and a tensor buffer."""

    def __init__(self) -> None:
        self.count = 0
        self.buffer = torch.zeros(3)

    def bump(self) -> None:
        self.count += 1
        self.buffer = self.buffer + torch.arange(3.0)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "buffer": self.buffer.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])
        self.buffer = state["buffer"].clone()


class RefusingExtra(Counter):
    """An `extra` whose load always fails (its format changed since the checkpoint)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise KeyError("field 'legacy_buffer' is gone")


def _registry(store: MemoryStore, name: str) -> tuple[int, list[tuple[int, dict[str, str], list[str]]], int]:
    """Everything restore must leave alone: the change counter, every version's tags and aliases, alias calls."""
    versions = [(v.version, dict(v.tags), list(v.aliases)) for v in store.list_versions(name)]
    return store.registry_generation(name), versions, store.calls["alias"]


def _three_performance_versions(store: MemoryStore, name: str = "net") -> list[list[Any]]:
    """Saves v1..v3 (losses 3, 2, 1: each the new best); returns [model, optimizer] states at each save."""
    model, opt = make_net(1)
    persist = persistence(store)
    handle = persist.track(name, model, opt)
    states = []
    for loss in (3.0, 2.0, 1.0):
        train(model, opt)
        handle.step(loss=loss)
        states.append(snapshot(model, opt))
        assert persist.flush(timeout=10)
    persist.close(final_checkpoints=False)
    assert [v.version for v in store.list_versions(name)] == [1, 2, 3]
    return states


def test_the_handle_is_a_handle_restore() -> None:
    store = MemoryStore()
    with persistence(store) as persist:
        handle = persist.track("net", torch.nn.Linear(2, 2))
        assert isinstance(handle, HandleRestore)
        assert handle.restore() is None  # nothing stored yet
        persist.close(final_checkpoints=False)


def test_restore_loads_model_optimizer_scheduler_extra_step_and_rng() -> None:
    store = MemoryStore()
    model, opt = make_net(1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    extra = Counter()
    persist = persistence(store)
    handle = persist.track("net", model, opt, sched, extra)
    for loss in (3.0, 2.0, 1.0):
        train(model, opt)
        sched.step()
        extra.bump()
        handle.step(loss=loss)
    assert persist.flush(timeout=10)
    train(model, opt, steps=2)  # the periodic save holds newer weights than the last performance save
    expected = snapshot(model, opt, sched, extra)
    rng_at_save = torch.get_rng_state()
    assert handle.save("periodic", wait=True, timeout=10) is not None
    persist.close(final_checkpoints=False)
    newest = store.list_versions("net")[-1]

    fresh_model, fresh_opt = make_net(77)
    fresh_sched = torch.optim.lr_scheduler.StepLR(fresh_opt, step_size=2, gamma=0.5)
    fresh_extra = Counter()
    torch.manual_seed(4242)  # the process's RNG is somewhere else entirely
    with persistence(store) as persist:
        fresh = persist.track("net", fresh_model, fresh_opt, fresh_sched, fresh_extra)
        info = fresh.restore()
        drawn = torch.rand(5)
        assert isinstance(info, RestoreInfo)
        assert (info.version, info.category, info.step, info.value) == (newest.version, "periodic", 3, 1.0)
        assert info.skipped_corrupt == () and fresh.current_step == 3
        assert same(snapshot(fresh_model, fresh_opt, fresh_sched, fresh_extra), expected)
        generator = torch.Generator()
        generator.set_state(rng_at_save)
        assert torch.equal(drawn, torch.rand(5, generator=generator))  # the RNG continues where it was saved
        persist.close(final_checkpoints=False)


def test_a_damaged_newest_version_is_tagged_corrupt_best_moves_and_the_previous_is_restored() -> None:
    store = MemoryStore()
    states = _three_performance_versions(store)
    assert store.alias_version("net").version == 3
    store.corrupt_artifact(store.get_version("net", 3).source)

    model, opt = make_net(9)
    with persistence(store) as persist:
        info = persist.track("net", model, opt).restore()
        persist.close(final_checkpoints=False)
    assert info is not None and info.version == 2 and info.skipped_corrupt == (3,)
    assert same(snapshot(model, opt), states[1])
    assert store.get_version("net", 3).tags.get(CORRUPT) == "true"
    assert [v.version for v in store.list_versions("net") if v.tags.get(CORRUPT)] == [3]
    assert store.alias_version("net").version == 2  # `best` never stays on a corrupt version


def test_two_damaged_versions_in_a_row_fall_back_to_the_oldest_valid_one() -> None:
    store = MemoryStore()
    states = _three_performance_versions(store)
    store.corrupt_artifact(store.get_version("net", 3).source, b"\x00" * 64)  # overwritten
    store.delete_artifacts(store.get_version("net", 2))  # files gone

    model, opt = make_net(9)
    with persistence(store) as persist:
        info = persist.track("net", model, opt).restore()
        persist.close(final_checkpoints=False)
    assert info is not None and info.version == 1 and info.skipped_corrupt == (3, 2)
    assert same(snapshot(model, opt), states[0])
    assert {v.version for v in store.list_versions("net") if v.tags.get(CORRUPT) == "true"} == {2, 3}
    assert store.alias_version("net").version == 1


def test_when_every_version_is_damaged_nothing_is_loaded_and_best_is_removed() -> None:
    store = MemoryStore()
    _three_performance_versions(store)
    for version in (1, 2, 3):
        store.corrupt_artifact(store.get_version("net", version).source)
    model, opt = make_net(9)
    before = snapshot(model, opt)
    with persistence(store) as persist:
        handle = persist.track("net", model, opt)
        assert handle.restore() is None
        assert handle.current_step == 0
        persist.close(final_checkpoints=False)
    assert same(snapshot(model, opt), before)
    assert all(v.tags.get(CORRUPT) == "true" for v in store.list_versions("net"))
    assert store.alias_version("net") is None


def test_a_changed_architecture_raises_and_leaves_model_optimizer_and_registry_untouched() -> None:
    store = MemoryStore()
    _three_performance_versions(store)
    registry = _registry(store, "net")
    loads = store.calls["load"]
    wider, opt = make_net(5, hidden=6)  # the hidden layer grew from 4 to 6
    train(wider, opt)  # live optimizer state worth protecting
    before = snapshot(wider, opt)
    with persistence(store) as persist:
        handle = persist.track("net", wider, opt)
        with pytest.raises(CheckpointMismatchError) as raised:
            handle.restore()
        assert handle.current_step == 0 and handle.last_version is None
        persist.close(final_checkpoints=False)
    message = str(raised.value)
    assert "net" in message and "0.weight" in message and "strict=False" in message
    assert same(snapshot(wider, opt), before)
    assert _registry(store, "net") == registry  # no corrupt tag, no alias move, nothing changed
    assert store.calls["load"] == loads + 1  # the newest was loaded once, found intact, and not applied


def test_an_optimizer_that_does_not_fit_raises_and_the_fitting_model_is_not_loaded() -> None:
    store = MemoryStore()
    _three_performance_versions(store)
    registry = _registry(store, "net")
    model, _ = make_net(5)
    split = torch.optim.Adam([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.1}])
    train(model, split)
    before = snapshot(model, split)
    with persistence(store) as persist:
        handle = persist.track("net", model, split)
        with pytest.raises(CheckpointMismatchError, match="optimizer"):
            handle.restore()
        persist.close(final_checkpoints=False)
    assert same(snapshot(model, split), before)  # all or nothing: the model fits, yet is not loaded
    assert _registry(store, "net") == registry


def test_a_late_failing_load_rolls_back_the_optimizer_and_scheduler_already_loaded() -> None:
    store = MemoryStore()
    model, opt = make_net(1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with persistence(store) as persist:
        handle = persist.track("net", model, opt, sched, Counter())
        for loss in (2.0, 1.0):
            train(model, opt)
            sched.step()
            handle.step(loss=loss)
        persist.close(final_checkpoints=False)
    registry = _registry(store, "net")

    live_model, live_opt = make_net(5)
    live_sched = torch.optim.lr_scheduler.StepLR(live_opt, step_size=3, gamma=0.9)
    for _ in range(4):
        train(live_model, live_opt)
        live_sched.step()
    before = snapshot(live_model, live_opt, live_sched)
    with persistence(store) as persist:
        handle = persist.track("net", live_model, live_opt, live_sched, RefusingExtra())
        with pytest.raises(CheckpointMismatchError, match="extra"):
            handle.restore()
        persist.close(final_checkpoints=False)
    assert same(snapshot(live_model, live_opt, live_sched), before)
    assert _registry(store, "net") == registry
    train(live_model, live_opt)  # the rolled-back optimizer still trains its own parameters
    assert not same(snapshot(live_model)[0], before[0])


def test_strict_false_loads_the_tensors_that_fit_and_never_the_optimizer() -> None:
    store = MemoryStore()
    states = _three_performance_versions(store)
    wider, opt = make_net(5, hidden=6)
    train(wider, opt)
    before_model, before_opt = snapshot(wider, opt)
    with persistence(store) as persist:
        info = persist.track("net", wider, opt).restore(strict=False)
        persist.close(final_checkpoints=False)
    assert info is not None and info.version == 3
    live = wider.state_dict()
    saved = states[2][0]
    for key in live:
        expected = saved[key] if saved[key].shape == live[key].shape else before_model[key]
        assert torch.equal(live[key], expected), key
    assert not torch.equal(live["2.bias"], before_model["2.bias"])  # a fitting tensor did change
    assert same(opt.state_dict(), before_opt)


@pytest.mark.parametrize(
    "error", [None, StoreError("HTTP 503 from the artifact proxy")], ids=["unavailable", "store_error"]
)
def test_a_transient_load_error_is_retried_and_the_restore_succeeds(error: StoreError | None) -> None:
    store = MemoryStore()
    states = _three_performance_versions(store)
    registry = _registry(store, "net")
    store.fail("load", times=2, error=error)
    loads = store.calls["load"]
    model, opt = make_net(9)
    with persistence(store) as persist:
        info = persist.track("net", model, opt).restore()
        persist.close(final_checkpoints=False)
    assert info is not None and info.version == 3 and info.skipped_corrupt == ()
    assert store.calls["load"] == loads + 3  # two failures, then the load that worked
    assert same(snapshot(model, opt), states[2])
    assert _registry(store, "net") == registry  # an unreachable store is no damaged checkpoint


def test_a_store_that_stays_unreachable_raises_after_the_retries_and_tags_nothing() -> None:
    store = MemoryStore()
    _three_performance_versions(store)
    registry = _registry(store, "net")
    store.fail("load", times=None)
    loads = store.calls["load"]
    model, opt = make_net(9)
    before = snapshot(model, opt)
    persist = persistence(store)
    try:
        with pytest.raises(StoreUnavailableError):
            persist.track("net", model, opt).restore()
    finally:
        store.heal()
        persist.close(final_checkpoints=False)
    assert store.calls["load"] == loads + RESTORE_LOAD_ATTEMPTS  # only the newest was tried, never an older
    assert same(snapshot(model, opt), before)
    assert _registry(store, "net") == registry


def test_resume_from_best_prefers_best_over_a_newer_worse_version() -> None:
    store = MemoryStore()
    model, opt = make_net(1)
    with persistence(store) as persist:
        handle = persist.track("net", model, opt)
        for loss in (1.0, 0.5):
            train(model, opt)
            handle.step(loss=loss)
            assert persist.flush(timeout=10)  # a newer waiting snapshot would replace an unwritten one
        at_best = snapshot(model, opt)
        train(model, opt, steps=3)
        handle.step(loss=0.9)
        handle.save("periodic")
        at_newest = snapshot(model, opt)
        persist.close(final_checkpoints=False)
    assert [v.category for v in store.list_versions("net")] == ["performance", "performance", "periodic"]

    for resume_from, expected, version in (("best", at_best, 2), ("latest", at_newest, 3)):
        fresh, fresh_opt = make_net(9)
        persist = persistence(store, models={"net": {"resume_from": resume_from}})
        try:
            info = persist.track("net", fresh, fresh_opt).restore()
        finally:
            persist.close(final_checkpoints=False)
        assert info is not None and info.version == version, resume_from
        assert same(snapshot(fresh, fresh_opt), expected), resume_from


def test_revert_to_best_loads_best_into_the_live_model_and_keeps_step_and_rng() -> None:
    store = MemoryStore()
    model, opt = make_net(1)
    persist = persistence(store)
    try:
        handle = persist.track("net", model, opt)
        for loss in (1.0, 0.5):
            train(model, opt)
            handle.step(loss=loss)
            assert persist.flush(timeout=10)
        at_best = snapshot(model, opt)
        for _ in range(3):
            train(model, opt)  # drift away from best
            handle.step(loss=0.9)
        assert not same(snapshot(model)[0], at_best[0])
        versions = [v.version for v in store.list_versions("net")]
        rng = torch.get_rng_state()
        info = handle.revert_to_best()
        assert info is not None and info.version == 2 and info.value == 0.5
        assert same(snapshot(model, opt), at_best)
        assert handle.current_step == 5 and handle.reverts == 1  # training goes on from where it was
        assert torch.equal(torch.get_rng_state(), rng)  # a revert is no restart: the RNG is left alone
        assert [v.version for v in store.list_versions("net")] == versions
    finally:
        persist.close(final_checkpoints=False)


def test_revert_to_best_passes_over_a_damaged_best_to_the_next_best() -> None:
    store = MemoryStore()
    states = _three_performance_versions(store)
    store.corrupt_artifact(store.get_version("net", 3).source)
    model, opt = make_net(9)
    persist = persistence(store)
    try:
        info = persist.track("net", model, opt).revert_to_best()
    finally:
        persist.close(final_checkpoints=False)
    assert info is not None and info.version == 2
    assert same(snapshot(model, opt), states[1])
    assert store.get_version("net", 3).tags.get(CORRUPT) == "true"
    assert store.alias_version("net").version == 2


def test_revert_to_best_without_any_checkpoint_changes_nothing() -> None:
    store = MemoryStore()
    model, opt = make_net(1)
    train(model, opt)
    before = snapshot(model, opt)
    with persistence(store) as persist:
        handle = persist.track("net", model, opt)
        assert handle.revert_to_best() is None
        assert handle.reverts == 0
        persist.close(final_checkpoints=False)
    assert same(snapshot(model, opt), before)


def test_while_the_server_is_down_restore_resumes_from_the_newest_intact_outbox_entry(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    store = MemoryStore(remote=True)
    store.fail("write", times=None)  # the server is unreachable: nothing is uploaded
    model, opt = make_net(1)
    states = []
    persist = persistence(store, outbox_dir=str(outbox))
    handle = persist.track("net", model, opt)
    for loss in (2.0, 1.0):
        train(model, opt)
        handle.step(loss=loss)
        states.append(copy.deepcopy(snapshot(model, opt)))
        assert persist.flush(timeout=10)
    persist.close(final_checkpoints=False)
    entries = outbox_entries(outbox, "net")
    assert len(entries) == 2 and store.list_versions("net") == []

    fresh, fresh_opt = make_net(9)
    with persistence(store, outbox_dir=str(outbox)) as persist:
        info = persist.track("net", fresh, fresh_opt).restore()
        persist.close(final_checkpoints=False)
    assert info is not None and info.version is None and info.step == 2 and info.category == "performance"
    assert same(snapshot(fresh, fresh_opt), states[1])
    assert outbox_entries(outbox, "net") == entries  # still waiting for the server

    newest = outbox / "net" / entries[-1] / "checkpoint.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size: only the checksum can tell
    newest.write_bytes(bytes(data))
    older, older_opt = make_net(9)
    with persistence(store, outbox_dir=str(outbox)) as persist:
        info = persist.track("net", older, older_opt).restore()
        persist.close(final_checkpoints=False)
    assert info is not None and info.version is None and info.step == 1
    assert same(snapshot(older, older_opt), states[0])
    store.heal()


def test_restore_info_is_a_frozen_record() -> None:
    info = RestoreInfo(3, "final", 12, 0.5, "run0001")
    assert info.skipped_corrupt == () and info.cut is None
    with pytest.raises(AttributeError):
        info.version = 4  # type: ignore[misc]
    assert isinstance(mp.RestoreInfo(1, "periodic", 1, None, None), RestoreInfo)
