"""`SystemCheckpoints`: `save_all()` cuts every tracked model and application state at one step boundary;
`restore_all()` restores the newest complete cut, all members verified before any is applied.

Expected states are deep copies the test took at the moment of each cut; the registry is read from the
MemoryStore's own versions and tags, with the tag names spelled out as DESIGN.md names them."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from runtime_support import wait_until
from runtime_support2 import CORRUPT, make_net, persistence, same, snapshot, train

import mlflow_persist as mp
from mlflow_persist._runtime.system_checkpoints import SystemCheckpoints
from mlflow_persist.testing import MemoryStore

CUT = "mlflow_persist.cut"
CUT_MEMBERS = "mlflow_persist.cut_members"
CUT_COMPLETE = "mlflow_persist.cut_complete"
MEMBERS = ("policy", "value", "app")


class Book:
    """Application state: positions (a tensor), an order id counter and a pending list."""

    def __init__(self) -> None:
        self.positions = torch.zeros(4, dtype=torch.float64)
        self.next_order = 0
        self.pending: list[int] = []

    def trade(self) -> None:
        self.next_order += 1
        self.positions = self.positions + torch.randn(4, dtype=torch.float64)
        self.pending = [*self.pending[-2:], self.next_order]

    def state_dict(self) -> dict[str, Any]:
        return {"positions": self.positions.clone(), "next_order": self.next_order, "pending": list(self.pending)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.positions = state["positions"].clone()
        self.next_order = int(state["next_order"])
        self.pending = list(state["pending"])


class Unsavable(Book):
    def state_dict(self) -> dict[str, Any]:
        return {"socket": object()}  # cannot be put into a checkpoint


class Trading:
    """Two models (one with an optimizer) and the application state, trained in lockstep."""

    def __init__(self, store: MemoryStore, seed: int = 0, **config: Any) -> None:
        self.policy, self.opt = make_net(seed)
        self.value, _ = make_net(seed + 1)
        self.book = Book()
        self.persist = persistence(store, **config)
        self.hp = self.persist.track("policy", self.policy, self.opt)
        self.hv = self.persist.track("value", self.value)
        self.hs = self.persist.track_state("app", self.book, step=lambda: self.book.next_order)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            train(self.policy, self.opt)
            self.book.trade()
            self.hp.step(reward=1.0)  # no monitored value: no performance saves, only the cuts
            self.hv.step(reward=1.0)

    def state(self) -> dict[str, Any]:
        return copy.deepcopy(
            {
                "policy": self.policy.state_dict(),
                "opt": self.opt.state_dict(),
                "value": self.value.state_dict(),
                "book": self.book.state_dict(),
            }
        )

    def close(self) -> None:
        self.persist.close(final_checkpoints=False)


def _member(store: MemoryStore, name: str, cut_id: str) -> mp.VersionInfo:
    (found,) = [v for v in store.list_versions(name) if v.tags.get(CUT) == cut_id]
    return found


def test_persistence_is_the_system_checkpoints_mixin() -> None:
    assert issubclass(mp.Persistence, SystemCheckpoints)


def test_save_all_and_restore_all_round_trip_two_models_and_the_application_state_bit_identically() -> None:
    store = MemoryStore()
    system = Trading(store)
    system.run(5)
    cut_id = system.persist.save_all()
    at_cut = system.state()
    pending = system.persist.cut(cut_id)
    assert pending is not None and pending.done.wait(10) and pending.outcome == "complete"
    system.run(3)  # moves on after the cut: none of this may come back
    system.close()

    for name in MEMBERS:
        member = _member(store, name, cut_id)
        assert member.tags[CUT_MEMBERS] == "app,policy,value"
        assert member.tags[CUT_COMPLETE] == "true"
        assert member.tags["mlflow_persist.category"] == "periodic"
        assert member.tags["mlflow_persist.step"] == "5"  # the app's own step and the models' agree here

    fresh = Trading(store, seed=50)
    try:
        restored = fresh.persist.restore_all()
        assert set(restored) == set(MEMBERS)
        assert {info.cut for info in restored.values()} == {cut_id}
        assert {name: info.version for name, info in restored.items()} == {
            name: _member(store, name, cut_id).version for name in MEMBERS
        }
        assert same(fresh.state(), at_cut)
        assert fresh.book.positions.dtype == torch.float64
        assert (fresh.hp.current_step, fresh.hv.current_step) == (5, 5)
    finally:
        fresh.close()


def test_a_damaged_member_falls_back_to_the_older_cut_and_nothing_of_the_damaged_cut_is_applied() -> None:
    store = MemoryStore()
    system = Trading(store)
    system.run(2)
    older = system.persist.save_all()
    at_older = system.state()
    system.run(2)
    newer = system.persist.save_all()
    assert wait_until(lambda: system.persist.cuts.completed == 2)
    system.close()
    # `value` is loaded after `policy`: the intact `policy` member of the newer cut is loaded, yet must not be
    # applied once `value` turns out damaged.
    damaged = _member(store, "value", newer)
    store.corrupt_artifact(damaged.source)

    fresh = Trading(store, seed=50)
    try:
        restored = fresh.persist.restore_all()
        assert {info.cut for info in restored.values()} == {older}
        assert same(fresh.state(), at_older)
        assert fresh.hp.current_step == 2
    finally:
        fresh.close()
    assert store.get_version("value", damaged.version).tags.get(CORRUPT) == "true"
    assert CORRUPT not in _member(store, "policy", newer).tags  # only the damaged member is tagged


def test_a_damaged_only_cut_restores_nothing_at_all() -> None:
    store = MemoryStore()
    system = Trading(store)
    system.run(3)
    only = system.persist.save_all()
    assert wait_until(lambda: system.persist.cuts.completed == 1)
    system.close()
    store.corrupt_artifact(_member(store, "app", only).source)  # the last member loaded

    fresh = Trading(store, seed=50)
    initial = fresh.state()
    try:
        assert fresh.persist.restore_all() == {}
        assert same(fresh.state(), initial)  # neither model received the intact members of the cut
        assert (fresh.hp.current_step, fresh.hv.current_step) == (0, 0)
    finally:
        fresh.close()


def test_a_member_that_cannot_be_snapshotted_leaves_the_cut_incomplete_but_saves_the_others() -> None:
    store = MemoryStore()
    persist = persistence(store)
    try:
        model, opt = make_net(0)
        persist.track("policy", model, opt)
        persist.track_state("app", Unsavable())
        cut_id = persist.save_all()
        assert persist.flush(timeout=10)
        assert persist.cut(cut_id) is None  # never handed to the cut keeper: it can never complete
        assert [v.tags.get(CUT) for v in store.list_versions("policy")] == [cut_id]  # still a good checkpoint
        assert store.list_versions("app") == []
        assert CUT_COMPLETE not in store.list_versions("policy")[0].tags
    finally:
        persist.close(final_checkpoints=False)


def test_the_application_step_comes_from_its_callback_or_else_the_highest_model_step() -> None:
    store = MemoryStore()
    persist = persistence(store)
    try:
        a = persist.track("a", torch.nn.Linear(2, 2))
        b = persist.track("b", torch.nn.Linear(2, 2))
        persist.track_state("counted", Book(), step=lambda: 1234)

        def broken() -> int:
            raise RuntimeError("the exchange clock is gone")

        persist.track_state("broken", Book(), step=broken)
        persist.track_state("plain", Book())
        for _ in range(3):
            a.step(reward=1.0)
        for _ in range(7):
            b.step(reward=1.0)
        persist.save_all()
        assert persist.flush(timeout=10)
        steps = {name: store.list_versions(name)[-1].tags["mlflow_persist.step"] for name in store.managed_models()}
        assert steps == {"a": "3", "b": "7", "counted": "1234", "broken": "7", "plain": "7"}
    finally:
        persist.close(final_checkpoints=False)


def test_cut_ids_keep_increasing_across_processes() -> None:
    store = MemoryStore()
    first = Trading(store)
    ids = [first.persist.save_all(), first.persist.save_all()]
    assert first.persist.flush(timeout=10)
    first.close()
    second = Trading(store)
    try:
        ids.append(second.persist.save_all())  # without restore_all(): the sequence is read from the store
        assert second.persist.flush(timeout=10)
    finally:
        second.close()
    sequences = [int(cut_id.split("-", 1)[0]) for cut_id in ids]
    assert sequences == sorted(set(sequences)) and len(set(ids)) == 3  # strictly increasing, across processes


def test_two_writers_cutting_in_the_same_millisecond_pick_different_sequences(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two trainers (two processes, or two Persistence objects) start a cut at the same instant: the sequence
    orders cuts, so they must differ (with equal sequences the newest complete cut is a coin toss)."""
    import mlflow_persist._runtime.system_checkpoints as system_checkpoints

    monkeypatch.setattr(system_checkpoints.time, "time_ns", lambda: 1_800_000_000_000_000_000)  # a frozen clock
    store = MemoryStore()
    first, second = Trading(store), Trading(store)
    try:
        ids = [first.persist.save_all(), second.persist.save_all()]
        assert first.persist.flush(timeout=10) and second.persist.flush(timeout=10)
    finally:
        first.close()
        second.close()
    sequences = [int(cut_id.split("-", 1)[0]) for cut_id in ids]
    assert sequences[0] != sequences[1], ids


