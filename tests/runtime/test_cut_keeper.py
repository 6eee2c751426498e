"""The cut keeper: a system checkpoint (cut) is marked complete on every member version only once every
member's save is registered and every extra condition holds; a member that failed abandons the cut; the
keeper thread stops on close. Results are read back from the MemoryStore's registry (the tags it holds)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from runtime_support import CUT, CUT_COMPLETE, payload, register, wait_until

from mlflow_persist._policy.versions import VersionInfo
from mlflow_persist._runtime.cut_keeper import MAX_PENDING_CUTS, RECENT_CUTS, CutKeeper, PendingCut
from mlflow_persist._runtime.outbox import Outbox
from mlflow_persist._runtime.writer import SaveJob
from mlflow_persist.testing import MemoryStore

KEEPER_THREAD = "mlflow-persist-cuts"


def _job(model: str, step: int = 1) -> SaveJob:
    return SaveJob(model, "periodic", step, {})


def _marked(store: MemoryStore, name: str) -> list[int]:
    """The versions of `name` that carry the completion marker, read from the store's registry."""
    return [v.version for v in store.list_versions(name) if v.tags.get(CUT_COMPLETE) == "true"]


def _cut(cut_id: str, jobs: dict[str, SaveJob], conditions: list[Callable[[], bool]] | None = None) -> PendingCut:
    return PendingCut(cut_id, jobs, {name: name for name in jobs}, list(conditions or []))


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def keeper(store: MemoryStore) -> Iterator[CutKeeper]:
    keeper = CutKeeper(store)
    yield keeper
    keeper.close(timeout=5)


def test_a_cut_is_marked_only_after_every_member_is_registered(store: MemoryStore, keeper: CutKeeper) -> None:
    dqn, cnn = register(store, "dqn", "periodic", 10), register(store, "cnn", "periodic", 10)
    jobs = {"dqn": _job("dqn", 10), "cnn": _job("cnn", 10)}
    cut = keeper.add(_cut("00000001-aaaa", jobs))

    jobs["dqn"].finish("saved", result=dqn)
    assert not cut.done.wait(0.5), "the cut ended while one member was still being saved"
    assert cut.outcome == "pending" and keeper.pending() == 1
    assert _marked(store, "dqn") == [] and store.calls["tag"] == 0

    jobs["cnn"].finish("saved", result=cnn)
    assert cut.done.wait(10)
    assert cut.outcome == "complete"
    assert _marked(store, "dqn") == [dqn.version] and _marked(store, "cnn") == [cnn.version]
    assert keeper.wait(5) and keeper.pending() == 0
    assert (keeper.completed, keeper.abandoned, keeper.last_complete) == (1, 0, "00000001-aaaa")


def test_a_cut_waits_for_its_extra_conditions(store: MemoryStore, keeper: CutKeeper) -> None:
    info = register(store, "dqn", "periodic", 5)
    episodes_written = threading.Event()
    asked: list[bool] = []

    def episodes_durable() -> bool:
        asked.append(episodes_written.is_set())
        return episodes_written.is_set()

    job = _job("dqn", 5)
    cut = keeper.add(_cut("00000001-bbbb", {"dqn": job}, [episodes_durable]))
    job.finish("saved", result=info)
    assert wait_until(lambda: len(asked) >= 2), "the keeper never asked the cut's condition"
    assert not cut.done.is_set() and _marked(store, "dqn") == []

    episodes_written.set()
    assert cut.done.wait(10) and cut.outcome == "complete"
    assert _marked(store, "dqn") == [info.version]


@pytest.mark.parametrize("outcome", ["failed", "dropped", "superseded"])
def test_a_member_that_was_not_saved_abandons_the_cut(store: MemoryStore, keeper: CutKeeper, outcome: str) -> None:
    saved = register(store, "dqn", "periodic", 7)
    jobs = {"dqn": _job("dqn", 7), "cnn": _job("cnn", 7)}
    cut = keeper.add(_cut("00000001-cccc", jobs))
    jobs["dqn"].finish("saved", result=saved)
    jobs["cnn"].finish(outcome, error=OSError("disk gone") if outcome == "failed" else None)

    assert cut.done.wait(10)
    assert cut.outcome == "abandoned"
    assert _marked(store, "dqn") == [] and store.calls["tag"] == 0  # the saved member is never marked
    assert keeper.wait(5) and (keeper.completed, keeper.abandoned, keeper.last_complete) == (0, 1, None)


