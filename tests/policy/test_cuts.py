"""System checkpoints (cuts) on the MemoryStore: consistent, complete only once marked, restored as one.

Every expected state is a copy the test took itself at the moment of the cut, never read back through the
code under test.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from typing import Any

import pytest
import torch

import mlflow_persist as mp
from mlflow_persist._policy.cuts import (
    CUT_COMPLETE_TAG,
    CUT_MEMBERS_TAG,
    CUT_TAG,
    complete_cuts,
    cut_sequence,
    next_cut_sequence,
)
from mlflow_persist._policy.versions import VersionInfo, tag
from mlflow_persist.testing import MemoryStore


class Counter:
    """Application state: a position and a list of pending items."""

    def __init__(self) -> None:
        self.position = 0
        self.pending: list[int] = []

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position, "pending": list(self.pending)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position, self.pending = state["position"], list(state["pending"])


def _config(**values: Any) -> mp.PersistConfig:
    base = dict(
        tracking_uri="memory://",
        keep_best=100,
        keep_periodic=100,
        keep_final=100,
        log_system_metrics=False,
        min_free_disk_mb=0,
        min_free_disk_percent=0,
        scheduler_interval_seconds=0.05,
    )
    base.update(values)
    return mp.PersistConfig(**base)


class System:
    """Two models and an application state, trained in lockstep."""

    def __init__(self, store: MemoryStore, seed: int = 0, **config: Any) -> None:
        torch.manual_seed(seed)
        self.a, self.b = torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)
        self.opt_a = torch.optim.Adam(self.a.parameters(), lr=0.01)
        self.state = Counter()
        self.persist = mp.Persistence(_config(**config), store=store, install_signal_handlers=False)
        self.ha = self.persist.track("a", self.a, self.opt_a)
        self.hb = self.persist.track("b", self.b)
        self.hs = self.persist.track_state("app", self.state, step=lambda: self.state.position)

    def train(self, steps: int) -> None:
        for _ in range(steps):
            x = torch.randn(4, 3)
            loss = self.b(self.a(x)).pow(2).mean()
            self.opt_a.zero_grad()
            loss.backward()
            self.opt_a.step()
            self.state.position += 1
            self.state.pending = self.state.pending[-2:] + [self.state.position]
            self.ha.step(loss=float(loss.detach()))
            self.hb.step(loss=float(loss.detach()))

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(
            {
                "a": self.a.state_dict(),
                "b": self.b.state_dict(),
                "opt": self.opt_a.state_dict(),
                "app": self.state.state_dict(),
                "steps": (self.ha.current_step, self.hb.current_step),
            }
        )


def _equal(x: Any, y: Any) -> bool:
    if isinstance(x, torch.Tensor):
        return torch.equal(x, y)
    if isinstance(x, dict):
        return x.keys() == y.keys() and all(_equal(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return len(x) == len(y) and all(_equal(i, j) for i, j in zip(x, y))
    return x == y


def _wait(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.02)
    return bool(predicate())


def _restore(store: MemoryStore) -> tuple[System, dict[str, Any]]:
    fresh = System(store, seed=99)
    return fresh, fresh.persist.restore_all()


@contextlib.contextmanager
def _restored(store: MemoryStore) -> Iterator[tuple[System, dict[str, Any]]]:
    """A fresh system on `store` after `restore_all()`, closed without final checkpoints afterwards."""
    fresh, restored = _restore(store)
    try:
        yield fresh, restored
    finally:
        fresh.persist.close(final_checkpoints=False)


def test_restore_all_loads_the_newest_complete_cut_not_the_newest_versions() -> None:
    store = MemoryStore()
    system = System(store)
    system.train(7)
    cut_id = system.persist.save_all()
    at_cut = system.snapshot()
    assert _wait(lambda: system.persist.cuts.completed == 1)
    system.train(5)
    system.ha.save("performance")  # a newer version of `a` that is not part of the cut
    assert system.persist.flush(timeout=10)
    newest_a = store.list_versions("a")[-1]
    system.persist.close(final_checkpoints=False)

    members = {v.tags[CUT_TAG]: v for v in store.list_versions("a") if v.cut}
    assert set(members) == {cut_id}
    assert newest_a.cut is None and newest_a.step == 12
    for name in ("a", "b", "app"):
        version = next(v for v in store.list_versions(name) if v.cut == cut_id)
        assert version.cut_complete and version.tags[CUT_MEMBERS_TAG] == "a,app,b"

    with _restored(store) as (fresh, restored):
        assert {info.cut for info in restored.values()} == {cut_id}
        assert _equal(fresh.a.state_dict(), at_cut["a"]) and _equal(fresh.b.state_dict(), at_cut["b"])
        assert _equal(fresh.opt_a.state_dict(), at_cut["opt"])
        assert fresh.state.state_dict() == at_cut["app"] == {"position": 7, "pending": [5, 6, 7]}
        assert (fresh.ha.current_step, fresh.hb.current_step) == at_cut["steps"] and restored["app"].step == 7


def test_a_cut_whose_member_never_registers_stays_incomplete_and_the_previous_one_is_restored() -> None:
    store = MemoryStore()
    system = System(store, save_retry_attempts=2, save_retry_max_wait_seconds=0.05)
    system.train(4)
    first = system.persist.save_all()
    at_first = system.snapshot()
    assert _wait(lambda: system.persist.cuts.completed == 1)
    system.train(3)
    store.fail("register", times=None)  # every later registration fails: the next cut cannot complete
    second = system.persist.save_all()
    assert _wait(lambda: system.persist.cuts.abandoned == 1)
    store.heal()
    with pytest.raises(mp.PersistError, match="could never be written"):  # close() reports the lost saves
        system.persist.close(final_checkpoints=False)
    assert not any(v.cut == second and v.cut_complete for n in ("a", "b", "app") for v in store.list_versions(n))

    with _restored(store) as (fresh, restored):
        assert {info.cut for info in restored.values()} == {first}
        assert fresh.state.state_dict() == at_first["app"]
        assert _equal(fresh.a.state_dict(), at_first["a"])


def test_a_cut_waits_for_its_conditions_and_an_unmarked_cut_is_never_restored() -> None:
    """Members registered, marker not yet recorded (the application's own data is not durable yet): a
    restart at that moment resumes from the cut before."""
    store = MemoryStore()
    system = System(store)
    system.train(3)
    first = system.persist.save_all()
    assert _wait(lambda: system.persist.cuts.completed == 1)
    system.train(3)
    durable = {"episodes": False}
    second = system.persist.save_all(wait_for=[lambda: durable["episodes"]])
    assert system.persist.flush(timeout=10)
    assert all(any(v.cut == second for v in store.list_versions(n)) for n in ("a", "b", "app"))
    time.sleep(0.5)
    assert system.persist.cuts.completed == 1  # registered, but not complete

    with _restored(store) as (fresh, restored):  # a restart now (the first process is still waiting)
        assert {info.cut for info in restored.values()} == {first}
    durable["episodes"] = True
    assert _wait(lambda: system.persist.cuts.completed == 2)
    system.persist.close(final_checkpoints=False)
    with _restored(store) as (later, restored):
        assert {info.cut for info in restored.values()} == {second}


def test_a_damaged_member_is_tagged_corrupt_and_the_older_cut_restores() -> None:
    store = MemoryStore()
    system = System(store)
    system.train(2)
    first = system.persist.save_all()
    at_first = system.snapshot()
    system.train(2)
    second = system.persist.save_all()
    assert _wait(lambda: system.persist.cuts.completed == 2)
    system.persist.close(final_checkpoints=False)
    damaged = next(v for v in store.list_versions("b") if v.cut == second)
    store.corrupt_artifact(damaged.source)

    with _restored(store) as (fresh, restored):
        assert {info.cut for info in restored.values()} == {first}
        assert _equal(fresh.b.state_dict(), at_first["b"]) and fresh.state.state_dict() == at_first["app"]
        assert store.get_version("b", damaged.version).corrupt


def test_close_takes_a_final_cut_and_retention_keeps_the_newest_complete_cut() -> None:
    store = MemoryStore()
    system = System(store, keep_periodic=1, keep_final=1, periodic_every_steps=2)
    system.train(3)
    cut = system.persist.save_all()
    at_cut = system.snapshot()
    assert _wait(lambda: system.persist.cuts.completed == 1)
    system.persist.close(final_checkpoints=False)
    # More periodic saves of model `a` alone, in a process without the application state: the window of one
    # would delete the cut's periodic version, but it is the newest complete cut's member.
    solo = mp.Persistence(_config(keep_periodic=1, periodic_every_steps=1), store=store, install_signal_handlers=False)
    handle = solo.track("a", torch.nn.Linear(3, 2), torch.optim.Adam(torch.nn.Linear(3, 2).parameters()))
    for step in range(20, 26):
        handle.step(step, loss=5.0)
    solo.close(final_checkpoints=False)
    assert any(v.cut == cut for v in store.list_versions("a"))

    fresh, restored = _restore(store)
    try:
        assert {info.cut for info in restored.values()} == {cut}
        assert _equal(fresh.a.state_dict(), at_cut["a"])
        fresh.train(2)
        at_close = fresh.snapshot()
    finally:
        fresh.persist.close()
    with _restored(store) as (final, restored):
        assert {info.category for info in restored.values()} == {"final"}
        assert len({info.cut for info in restored.values()}) == 1
        assert final.state.state_dict() == at_close["app"] and _equal(final.a.state_dict(), at_close["a"])


def test_without_a_complete_cut_models_restore_their_own_newest_and_the_state_stays_fresh() -> None:
    store = MemoryStore()
    system = System(store)
    system.train(4)
    assert system.persist.flush(timeout=10)
    system.persist.close(final_checkpoints=False)  # performance saves only, no cut
    with _restored(store) as (fresh, restored):
        assert set(restored) == {"a", "b"} and all(info.cut is None for info in restored.values())
        assert fresh.state.position == 0


def test_save_all_refuses_a_category_a_cut_cannot_have() -> None:
    store = MemoryStore()
    system = System(store)
    try:
        with pytest.raises(mp.PersistError, match="periodic"):
            system.persist.save_all("performance")
    finally:
        system.persist.close(final_checkpoints=False)


# ------------------------------------------------------------------------------------------ pure logic


def _version(
    name: str, number: int, cut: str | None, members: str, complete: bool = False, corrupt: bool = False
) -> VersionInfo:
    tags = {tag("category"): "periodic", tag("step"): str(number)}
    if cut:
        tags.update({CUT_TAG: cut, CUT_MEMBERS_TAG: members})
    if complete:
        tags[CUT_COMPLETE_TAG] = "true"
    if corrupt:
        tags[tag("corrupt")] = "true"
    return VersionInfo(name, number, f"src/{name}/{number}", "run", tags)


def test_complete_cuts_needs_the_marker_every_member_and_no_corruption() -> None:
    c1, c2, c3, c4 = "00000001-aa", "00000002-bb", "00000003-cc", "00000010-dd"
    versions = {
        "a": [
            _version("a", 1, c1, "a,b", complete=True),
            _version("a", 2, c2, "a,b", complete=True),
            _version("a", 3, c3, "a,b"),
            _version("a", 4, c4, "a,b", complete=True),
        ],
        "b": [
            _version("b", 1, c1, "a,b", complete=True),
            _version("b", 2, c2, "a,b", corrupt=True),
            _version("b", 3, c3, "a,b"),
        ],
    }
    # c4: b's member is missing; c3: no marker; c2: b's member is corrupt; c1: complete
    assert [c.id for c in complete_cuts(versions)] == [c1]
    versions["b"].append(_version("b", 4, c4, "a,b"))
    # c4's marker is on a only (a crash between the two marker writes): not complete
    assert [c.id for c in complete_cuts(versions)] == [c1]
    versions["b"][-1] = _version("b", 4, c4, "a,b", complete=True)
    assert [c.id for c in complete_cuts(versions)] == [c4, c1]
    assert complete_cuts(versions)[0].step == 4
    assert next_cut_sequence(versions) == 11 and cut_sequence(c4) == 10 and cut_sequence("foreign") == -1


def test_a_model_no_longer_tracked_does_not_make_its_cuts_incomplete() -> None:
    store = MemoryStore()
    system = System(store)
    system.train(3)
    cut = system.persist.save_all()
    at_cut = system.snapshot()
    assert _wait(lambda: system.persist.cuts.completed == 1)
    system.persist.close(final_checkpoints=False)
    persist = mp.Persistence(_config(), store=store, install_signal_handlers=False)
    model, state = torch.nn.Linear(3, 2), Counter()
    persist.track("a", model)
    persist.track_state("app", state)
    try:
        restored = persist.restore_all()
        assert set(restored) == {"a", "app"} and {i.cut for i in restored.values()} == {cut}
        assert _equal(model.state_dict(), at_cut["a"]) and state.state_dict() == at_cut["app"]
    finally:
        persist.close(final_checkpoints=False)


def test_with_only_interrupted_cuts_nothing_is_restored_not_each_models_newest() -> None:
    """A process killed before its first cut completed: its per-model checkpoints are newer than the initial
    state but not consistent with each other, so the restart starts from the initial state."""
    store = MemoryStore()
    system = System(store)
    system.train(5)
    system.ha.save("performance")
    durable = {"episodes": False}
    system.persist.save_all(wait_for=[lambda: durable["episodes"]])  # registered, not marked
    assert system.persist.flush(timeout=10)
    with _restored(store) as (fresh, restored):
        assert restored == {}
        assert fresh.state.position == 0 and fresh.ha.current_step == 0
        initial = System(MemoryStore(), seed=99)
        assert _equal(fresh.a.state_dict(), initial.a.state_dict())
        initial.persist.close(final_checkpoints=False)
    durable["episodes"] = True
    system.persist.close(final_checkpoints=False)


@pytest.mark.usefixtures("quick_marker_retries")
@pytest.mark.slow  # seconds of work: in `make test`, not in `make test-fast`
def test_behind_a_server_an_unmarked_but_fully_registered_cut_is_restored(tmp_path: Any) -> None:
    """An outage kept the marker from being written before the process ended; every member is registered.
    Restoring nothing would lose all progress, so the newest fully registered cut is restored."""
    store = MemoryStore(remote=True)
    store.fail("tag", times=None)  # the marker never lands
    system = System(store, outbox_dir=str(tmp_path / "outbox"))
    system.train(4)
    cut = system.persist.save_all()
    at_cut = system.snapshot()
    assert system.persist.flush(timeout=10)  # written to the outbox and registered from it
    system.persist.close(final_checkpoints=False)
    store.heal()
    assert all(any(v.cut == cut and not v.cut_complete for v in store.list_versions(n)) for n in ("a", "b", "app"))
    fresh = System(store, seed=99, outbox_dir=str(tmp_path / "outbox"))
    try:
        restored = fresh.persist.restore_all()
        assert {info.cut for info in restored.values()} == {cut}
        assert fresh.state.state_dict() == at_cut["app"] and _equal(fresh.a.state_dict(), at_cut["a"])
    finally:
        fresh.persist.close(final_checkpoints=False)