def test_a_model_outside_the_cut_restores_its_own_newest_checkpoint() -> None:
    store = MemoryStore()
    system = Trading(store)
    system.run(2)
    cut_id = system.persist.save_all()
    at_cut = system.state()
    assert wait_until(lambda: system.persist.cuts.completed == 1)
    system.close()
    # A third model, trained on its own earlier, with per-model checkpoints only.
    solo_persist = persistence(store)
    solo, solo_opt = make_net(3)
    solo_handle = solo_persist.track("risk", solo, solo_opt)
    for loss in (2.0, 1.0):
        train(solo, solo_opt)
        solo_handle.step(loss=loss)
        assert solo_persist.flush(timeout=10)
    at_solo = snapshot(solo, solo_opt)
    solo_persist.close(final_checkpoints=False)

    fresh = Trading(store, seed=50)
    risk, risk_opt = make_net(60)
    fresh.persist.track("risk", risk, risk_opt)
    try:
        restored = fresh.persist.restore_all()
        assert {n: i.cut for n, i in restored.items()} == {
            "policy": cut_id,
            "value": cut_id,
            "app": cut_id,
            "risk": None,
        }
        assert restored["risk"].version == 2 and same(snapshot(risk, risk_opt), at_solo)
        assert same(fresh.state(), at_cut)
    finally:
        fresh.close()


def test_save_all_refuses_an_empty_system_and_a_performance_cut() -> None:
    store = MemoryStore()
    persist = persistence(store)
    try:
        with pytest.raises(mp.PersistError, match="track"):
            persist.save_all()
        persist.track("a", torch.nn.Linear(2, 2))
        with pytest.raises(mp.PersistError, match="periodic"):
            persist.save_all("performance")
        assert store.calls["write"] == 0
        final = persist.save_all("final")
        assert persist.flush(timeout=10)
        assert [(v.category, v.tags.get(CUT)) for v in store.list_versions("a")] == [("final", final)]
    finally:
        persist.close(final_checkpoints=False)
