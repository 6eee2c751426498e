"""The background writer: replacement rules, bounded memory, retries."""

from __future__ import annotations

import threading
import time

from mlflow_persist._policy.overhead import OverheadBudget
from mlflow_persist._runtime.writer import CheckpointWriter, SaveJob


class GatedExecutor:
    """Blocks each write until released, and fails the first `failures` attempts."""

    def __init__(self, failures: int = 0) -> None:
        self.gate = threading.Event()
        self.started = threading.Event()
        self.failures = failures
        self.written: list[tuple[str, str, int]] = []

    def __call__(self, job: SaveJob) -> int:
        self.started.set()
        self.gate.wait(10)
        if self.failures > 0:
            self.failures -= 1
            raise OSError("injected failure")
        self.written.append((job.model, job.category, job.step))
        return len(self.written)


def _job(model: str, category: str, step: int, forced: bool = False) -> SaveJob:
    return SaveJob(model, category, step, {"blob": bytearray(10)}, forced=forced)


def test_newest_state_wins_but_a_waiting_performance_save_is_never_replaced_by_a_periodic_one() -> None:
    executor = GatedExecutor()
    writer = CheckpointWriter(executor, queue_size=8)
    first = writer.submit(_job("a", "periodic", 1))
    assert executor.started.wait(5)
    perf = writer.submit(_job("a", "performance", 2))
    periodic = writer.submit(_job("a", "periodic", 3))
    assert periodic.outcome == "dropped" and writer.attach_to_waiting("a", "periodic") and perf.also == ["periodic"]
    better = writer.submit(_job("a", "performance", 4))
    assert perf.outcome == "superseded" and better.also == ["periodic"]
    other_model = writer.submit(_job("b", "periodic", 5))
    assert writer.pending("a") == 2  # one running, one waiting: the memory bound
    executor.gate.set()
    assert writer.flush(timeout=10)
    assert first.outcome == better.outcome == other_model.outcome == "saved"
    assert executor.written == [("a", "periodic", 1), ("a", "performance", 4), ("b", "periodic", 5)]
    assert first.payload == {}  # snapshot memory released
    writer.close()


def test_a_forced_save_queues_behind_a_waiting_performance_save_and_is_never_skipped_for_it() -> None:
    """A system checkpoint right after an improvement: the forced snapshot does not wait for the performance one
    to start (with a bound on waits it would be skipped on a busy writer); both are written, in order."""
    executor = GatedExecutor()
    writer = CheckpointWriter(executor, max_submit_wait=0.05)
    writer.submit(_job("a", "periodic", 1))
    assert executor.started.wait(5)
    perf = writer.submit(_job("a", "performance", 2))
    final = writer.submit(_job("a", "final", 3, forced=True))
    assert final.outcome == "pending" and writer.skipped == 0
    assert writer.pending("a") == 3  # one running, the performance one, the forced one: the memory bound
    second = writer.submit(_job("a", "final", 4, forced=True))  # a second forced one waits, bounded
    assert second.outcome == "dropped" and writer.skipped == 1
    executor.gate.set()
    assert writer.flush(timeout=10)
    assert perf.outcome == final.outcome == "saved"
    assert [w[1:] for w in executor.written] == [("periodic", 1), ("performance", 2), ("final", 3)]
    writer.close()


def test_a_forced_save_queues_behind_a_waiting_forced_save_instead_of_waiting_for_the_writer() -> None:
    """An episode save and a system checkpoint at the same bar (the trading system takes both): the cut's snapshot
    does not wait for the episode one to start, which on a busy writer stalled training for a save's length."""
    executor = GatedExecutor()
    writer = CheckpointWriter(executor, max_submit_wait=0.05)
    writer.submit(_job("a", "performance", 1))
    assert executor.started.wait(5)
    episode = writer.submit(_job("a", "episode", 2, forced=True))
    cut = writer.submit(_job("a", "periodic", 2, forced=True))  # until now: waited 0.05 s, then skipped
    assert cut.outcome == "pending" and writer.skipped == 0
    assert writer.pending("a") == 3  # one running, the episode one, the cut's one: the memory bound
    executor.gate.set()
    assert writer.flush(timeout=10)
    assert episode.outcome == cut.outcome == "saved" and cut.also == [] and episode.also == []
    assert [w[1:] for w in executor.written] == [("performance", 1), ("episode", 2), ("periodic", 2)]
    writer.close()


def test_failures_are_retried_with_backoff_and_reported() -> None:
    executor = GatedExecutor(failures=2)
    executor.gate.set()
    reports: list[tuple[int, bool]] = []
    writer = CheckpointWriter(
        executor, max_attempts=5, on_failure=lambda job, exc, final: reports.append((job.attempts, final))
    )
    job = writer.submit(_job("a", "performance", 1))
    assert job.done.wait(10) and job.outcome == "saved" and job.attempts == 3
    assert reports == [(1, False), (2, False)]
    writer.close()


