"""`CutKeeper`: records the completion marker of each system checkpoint (cut) once all of it is stored.

One background thread ("mlflow-persist-cuts") takes the pending cuts oldest first. A cut is finished when
every member's save is acknowledged as registered and every extra condition of the cut holds (the caller's
own durability, such as episodes written up to the cut's step); the marker tag then goes onto every member
version. A member whose save failed, was dropped or superseded abandons the cut: it is never marked, and a
restart resumes from an older complete cut. Behind an outbox (a remote store) a member counts as registered
only once its version with the cut's id is in the registry, so the keeper waits for the outbox drain.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from mlflow_persist._observe.logs import package_logger
from mlflow_persist._policy.cuts import CUT_COMPLETE_TAG, cut_sequence
from mlflow_persist._policy.versions import VersionInfo
from mlflow_persist._runtime.writer import SaveJob
from mlflow_persist._store.protocol import CheckpointStore
from mlflow_persist.errors import describe_store_error

__all__ = [
    "MARK_RETRY_SECONDS",
    "MAX_MARK_ATTEMPTS",
    "MAX_PENDING_CUTS",
    "POLL_SECONDS",
    "RECENT_CUTS",
    "CutKeeper",
    "PendingCut",
]

log = package_logger("mlflow_persist.cuts")

#: Pending cuts kept at most; beyond it the oldest is given up (a store that never accepts them).
MAX_PENDING_CUTS = 16
#: Cuts remembered by id after they ended (for `find`).
RECENT_CUTS = 8
POLL_SECONDS = 0.25
#: Passes that may fail to write a cut's marker before the cut is given up (with one alert).
MAX_MARK_ATTEMPTS = 8
MARK_RETRY_SECONDS = 1.0


@dataclass
class PendingCut:
    id: str
    jobs: dict[str, SaveJob]  # member name -> its save
    registered_names: dict[str, str]  # member name -> registered model name
    conditions: list[Callable[[], bool]] = field(default_factory=list)
    versions: dict[str, VersionInfo] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)
    outcome: str = "pending"  # pending | complete | abandoned
    mark_failures: int = 0


class CutKeeper:
    def __init__(self, store: CheckpointStore, on_given_up: Callable[[PendingCut, str], None] | None = None) -> None:
        self._store = store
        self._on_given_up = on_given_up
        #: registered model name -> its version in the newest complete cut this process knows (kept by retention)
        self._newest_complete: dict[str, int] = {}
        self._newest_sequence = -1
        self._advancing: PendingCut | None = None
        self._pending: deque[PendingCut] = deque()
        self._recent: OrderedDict[str, PendingCut] = OrderedDict()
        self._cond = threading.Condition()
        self._closed = False
        self.completed = 0
        self.abandoned = 0
        self.last_complete: str | None = None
        self._thread = threading.Thread(target=self._loop, name="mlflow-persist-cuts", daemon=True)
        self._thread.start()

    def add(self, cut: PendingCut) -> PendingCut:
        with self._cond:
            self._pending.append(cut)
            self._recent[cut.id] = cut
            while len(self._recent) > RECENT_CUTS:
                self._recent.popitem(last=False)
            while len(self._pending) > MAX_PENDING_CUTS:
                self._abandon(self._pending.popleft(), "too many cuts wait for their members to be stored")
            self._cond.notify_all()
        return cut

    def record_complete(self, cut_id: str, versions: dict[str, int]) -> None:
        """Remember the newest complete cut (registered name -> version); an older one never replaces it."""
        sequence = cut_sequence(cut_id)
        with self._cond:
            if sequence >= self._newest_sequence:
                self._newest_sequence, self._newest_complete = sequence, dict(versions)

    def protected(self, registered_name: str) -> set[int]:
        """The versions of `registered_name` retention must keep: its member of the newest complete cut, and its
        stored members of the cuts still pending (a cut waiting for a condition, the episodes stored say, would
        otherwise lose a member to a retention window and never complete). Bounded: pending cuts are."""
        with self._cond:
            version = self._newest_complete.get(registered_name)
            kept = set() if version is None else {version}
            for cut in (*self._pending, *([self._advancing] if self._advancing is not None else [])):
                for name, job in cut.jobs.items():
                    if cut.registered_names.get(name) != registered_name:
                        continue
                    info = cut.versions.get(name) or (job.result if job.outcome == "saved" else None)
                    member = getattr(info, "version", None)
                    if member is not None:
                        kept.add(int(member))
        return kept

    def find(self, cut_id: str) -> PendingCut | None:
        """A cut taken recently by this process, pending or ended (None when unknown or long past)."""
        with self._cond:
            return self._recent.get(cut_id)

    def pending(self) -> int:
        with self._cond:
            return len(self._pending)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no cut is pending; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._pending:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._cond.wait(POLL_SECONDS if remaining is None else min(POLL_SECONDS, remaining))
        return True

    def close(self, timeout: float | None = 60.0) -> None:
        finished = self.wait(timeout)
        with self._cond:
            self._closed = True
            advancing = self._advancing  # the thread may be writing its markers right now: it decides that one
            left = [cut for cut in self._pending if cut is not advancing]
            self._pending.clear()
            self._cond.notify_all()
        for cut in left:
            self._abandon(cut, "the process is closing before all of it was stored")
        self._thread.join(timeout=5 if finished or advancing is not None else 1)
        if advancing is not None:  # still writing (a hanging store): given up; a late marker is taken back
            self._abandon(advancing, "its completion was still being recorded when the process closed")

    # ------------------------------------------------------------------------------------- keeper thread

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed and not self._pending:
                    return
                cut = self._pending[0]
                self._advancing = cut
            state = self._advance(cut)
            with self._cond:
                self._advancing = None
                if state != "pending" and self._pending and self._pending[0] is cut:
                    self._pending.popleft()
                self._cond.notify_all()
            if state == "pending":
                for job in cut.jobs.values():  # sleeps until the next save finishes, or a short poll
                    if not job.done.is_set():
                        job.done.wait(POLL_SECONDS)
                        break
                else:
                    time.sleep(POLL_SECONDS)

    def _advance(self, cut: PendingCut) -> str:
        failed = [name for name, job in cut.jobs.items() if job.done.is_set() and job.outcome != "saved"]
        if failed:
            self._abandon(cut, f"the save of {', '.join(failed)} did not succeed")
            return cut.outcome
        if not all(job.done.is_set() for job in cut.jobs.values()):
            return "pending"
        try:
            if not all(condition() for condition in cut.conditions):
                return "pending"
            if not self._resolve_versions(cut):
                return "pending"
            for _name, info in cut.versions.items():
                self._store.set_version_tag(info.name, info.version, CUT_COMPLETE_TAG, "true")
        except Exception as exc:  # noqa: BLE001 - retried at the next pass; the cut stays incomplete meanwhile
            cut.mark_failures += 1
            reason = describe_store_error(exc)
            if cut.mark_failures >= MAX_MARK_ATTEMPTS:
                self._abandon(cut, f"its completion could not be recorded in {cut.mark_failures} tries ({reason})")
                if self._on_given_up is not None:
                    self._on_given_up(cut, reason)
                return cut.outcome
            log.warning("cut %s: could not record its completion yet (%s); retrying", cut.id, reason)
            time.sleep(MARK_RETRY_SECONDS)
            return "pending"
        with self._cond:
            late = cut.outcome != "pending"  # close() gave up on it while the markers were being written
            if not late:
                cut.outcome = "complete"
                self.completed += 1
        if late:
            self._take_back_markers(cut)
            return cut.outcome
        self.record_complete(cut.id, {cut.registered_names[n]: info.version for n, info in cut.versions.items()})
        self.last_complete = cut.id
        cut.done.set()
        log.info(
            "cut %s complete: %s",
            cut.id,
            ", ".join(f"{name} v{info.version}" for name, info in sorted(cut.versions.items())),
            extra={"cut": cut.id, "outcome": "cut_complete"},
        )
        return cut.outcome

    def _resolve_versions(self, cut: PendingCut) -> bool:
        """The registered version of each member (False while one waits in the outbox)."""
        for name, job in cut.jobs.items():
            if name in cut.versions:
                continue
            if isinstance(job.result, VersionInfo):
                cut.versions[name] = job.result
                continue
            registered = cut.registered_names[name]
            match = [v for v in self._store.list_versions(registered) if v.cut == cut.id]
            if not match:
                return False
            cut.versions[name] = max(match, key=lambda v: v.version)
        return True

    def _take_back_markers(self, cut: PendingCut) -> None:
        """A cut reported abandoned must not look complete in the registry: its markers are set to false."""
        for info in cut.versions.values():
            try:
                self._store.set_version_tag(info.name, info.version, CUT_COMPLETE_TAG, "false")
            except Exception as exc:  # noqa: BLE001 - restore_all also checks every member; logged for the operator
                log.warning(
                    "cut %s: could not take back the marker of %s v%d: %s", cut.id, info.name, info.version, exc
                )

    def _abandon(self, cut: PendingCut, reason: str) -> None:
        with self._cond:  # one outcome per cut, counted once, whichever thread decides first
            if cut.outcome != "pending":
                return
            cut.outcome = "abandoned"
            self.abandoned += 1
        cut.done.set()
        log.warning(
            "cut %s is incomplete and will not be restored: %s",
            cut.id,
            reason,
            extra={"cut": cut.id, "outcome": "cut_abandoned"},
        )
