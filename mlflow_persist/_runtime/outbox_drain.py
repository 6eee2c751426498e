"""The outbox half of a model's save pipeline: behind a tracking server every checkpoint is first complete on
local disk (outbox.py); this uploads and registers the waiting entries in order, and stops at the first failure so
the rest wait, in order, for the next drain (the scheduler tick, the next save, or the next start). An entry the
store refuses again and again (not an outage) is set aside after a bounded time, so it never blocks the rest."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from mlflow_persist._observe.logs import package_logger
from mlflow_persist._policy.versions import VersionInfo
from mlflow_persist._runtime.health import ModelHealth
from mlflow_persist._runtime.outbox import Outbox, OutboxEntry
from mlflow_persist._runtime.registration import Registration
from mlflow_persist._store.protocol import CheckpointStore
from mlflow_persist.errors import NotFoundError, describe_store_error, is_unreachable

__all__ = ["ENTRY_GIVE_UP_SECONDS", "MAX_ENTRY_FAILURES", "OutboxDrain"]

#: An entry the store keeps refusing (it answers, with an error) is set aside after this many refusals ...
MAX_ENTRY_FAILURES = 5
#: ... spread over at least this long, so a server that errs for a while does not cost a checkpoint.
ENTRY_GIVE_UP_SECONDS = 600.0

log = package_logger("mlflow_persist")


class OutboxDrain:
    """Drains one model's outbox entries into the registry; `SavePipeline` provides the state and `register`."""

    name: str
    registered_name: str
    store: CheckpointStore
    outbox: Outbox | None
    health: ModelHealth
    _drain_lock: threading.Lock

    # SavePipeline.register(source, reg, started, run_id=None, acknowledge=None) -> VersionInfo
    register: Callable[..., VersionInfo]

    def drain_outbox(self, blocking: bool = False) -> int:
        """Upload and register this model's outbox entries in order; stops at the first failure (the rest
        wait for the next drain). Returns how many are still waiting (-1: another thread is draining and
        `blocking` is False). Never raises."""
        if self.outbox is None:
            return 0
        if not self._drain_lock.acquire(blocking=blocking):
            return -1
        try:
            with self.outbox.lock(self.registered_name):
                return self._drain_locked(self.outbox)
        finally:
            self._drain_lock.release()

    def _drain_locked(self, outbox: Outbox) -> int:
        entries = outbox.entries(self.registered_name, sweep=True)
        for position, entry in enumerate(entries):
            started = time.monotonic()
            if not outbox.is_intact(entry):  # damaged on disk: it would block every later entry forever
                moved = outbox.quarantine(entry)
                log.error(
                    "%s: outbox checkpoint of step %d is incomplete or damaged; moved it to %s and went on "
                    "with the next one",
                    self.name,
                    entry.step,
                    moved,
                )
                continue
            try:
                self._register_entry(entry, started)
            except Exception as exc:  # noqa: BLE001 - the entry stays on disk for the next drain
                if isinstance(exc, NotFoundError) and "run" in str(exc).lower():
                    moved = outbox.quarantine(entry)
                    log.error(
                        "%s: outbox checkpoint of step %d belongs to run %s, which the server no longer has; "
                        "moved it to %s for the operator",
                        self.name,
                        entry.step,
                        entry.run_id,
                        moved,
                    )
                    continue
                self.health.record_failure(entry.category, entry.step, exc, attempts=None, final=False)
                if not is_unreachable(exc) and self._refused_for_good(outbox, entry, exc):
                    continue
                return len(entries) - position
            outbox.remove(entry)
        return 0

    def _refused_for_good(self, outbox: Outbox, entry: OutboxEntry, exc: BaseException) -> bool:
        """The store answered, and refused the entry: after MAX_ENTRY_FAILURES refusals over at least
        ENTRY_GIVE_UP_SECONDS it is set aside (kept for the operator) with an alert, so it stops blocking the
        entries behind it; until then the queue waits, in order, as in an outage."""
        reason = describe_store_error(exc)
        failures, first = outbox.record_failure(entry, reason)
        if failures < MAX_ENTRY_FAILURES or time.time() - first < ENTRY_GIVE_UP_SECONDS:
            return False
        moved = outbox.quarantine(entry)
        self.health.alert(
            "outbox_entry_abandoned",
            f"the {entry.category} checkpoint of step {entry.step} was refused {failures} times ({reason}); "
            f"moved it to {moved} and went on with the next ones",
            {"step": entry.step, "category": entry.category, "error": reason[:500], "path": str(moved)},
        )
        return True

    def _register_entry(self, entry: OutboxEntry, started: float) -> None:
        source = self.store.upload_checkpoint_files(entry.run_id, entry.directory, entry.dirname)
        registration = Registration(
            entry.category,
            entry.step,
            entry.value,
            entry.improvement,
            entry.also,
            entry.created_at,
            entry.checksum,
            entry.size_bytes,
            retried=True,
            tags=dict(entry.tags),
        )
        self.register(source, registration, started, run_id=entry.run_id)

    def pending_outbox(self) -> int:
        return len(self.outbox.entries(self.registered_name)) if self.outbox is not None else 0