def test_a_save_that_never_succeeds_is_kept_as_failed() -> None:
    executor = GatedExecutor(failures=100)
    executor.gate.set()
    finals: list[bool] = []
    writer = CheckpointWriter(
        executor, max_attempts=2, max_backoff_seconds=0.05, on_failure=lambda job, exc, final: finals.append(final)
    )
    job = writer.submit(_job("a", "final", 9, forced=True))
    assert job.done.wait(10)
    assert job.outcome == "failed" and isinstance(job.error, OSError)
    assert finals == [False, True] and list(writer.failed) == [job] and writer.failures == 1
    writer.close()


def test_queue_bound_applies_back_pressure() -> None:
    executor = GatedExecutor()
    writer = CheckpointWriter(executor, queue_size=1)
    writer.submit(_job("a", "periodic", 1))
    assert executor.started.wait(5)
    writer.submit(_job("b", "periodic", 1))
    threading.Timer(0.3, executor.gate.set).start()
    writer.submit(_job("c", "periodic", 1))  # waits until "b" leaves the queue
    assert executor.gate.is_set()  # it could not return before the writer was released
    assert writer.flush(timeout=10)
    assert sorted(m for m, _, _ in executor.written) == ["a", "b", "c"]
    writer.close()


def test_a_replacing_snapshot_carries_the_categories_of_the_one_it_replaces() -> None:
    executor = GatedExecutor()
    writer = CheckpointWriter(executor, queue_size=8)
    writer.submit(_job("a", "performance", 1))
    assert executor.started.wait(5)
    periodic = writer.submit(_job("a", "periodic", 2))
    perf = writer.submit(_job("a", "performance", 3))  # replaces the waiting periodic snapshot
    assert periodic.outcome == "superseded" and perf.also == ["periodic"]
    executor.gate.set()
    assert writer.flush(timeout=10)
    writer.close()


def test_a_waiting_forced_save_is_never_replaced() -> None:
    executor = GatedExecutor()
    writer = CheckpointWriter(executor, queue_size=8)
    writer.submit(_job("a", "performance", 1))
    assert executor.started.wait(5)
    final = writer.submit(_job("a", "final", 2, forced=True))
    periodic = writer.submit(_job("a", "periodic", 3))
    perf = writer.submit(_job("a", "performance", 4))
    assert periodic.outcome == "dropped" and perf.outcome == "dropped"
    assert final.also == ["periodic"]  # the periodic version shares the final snapshot's bytes
    executor.gate.set()
    assert writer.flush(timeout=10)
    assert final.outcome == "saved"
    assert ("a", "final", 2) in executor.written
    writer.close()


def test_a_failed_forced_save_hands_its_categories_to_the_newer_snapshot() -> None:
    executor = GatedExecutor(failures=1)
    writer = CheckpointWriter(executor, queue_size=8, max_backoff_seconds=0.01)
    final = writer.submit(_job("a", "final", 1, forced=True))
    assert executor.started.wait(5)
    perf = writer.submit(_job("a", "performance", 2))
    executor.gate.set()
    assert writer.flush(timeout=10)
    assert final.outcome == "superseded" and perf.outcome == "saved"
    assert perf.also == ["final"] and perf.forced
    writer.close()


def test_a_failed_performance_save_is_retried_before_the_newer_snapshot_and_both_are_written() -> None:
    executor = GatedExecutor(failures=1)
    writer = CheckpointWriter(executor, queue_size=8, max_backoff_seconds=0.01)
    perf = writer.submit(_job("a", "performance", 1))
    assert executor.started.wait(5)
    final = writer.submit(_job("a", "final", 2, forced=True))
    executor.gate.set()
    assert writer.flush(timeout=10)
    assert perf.outcome == "saved" and final.outcome == "saved"
    assert executor.written == [("a", "performance", 1), ("a", "final", 2)]
    writer.close()


def test_a_failed_performance_save_behind_which_a_newer_one_was_moved_up_is_taken_over_by_it() -> None:
    executor = GatedExecutor(failures=1)
    writer = CheckpointWriter(executor, max_backoff_seconds=0.01, max_submit_wait=0.05)
    older = writer.submit(_job("a", "performance", 1))
    assert executor.started.wait(5)
    newer = writer.submit(_job("a", "performance", 2))
    final = writer.submit(_job("a", "final", 3, forced=True))  # moves `newer` up, queues behind it
    executor.gate.set()  # `older` fails: the newer, better state takes over its categories
    assert writer.flush(timeout=10)
    assert older.outcome == "superseded" and newer.outcome == final.outcome == "saved"
    assert executor.written == [("a", "performance", 2), ("a", "final", 3)]
    assert writer.pending() == 0
    writer.close()


