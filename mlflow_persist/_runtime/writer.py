"""The background checkpoint writer: one thread, a bounded set of snapshots, retries with backoff.

Memory stays bounded: per model one snapshot being written, one waiting and at most one queued before that.
A newer snapshot of the same model replaces a waiting one that has not started (the newest state wins) and carries
its categories, so nothing the replaced snapshot was to be registered as is lost. The exceptions:
- a waiting forced snapshot (final, manual), or a waiting performance one met by a non-performance one, is never
  replaced: a newer forced one queues behind it (the waiting one moves to the slot served first: three snapshots
  of a model at most), a newer periodic one is registered on its bytes, any other newer one is dropped;
- a performance snapshot the overhead budget held is never ridden on (its state may be long past): a newer
  periodic or forced one queues behind it, a newer performance one replaces it.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlflow_persist._observe.logs import package_logger
from mlflow_persist._policy.overhead import OverheadBudget
from mlflow_persist._policy.policy import PERFORMANCE, PERIODIC

log = package_logger("mlflow_persist.writer")


@dataclass
class SaveJob:
    model: str
    category: str
    step: int
    payload: dict[str, Any]
    value: float | None = None
    improvement: float | None = None
    forced: bool = False
    submitted_at: float = field(default_factory=time.monotonic)
    also: list[str] = field(default_factory=list)  # more categories registered on the same artifacts
    attempts: int = 0
    not_before: float = 0.0
    held_by_budget: bool = False  # the budget held it back at some point: its state may be long past (until taken)
    outcome: str = "pending"  # pending | saved | superseded | dropped | failed
    result: Any = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    release: Callable[[dict[str, Any]], None] | None = None  # takes the snapshot back for reuse
    ready: Callable[[], None] | None = None  # waits until asynchronous device copies into the payload are complete
    tags: dict[str, str] = field(default_factory=dict)  # more version tags: a cut's, an episode save's monitor
    stored: Any = None  # where the snapshot already lies durably (an outbox entry): a retry must not store it again
    written: Any = None  # (source, WrittenCheckpoint) already in the store: a retry registers it, never writes again

    def finish(self, outcome: str, result: Any = None, error: BaseException | None = None) -> None:
        self.outcome, self.result, self.error = outcome, result, error
        payload, self.payload = self.payload, {}  # no reference kept: the memory is released or reused
        if payload and self.release is not None:
            self.release(payload)
        self.done.set()


WRITER_NICENESS = 10
#: Given-up saves the writer remembers for `close()`'s report (the count in `failures` is complete).
FAILED_KEPT = 100


def lower_this_threads_priority(niceness: int = WRITER_NICENESS) -> None:
    """Give the calling thread a lower CPU priority than the training threads (Linux only, where a thread
    has its own nice value). On two cores the writer's serialization then runs in the gaps of training
    instead of taking a core from torch's own threads; elsewhere this is a no-op."""
    if not sys.platform.startswith("linux"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), niceness))
    except OSError as exc:  # a container without the capability: the writer keeps the normal priority
        log.debug("could not lower the writer thread's priority: %s", exc)


def _keeps_waiting(waiting: SaveJob, newcomer_category: str) -> bool:
    """Whether a waiting snapshot must not be replaced by a newer one of the same model."""
    return waiting.forced or (waiting.category == PERFORMANCE and newcomer_category != PERFORMANCE)


def _carry(into: SaveJob, replaced: SaveJob) -> None:
    """`into` takes over every category `replaced` was to be registered under (and its forcedness)."""
    into.also = sorted((set(into.also) | set(replaced.also) | {replaced.category}) - {into.category})
    into.forced = into.forced or replaced.forced


