"""What `Persistence.close()` reports: the outcome of each model's final save, the final system checkpoint, the
checkpoints that could never be written, and whether the wait ran out of time. A process that ends without
its final checkpoint exits with EXIT_NO_FINAL_CHECKPOINT (the CLI's exit-code table names it too)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlflow_persist._observe.logs import package_logger
from mlflow_persist._policy.versions import VersionInfo
from mlflow_persist._runtime.writer import SaveJob

__all__ = [
    "EXIT_NO_FINAL_CHECKPOINT",
    "STORED",
    "CloseReport",
    "FinalSave",
    "final_save",
    "run_bounded",
    "seconds_left",
]

log = package_logger("mlflow_persist")

EXIT_NO_FINAL_CHECKPOINT = 5
#: Outcomes that keep the final checkpoint: in the registry, or durable in the outbox until the next start.
STORED = frozenset({"registered", "outbox"})


@dataclass(frozen=True)
class FinalSave:
    """One model's final save: `registered` (version), `outbox` (durable locally, registered at the next
    start), `failed` (detail), `not_finished` (still running when close() ran out of time), `not_taken` (no
    snapshot was taken), or `skipped` (close(final_checkpoints=False))."""

    model: str
    outcome: str
    version: int | None = None
    step: int | None = None
    detail: str | None = None


@dataclass(frozen=True)
class CloseReport:
    finals: dict[str, FinalSave] = field(default_factory=dict)
    cut: str | None = None  # the final system checkpoint's id
    cut_outcome: str | None = None  # complete | abandoned | pending
    lost: tuple[str, ...] = ()  # checkpoints (any category) that could never be written (the newest 100)
    lost_count: int = 0  # how many could never be written in all
    timed_out: bool = False

    @property
    def missing(self) -> list[str]:
        """Models whose final checkpoint was asked for and is not stored."""
        return sorted(n for n, f in self.finals.items() if f.outcome != "skipped" and f.outcome not in STORED)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.lost

    def describe(self) -> str:
        """One line: what is missing and why, and what a restart does."""
        parts = []
        for name in self.missing:
            final = self.finals[name]
            parts.append(f"{name} ({final.outcome}: {final.detail})" if final.detail else f"{name} ({final.outcome})")
        text = f"no final checkpoint for {', '.join(parts)}" if parts else ""
        if self.lost:
            count = max(self.lost_count, len(self.lost))
            lost = f"{count} checkpoint(s) could never be written ({', '.join(self.lost[:5])})"
            text = f"{text}; {lost}" if text else lost
        return f"{text}; a restart resumes from the last stored checkpoint."


def final_save(model: str, job: SaveJob | None) -> FinalSave:
    """The outcome of one final save job (None: no snapshot was taken)."""
    if job is None:
        return FinalSave(model, "not_taken")
    if not job.done.is_set():
        return FinalSave(model, "not_finished", step=job.step, detail="still running when close() timed out")
    if job.outcome == "saved":
        result: Any = job.result
        if isinstance(result, VersionInfo):
            return FinalSave(model, "registered", result.version, job.step)
        return FinalSave(model, "outbox", step=job.step, detail="waits in the outbox for the server")
    detail = f"{type(job.error).__name__}: {job.error}" if job.error is not None else job.outcome
    return FinalSave(model, "failed", step=job.step, detail=detail[:300])


def seconds_left(deadline: float | None, floor: float = 0.0) -> float | None:
    """Seconds until `deadline` (a time.monotonic() value; None: no deadline), at least `floor`."""
    return None if deadline is None else max(floor, deadline - time.monotonic())


def run_bounded(work: Callable[[], None], seconds: float | None, what: str) -> bool:
    """Run `work`, waiting at most `seconds` (None: as long as it takes); returns whether it finished. A store
    that hangs is left to the daemon thread and reported, never waited for past close()'s timeout."""
    if seconds is None:
        work()
        return True
    thread = threading.Thread(target=work, name="mlflow-persist-close", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        log.error("close(): %s did not finish within its time (the store hangs?); left behind", what)
        return False
    return True
