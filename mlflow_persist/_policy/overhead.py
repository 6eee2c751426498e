"""The overhead budget: how often performance saves may run so that persistence costs training at most a share
of its time (as CheckFreq tunes its checkpoint rate to a measured cost).

Pure: the caller measures each save's cost and passes the clock in. A save is charged twice over: the training
thread's own time in it (the snapshot copy, a wait for room in the writer), and the writer thread's CPU seconds
(in CPython, time the training thread cannot hold the interpreter lock). A token bucket: credit grows by `max_overhead`
seconds per second of wall time, up to `burst` seconds (4 seconds' worth by default); each save's cost is taken from it. A performance save is
due when the credit is not negative, else when it will have grown back, at most `max_delay` seconds later, so
the newest best always lands within that bound. Periodic, final and other forced saves are never deferred (the
caller does not ask), but their cost is charged like any other.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["OverheadBudget"]


@dataclass
class OverheadBudget:
    max_overhead: float = 0.05
    burst: float | None = None  # save work allowed back to back after a quiet spell (default: 4 s of budget)
    max_delay: float = 60.0
    credit: float = 0.0
    updated_at: float | None = None
    spent: float = 0.0  # cost charged so far (seconds)
    started_at: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.max_overhead <= 1:
            raise ValueError(f"max_overhead must be in (0, 1], not {self.max_overhead}")
        if self.burst is None:
            self.burst = 4.0 * self.max_overhead

    def _accrue(self, now: float) -> None:
        burst = self.burst or 0.0
        if self.updated_at is None:
            self.updated_at = self.started_at = now
            self.credit = burst
            return
        self.credit = min(burst, self.credit + max(0.0, now - self.updated_at) * self.max_overhead)
        self.updated_at = max(self.updated_at, now)

    def charge(self, seconds: float, now: float) -> None:
        """A save's measured cost."""
        self._accrue(now)
        self.credit -= max(0.0, seconds)
        self.spent += max(0.0, seconds)

    def next_performance_save(self, now: float) -> float:
        """The earliest time (on the caller's clock) a performance save should start."""
        self._accrue(now)
        if self.credit >= 0:
            return now
        return now + min(self.max_delay, -self.credit / self.max_overhead)

    def overhead(self, now: float) -> float:
        """The share of wall time charged since the first call (logged as `system/persistence_overhead`)."""
        if self.started_at is None or now <= self.started_at:
            return 0.0
        return self.spent / (now - self.started_at)