class CheckpointWriter:
    """Runs `execute(job)` for each submitted snapshot on one background thread."""

    def __init__(
        self,
        execute: Callable[[SaveJob], Any],
        *,
        queue_size: int = 8,
        max_attempts: int = 5,
        max_backoff_seconds: float = 30.0,
        on_failure: Callable[[SaveJob, BaseException, bool], None] | None = None,
        on_success: Callable[[SaveJob], None] | None = None,
        max_submit_wait: float | None = None,
        budget: OverheadBudget | None = None,
    ) -> None:
        self._execute = execute
        self.budget = budget
        self.deferred = 0  # performance snapshots the budget held back (each then landed or was superseded)
        self._max_submit_wait = max_submit_wait
        self._queue_size = queue_size
        self._max_attempts = max_attempts
        self._max_backoff = max_backoff_seconds
        self._on_failure = on_failure
        self._on_success = on_success
        self._cond = threading.Condition()
        self._waiting: dict[str, SaveJob] = {}
        # performance snapshots served ahead of _waiting: failed ones due again, and waiting ones a forced
        # snapshot queued behind
        self._retrying: dict[str, SaveJob] = {}
        self._running: dict[str, SaveJob] = {}
        self._closed = False
        self.dropped = 0
        self.superseded = 0
        self.skipped = 0  # saves given up because the writer stayed busy past max_submit_wait (a slow store)
        self.failures = 0  # every save given up, counted; `failed` keeps the newest FAILED_KEPT of them
        self.failed: deque[SaveJob] = deque(maxlen=FAILED_KEPT)
        self._thread = threading.Thread(target=self._loop, name="mlflow-persist-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------- training side

    def take_waiting(self, model: str, category: str) -> SaveJob | None:
        """The waiting snapshot of `model` that a new `category` snapshot would replace, taken out of the queue
        so that the new snapshot can be copied into its tensors (a third copy of the state never exists).
        None when nothing waits or what waits must stay. Pass it to `submit(job, replacing=...)`."""
        with self._cond:
            waiting = self._waiting.get(model)
            if waiting is None or _keeps_waiting(waiting, category):
                return None
            del self._waiting[model]
            return waiting

    def submit(self, job: SaveJob, replacing: SaveJob | None = None, max_wait: float | None = -1.0) -> SaveJob:
        """Queue `job`; `replacing` is a snapshot `take_waiting` handed out, whose tensors `job` now holds.
        `max_wait`: the longest this call waits for room (None: as long as it takes; default: the writer's
        `max_submit_wait`); past it the save is skipped and counted in `skipped`."""
        limit = self._max_submit_wait if max_wait is not None and max_wait < 0 else max_wait
        with self._cond:
            if replacing is not None:
                replacing.payload = {}  # its tensors belong to `job` now: never released for reuse
                self.superseded += 1
                _carry(job, replacing)
                replacing.finish("superseded")
                self._cond.notify_all()
            if self._closed:
                raise RuntimeError("the checkpoint writer is closed; no more saves are accepted")
            self._apply_budget(job)
            give_up_at = None if limit is None else time.monotonic() + limit
            while True:
                # a job that took over a waiting snapshot's tensors carries that save too: it is never skipped
                if (
                    give_up_at is not None
                    and replacing is None
                    and time.monotonic() >= give_up_at
                    and self._must_wait(job)
                ):
                    self.skipped += 1
                    log.warning(
                        "%s: the %s save of step %d was skipped: the writer has not taken the previous snapshot "
                        "for %.1f s (a slow or hanging store); training goes on",
                        job.model,
                        job.category,
                        job.step,
                        limit,
                        extra={"model": job.model, "category": job.category, "step": job.step, "outcome": "skipped"},
                    )
                    job.finish("dropped", error=TimeoutError("the writer stayed busy; the save was skipped"))
                    return job
                waiting = self._waiting.get(job.model)
                if waiting is not None and _keeps_waiting(waiting, job.category):
                    if (job.forced or waiting.held_by_budget) and job.model not in self._retrying:
                        # the waiting snapshot moves to the slot served first, so this one queues behind it instead
                        # of waiting, or of riding on a held one long past (a third snapshot of the model, at most)
                        self._retrying[job.model] = self._waiting.pop(job.model)
                        self._release_deferred(job.model)
                        continue
                    if not job.forced:
                        if (
                            job.category == PERIODIC
                            and job.category != waiting.category
                            and PERIODIC not in waiting.also
                        ):
                            waiting.also.append(PERIODIC)
                        self.dropped += 1
                        log.debug(
                            "%s: %s snapshot at step %d dropped; a %s save is still waiting",
                            job.model,
                            job.category,
                            job.step,
                            waiting.category,
                        )
                        job.finish("dropped")
                        return job
                    self._cond.wait(self._pause(give_up_at))
                    continue
                if waiting is None and len(self._waiting) >= self._queue_size:
                    self._cond.wait(self._pause(give_up_at))  # back-pressure: bounded memory beats unbounded queueing
                    continue
                break
            if waiting is not None:
                self.superseded += 1
                _carry(job, waiting)
                waiting.finish("superseded")
            self._waiting[job.model] = job
            self._release_deferred(job.model, mixed_only=True)
            self._cond.notify_all()
        return job

    def _apply_budget(self, job: SaveJob) -> None:
        """Hold a performance snapshot back while the overhead budget is spent (a newer one replaces it meanwhile);
        a forced snapshot releases the model's held one, so that it never waits on the budget. Lock held."""
        if self.budget is None:
            return
        if job.forced:
            self._release_deferred(job.model)
            return
        if job.category != PERFORMANCE or job.also:
            return
        now = time.monotonic()
        due = self.budget.next_performance_save(now)
        if due > now:
            job.not_before, job.held_by_budget = max(job.not_before, due), True
            self.deferred += 1

    def _release_deferred(self, model: str | None = None, mixed_only: bool = False) -> None:
        """End the budget's hold on `model`'s queued snapshots (every model's when None); `mixed_only`: on those
        that now carry another category too, as only performance saves wait on the budget. Lock held."""
        for job in [*self._waiting.values(), *self._retrying.values()]:
            held = job.held_by_budget and job.not_before > 0.0 and model in (None, job.model)
            if held and (not mixed_only or job.also or job.forced):
                job.not_before = 0.0  # released; `held_by_budget` stays until the writer takes it
        self._cond.notify_all()

    def _must_wait(self, job: SaveJob) -> bool:
        """Whether `submit` would still wait for `job` (a forced save behind one that keeps waiting, or a full
        queue); called with the lock held."""
        waiting = self._waiting.get(job.model)
        if waiting is not None and _keeps_waiting(waiting, job.category):
            return job.forced
        return waiting is None and len(self._waiting) >= self._queue_size

    @staticmethod
    def _pause(give_up_at: float | None) -> float:
        return 0.5 if give_up_at is None else max(0.001, min(0.5, give_up_at - time.monotonic()))

    def attach_to_waiting(self, model: str, category: str) -> bool:
        """If a performance snapshot of `model` is waiting, register it under `category` too and return True.

        Called before taking a periodic snapshot that would otherwise be dropped: the periodic version then
        shares the waiting checkpoint's artifacts, so periodic saves are never starved by frequent
        improvements and no extra snapshot is held in memory.
        """
        with self._cond:
            waiting = self._waiting.get(model)
            if waiting is None or waiting.category != PERFORMANCE or category == PERFORMANCE or waiting.held_by_budget:
                return False  # a snapshot the budget holds may be long past: the periodic save takes its own
            if category not in waiting.also:
                waiting.also.append(category)
            self._release_deferred(model, mixed_only=True)
            return True

    def pending(self, model: str | None = None) -> int:
        with self._cond:
            jobs = self._all_jobs()
            return sum(1 for j in jobs if model is None or j.model == model)

    def flush(self, model: str | None = None, timeout: float | None = None) -> bool:
        """Wait until nothing of `model` (or of any model) waits or runs; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._release_deferred()  # a flush means now, whatever the budget says
            while any(model is None or j.model == model for j in self._all_jobs()):
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(remaining if remaining is not None else 1.0)
        return True

    def close(self, timeout: float | None = None) -> bool:
        flushed = self.flush(timeout=timeout)
        with self._cond:
            self._closed = True
            leftovers = [*self._retrying.values(), *self._waiting.values()]
            self._waiting.clear()
            self._retrying.clear()
            self._cond.notify_all()
        for job in leftovers:
            job.finish("failed", error=TimeoutError("writer closed before the save could be written"))
            self.failed.append(job)
            self.failures += 1
        self._thread.join(timeout=5 if flushed else 1)
        return flushed

    # ------------------------------------------------------------------------------------- writer side

    def _next_job(self) -> SaveJob | None:
        with self._cond:
            while True:
                if self._closed and not self._waiting and not self._retrying:
                    return None
                now = time.monotonic()
                queued = [
                    *self._retrying.values(),
                    *(j for j in self._waiting.values() if j.model not in self._retrying),
                ]
                ready = [j for j in queued if j.not_before <= now and j.model not in self._running]
                if ready:
                    job = min(ready, key=lambda j: (j.not_before, j.submitted_at))
                    source = self._retrying if self._retrying.get(job.model) is job else self._waiting
                    del source[job.model]
                    self._running[job.model] = job
                    self._cond.notify_all()
                    return job
                delays = [j.not_before - now for j in queued if j.not_before > now]
                self._cond.wait(min(delays) if delays else 1.0)

    def _loop(self) -> None:
        lower_this_threads_priority()
        while True:
            job = self._next_job()
            if job is None:
                return
            job.attempts += 1
            job.held_by_budget = False
            cpu = time.thread_time()
            try:
                result = self._execute(job)
            except BaseException as exc:  # noqa: BLE001 - a failed save must never kill the writer
                failure: BaseException | None = exc
            else:
                failure = None
            self.charge(time.thread_time() - cpu)
            if failure is not None:
                self._handle_failure(job, failure)
            else:
                if not job.done.is_set():  # the pipeline acknowledges a save once it is registered
                    job.finish("saved", result=result)  # before flush() can see the model idle
                with self._cond:
                    self._running.pop(job.model, None)
                    self._cond.notify_all()
                if self._on_success:
                    self._safe(self._on_success, job)

    def charge(self, seconds: float) -> None:
        """Charge the overhead budget: the writer's CPU seconds for a save (in CPython, time the training thread
        could not hold the interpreter lock), or the training thread's own time in one (`ModelHandle`)."""
        if self.budget is not None:
            with self._cond:
                self.budget.charge(seconds, time.monotonic())

    def _handle_failure(self, job: SaveJob, exc: BaseException) -> None:
        with self._cond:
            outcome = self._retry_or_give_up(job)
        if outcome != "retry":
            if outcome == "failed":
                self.failed.append(job)
                self.failures += 1
            job.finish(outcome, error=exc)  # before flush() can see the model idle
        with self._cond:
            self._running.pop(job.model, None)
            self._cond.notify_all()
        if self._on_failure:
            self._safe(self._on_failure, job, exc, outcome == "failed")

    def _retry_or_give_up(self, job: SaveJob) -> str:
        """`retry` (queued again after a backoff), `superseded` (a newer snapshot of the model takes over its
        categories) or `failed` (attempts used up, or the writer is closing). Called with the lock held.

        A failed non-performance snapshot hands its categories to a newer waiting one (a newer state is
        still a right `final` or `periodic`); a failed performance snapshot is retried in its own slot, since
        its value belongs to its own bytes, and is written before the waiting one."""
        if job.attempts >= self._max_attempts or self._closed:
            return "failed"
        job.not_before = time.monotonic() + min(self._max_backoff, 0.5 * 2 ** (job.attempts - 1))
        waiting = self._waiting.get(job.model)
        if job.model in self._retrying:  # a newer performance snapshot is served first: it takes over this one
            _carry(self._retrying[job.model], job)
            return "superseded"
        if waiting is None:
            self._waiting[job.model] = job
        elif job.category == PERFORMANCE:
            self._retrying[job.model] = job
        else:
            _carry(waiting, job)
            return "superseded"
        return "retry"

    def _all_jobs(self) -> list[SaveJob]:
        return [*self._retrying.values(), *self._waiting.values(), *self._running.values()]

    @staticmethod
    def _safe(callback: Callable[..., Any], *args: Any) -> None:
        try:
            callback(*args)
        except Exception:  # noqa: BLE001
            log.exception("checkpoint writer callback failed")


__all__ = ["FAILED_KEPT", "PERIODIC", "CheckpointWriter", "SaveJob"]