def test_behind_an_outbox_a_member_counts_once_its_version_with_the_cut_is_in_the_registry(
    store: MemoryStore, keeper: CutKeeper, tmp_path: Path
) -> None:
    """The save of an outboxed member ends with an outbox entry, not a version: the keeper looks the version
    up in the registry (under the registered name) by the cut's id."""
    cut_id = "00000003-dddd"
    entry = Outbox(tmp_path / "outbox").put(
        model="dqn",
        registered_name="team-dqn",
        run_id="run",
        dirname="dqn-3",
        payload=payload("dqn", 3),
        category="periodic",
        step=3,
        value=None,
        improvement=None,
        also=[],
        tags={CUT: cut_id},
    )
    older = register(store, "team-dqn", "periodic", 1, extra_tags={CUT: "00000001-old0"})  # another cut's
    job = _job("dqn", 3)
    cut = keeper.add(PendingCut(cut_id, {"dqn": job}, {"dqn": "team-dqn"}))
    job.finish("saved", result=entry)
    assert not cut.done.wait(0.5), "marked before the outbox entry was registered"
    assert _marked(store, "team-dqn") == []

    mine = register(store, "team-dqn", "periodic", 3, extra_tags={CUT: cut_id})  # the outbox drained
    assert cut.done.wait(10) and cut.outcome == "complete"
    assert _marked(store, "team-dqn") == [mine.version] and older.version not in _marked(store, "team-dqn")


def test_a_marker_the_store_refuses_is_retried_until_it_is_recorded(store: MemoryStore, keeper: CutKeeper) -> None:
    info = register(store, "dqn", "periodic", 2)
    store.fail("tag", times=1)
    job = _job("dqn", 2)
    cut = keeper.add(_cut("00000001-eeee", {"dqn": job}))
    job.finish("saved", result=info)
    assert cut.done.wait(15) and cut.outcome == "complete"
    assert _marked(store, "dqn") == [info.version]
    assert store.calls["tag"] == 2  # the refused call and the retry


def test_cuts_are_taken_oldest_first(store: MemoryStore, keeper: CutKeeper) -> None:
    first_info, second_info = register(store, "dqn", "periodic", 1), register(store, "dqn", "periodic", 2)
    first_job, second_job = _job("dqn", 1), _job("dqn", 2)
    first = keeper.add(_cut("00000001-ffff", {"dqn": first_job}))
    second = keeper.add(_cut("00000002-ffff", {"dqn": second_job}))
    second_job.finish("saved", result=second_info)
    assert not second.done.wait(0.5), "a newer cut was marked while an older one was still pending"
    assert _marked(store, "dqn") == [] and keeper.pending() == 2

    first_job.finish("saved", result=first_info)
    assert first.done.wait(10) and second.done.wait(10)
    assert first.outcome == second.outcome == "complete"
    assert _marked(store, "dqn") == [first_info.version, second_info.version]
    assert keeper.last_complete == "00000002-ffff"


def test_wait_reports_a_timeout_while_a_cut_is_pending(keeper: CutKeeper) -> None:
    assert keeper.wait(1)  # nothing pending
    job = _job("dqn")
    keeper.add(_cut("00000001-0000", {"dqn": job}))
    assert not keeper.wait(0.3)
    job.finish("failed", error=OSError("x"))
    assert keeper.wait(10)


def test_close_abandons_what_is_still_pending_and_stops_the_thread(store: MemoryStore) -> None:
    before = set(threading.enumerate())
    keeper = CutKeeper(store)
    threads = [t for t in threading.enumerate() if t not in before and t.name == KEEPER_THREAD]
    assert len(threads) == 1 and threads[0].is_alive()

    info = register(store, "dqn", "periodic", 1)
    saved, stuck = _job("dqn"), _job("cnn")
    cut = keeper.add(_cut("00000001-1111", {"dqn": saved, "cnn": stuck}))
    saved.finish("saved", result=info)
    keeper.close(timeout=0.3)

    assert cut.done.is_set() and cut.outcome == "abandoned"
    threads[0].join(5)
    assert not threads[0].is_alive()
    assert keeper.pending() == 0 and keeper.abandoned == 1
    stuck.finish("saved", result=info)  # too late: the keeper is gone and marks nothing
    assert _marked(store, "dqn") == [] and store.calls["tag"] == 0