def _spent_budget(seconds_owed: float) -> OverheadBudget:
    """A budget whose next performance save is due `seconds_owed` seconds from now (max_overhead 1)."""
    budget = OverheadBudget(max_overhead=1.0, burst=0.0)
    budget.charge(seconds_owed, time.monotonic())
    return budget


def test_performance_saves_over_the_budget_are_coalesced_and_the_newest_lands_when_it_allows() -> None:
    written: list[tuple[str, str, int]] = []
    writer = CheckpointWriter(
        lambda job: written.append((job.model, job.category, job.step)), budget=_spent_budget(1.0)
    )
    submitted = time.monotonic()
    jobs = [writer.submit(_job("a", "performance", step)) for step in (1, 2, 3)]
    assert all(job.done.wait(10) for job in jobs)
    assert [job.outcome for job in jobs] == ["superseded", "superseded", "saved"]
    assert written == [("a", "performance", 3)]
    assert time.monotonic() - submitted >= 0.9  # held back until the budget allowed it
    assert writer.deferred == 3
    writer.close()


def test_periodic_and_forced_saves_are_never_held_back_and_a_forced_one_releases_the_held_performance_save() -> None:
    written: list[tuple[str, str, int]] = []
    writer = CheckpointWriter(
        lambda job: written.append((job.model, job.category, job.step)), budget=_spent_budget(60.0)
    )
    periodic = writer.submit(_job("b", "periodic", 1))
    held = writer.submit(_job("a", "performance", 2))
    assert periodic.done.wait(10) and periodic.outcome == "saved"
    assert not held.done.wait(0.3)  # held back: the budget owes a minute
    forced = writer.submit(_job("a", "final", 3, forced=True))
    assert forced.done.wait(10) and held.done.wait(10)
    assert (held.outcome, forced.outcome) == ("saved", "saved")
    assert written == [("b", "periodic", 1), ("a", "performance", 2), ("a", "final", 3)]
    writer.close()


def test_a_flush_releases_what_the_budget_holds_back() -> None:
    written: list[int] = []
    writer = CheckpointWriter(lambda job: written.append(job.step), budget=_spent_budget(60.0))
    held = writer.submit(_job("a", "performance", 7))
    started = time.monotonic()
    assert writer.flush(timeout=10)
    assert held.outcome == "saved" and written == [7] and time.monotonic() - started < 5
    writer.close()


def test_a_periodic_due_after_a_held_performance_save_was_released_but_not_yet_taken_is_its_own_snapshot() -> None:
    """Released by a flush while the writer is busy with another model, the once-held snapshot still waits, as
    old as the budget made it: a periodic save due now takes a snapshot of its own step (CI caught a periodic
    registered at step 15 that the trainer decided later, after the held one was released)."""
    executor = GatedExecutor()
    writer = CheckpointWriter(executor, budget=_spent_budget(60.0))
    busy = writer.submit(_job("b", "periodic", 1))
    assert executor.started.wait(5)
    held = writer.submit(_job("a", "performance", 4))
    assert not writer.flush(timeout=0.05)  # releases what the budget holds; the writer is still on "b"
    assert not writer.attach_to_waiting("a", "periodic")
    periodic = writer.submit(_job("a", "periodic", 9))
    assert periodic.outcome == "pending" and held.outcome == "pending"
    executor.gate.set()
    assert writer.flush(timeout=10)
    assert (busy.outcome, held.outcome, periodic.outcome) == ("saved", "saved", "saved")
    assert executor.written == [("b", "periodic", 1), ("a", "performance", 4), ("a", "periodic", 9)]
    writer.close()


def test_a_periodic_due_while_a_performance_save_is_held_is_a_snapshot_of_its_own_step() -> None:
    """A periodic save holds the state of the step it was decided at. Riding on a performance snapshot the budget
    holds back (up to a minute old) registered a periodic version of an older state: CI caught a periodic at
    step 15 that the trainer had decided later. The held save is released and written first, then the periodic
    one (a third snapshot of the model at most)."""
    written: list[tuple[str, str, int, tuple[str, ...]]] = []
    writer = CheckpointWriter(
        lambda job: written.append((job.model, job.category, job.step, tuple(job.also))), budget=_spent_budget(60.0)
    )
    held = writer.submit(_job("a", "performance", 4))
    assert not held.done.wait(0.3)  # held back by the budget
    assert not writer.attach_to_waiting("a", "periodic")  # not onto an older, held snapshot
    periodic = writer.submit(_job("a", "periodic", 9))
    assert periodic.done.wait(5) and held.done.wait(5)
    assert (held.outcome, periodic.outcome) == ("saved", "saved")
    assert written == [("a", "performance", 4, ()), ("a", "periodic", 9, ())]
    writer.close()