def test_close_of_an_idle_keeper_returns_promptly_and_stops_the_thread(store: MemoryStore) -> None:
    before = set(threading.enumerate())
    keeper = CutKeeper(store)
    (thread,) = [t for t in threading.enumerate() if t not in before and t.name == KEEPER_THREAD]
    closed = threading.Event()
    threading.Thread(target=lambda: (keeper.close(timeout=30), closed.set()), daemon=True).start()
    assert closed.wait(10)
    thread.join(5)
    assert not thread.is_alive()


def test_too_many_pending_cuts_give_up_the_oldest(keeper: CutKeeper) -> None:
    cuts = [keeper.add(_cut(f"{n:08d}-gggg", {"dqn": _job("dqn", n)})) for n in range(1, MAX_PENDING_CUTS + 2)]
    assert cuts[0].done.is_set() and cuts[0].outcome == "abandoned"
    assert not any(c.done.is_set() for c in cuts[1:])
    assert keeper.pending() == MAX_PENDING_CUTS and keeper.abandoned == 1
    for cut in cuts[1:]:
        for job in cut.jobs.values():
            job.finish("dropped")
    assert keeper.wait(15) and all(c.outcome == "abandoned" for c in cuts)


def test_find_knows_the_recent_cuts_only(keeper: CutKeeper) -> None:
    cuts = [keeper.add(_cut(f"{n:08d}-hhhh", {"dqn": _job("dqn", n)})) for n in range(1, RECENT_CUTS + 3)]
    assert keeper.find(cuts[-1].id) is cuts[-1]
    assert keeper.find(cuts[-RECENT_CUTS].id) is cuts[-RECENT_CUTS]
    assert keeper.find(cuts[0].id) is None and keeper.find(cuts[1].id) is None
    assert keeper.find("00000099-none") is None
    for cut in cuts:
        for job in cut.jobs.values():
            job.finish("dropped")
    assert keeper.wait(15)
    assert keeper.find(cuts[-1].id) is cuts[-1] and cuts[-1].outcome == "abandoned"  # still found after it ended


def test_a_cut_closed_while_its_marker_is_written_is_reported_as_the_registry_records_it(
    store: MemoryStore,
) -> None:
    before = set(threading.enumerate())
    keeper = CutKeeper(store)
    (thread,) = [t for t in threading.enumerate() if t not in before and t.name == KEEPER_THREAD]
    info = register(store, "dqn", "periodic", 1)
    store.hang("tag", 1.0)  # the marker write is slow (a slow server)
    job = _job("dqn")
    cut = keeper.add(_cut("00000001-iiii", {"dqn": job}))
    job.finish("saved", result=info)
    assert wait_until(lambda: store.calls["tag"] >= 1), "the keeper never started writing the marker"

    seen: list[str] = []
    watcher = threading.Thread(target=lambda: (cut.done.wait(30), seen.append(cut.outcome)), daemon=True)
    watcher.start()
    keeper.close(timeout=0.2)  # times out while the marker is being written
    watcher.join(10)
    thread.join(10)
    assert not thread.is_alive()

    marked_in_registry = _marked(store, "dqn") == [info.version]
    # What a waiter was told must be what the registry holds, and the cut is counted once.
    assert seen == ["complete" if marked_in_registry else "abandoned"]
    assert keeper.completed + keeper.abandoned == 1


def test_a_member_result_that_is_a_version_is_used_as_it_is(store: MemoryStore, keeper: CutKeeper) -> None:
    """A member registered directly hands its version to the keeper: the marker goes on exactly that version,
    not on a newer one of the same model registered meanwhile."""
    info = register(store, "dqn", "periodic", 4)
    newer = register(store, "dqn", "periodic", 5)
    job = _job("dqn", 4)
    cut = keeper.add(_cut("00000001-jjjj", {"dqn": job}))
    job.finish("saved", result=VersionInfo(info.name, info.version, info.source, info.run_id, dict(info.tags)))
    assert cut.done.wait(10) and cut.outcome == "complete"
    assert _marked(store, "dqn") == [info.version] and newer.version not in _marked(store, "dqn")
