"""A bounded buffer of one model's metrics, filled by the training thread and flushed in batches by the
scheduler thread; while the store is unreachable it keeps the newest `max_rows` values and counts what it
had to drop.

MLflow's `log_batch` is Python work (tens of µs per value on sqlite) that holds the GIL the training thread
needs, so the scheduler's flush is paced: it sends chunks and rests between them, keeping its share of the
time at `max_share`. Explicit flushes (`flush()`, `close()`) are not paced."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence

from mlflow_persist._observe.logs import package_logger
from mlflow_persist._store.protocol import MetricRow

__all__ = ["MetricsBuffer", "Pace"]

log = package_logger("mlflow_persist.metrics")


class MetricsBuffer:
    def __init__(
        self, name: str, max_rows: int = 100_000, flush_size: int = 1000, on_full: Callable[[], None] | None = None
    ) -> None:
        self.name = name
        self.max_rows = max_rows
        self.flush_size = flush_size
        self.dropped = 0
        self._rows: deque[MetricRow] = deque()
        self._lock = threading.Lock()
        self._on_full = on_full
        self._warned = False
        self._flush_requested = False  # one early-flush request per batch, not one per step

    def __len__(self) -> int:
        return len(self._rows)

    def add(self, step: int, values: Mapping[str, float], timestamp_ms: int | None = None) -> None:
        """Buffer this step's values (non-numbers are skipped); asks for an early flush at `flush_size`."""
        ts = int(time.time() * 1000) if timestamp_ms is None else timestamp_ms
        rows = []
        for key, value in values.items():
            try:
                rows.append((key, float(value), ts, int(step)))
            except (TypeError, ValueError):
                continue
        with self._lock:
            self._rows.extend(rows)
            overflow = len(self._rows) - self.max_rows
            for _ in range(max(0, overflow)):
                self._rows.popleft()
            if overflow > 0:
                self.dropped += overflow
            size = len(self._rows)
        if overflow > 0 and not self._warned:
            self._warned = True
            log.warning(
                "%s: metric buffer full (%d values waiting, store unreachable?); the oldest values are "
                "dropped until the store accepts them again",
                self.name,
                self.max_rows,
            )
        if size >= self.flush_size and self._on_full is not None and not self._flush_requested:
            self._flush_requested = True
            self._on_full()

    def take(self) -> list[MetricRow]:
        with self._lock:
            rows = list(self._rows)
            self._rows.clear()
            self._flush_requested = False
        return rows

    def put_back(self, rows: Sequence[MetricRow]) -> None:
        """Return rows a failed flush took, ahead of newer ones (still bounded: the oldest go first)."""
        with self._lock:
            self._rows.extendleft(reversed(rows))
            overflow = len(self._rows) - self.max_rows
            for _ in range(max(0, overflow)):
                self._rows.popleft()
            if overflow > 0:
                self.dropped += overflow

    def flush(self, send: Callable[[Sequence[MetricRow]], None], pace: Pace | None = None) -> int:
        """Send everything buffered (with `pace`: in chunks, resting between them, until its deadline); rows not
        sent go back, ahead of newer ones, and a failure propagates. Returns how many were sent."""
        rows = self.take()
        if not rows:
            return 0
        chunk = len(rows) if pace is None else pace.chunk_rows
        sent = 0
        try:
            while sent < len(rows):
                if pace is not None and sent and pace.expired():
                    break
                started = pace.clock() if pace is not None else 0.0
                send(rows[sent : sent + chunk])
                sent += min(chunk, len(rows) - sent)
                if pace is not None and sent < len(rows):
                    pace.rest(pace.clock() - started)
        except BaseException:
            self.put_back(rows[sent:])
            raise
        if sent < len(rows):
            self.put_back(rows[sent:])
        self._warned = False
        return sent


class Pace:
    """How a background flush shares the interpreter with training: chunks of `chunk_rows`, a rest after each
    long enough that sending takes at most `max_share` of the time, and nothing new after `budget_seconds`."""

    def __init__(
        self,
        budget_seconds: float,
        max_share: float = 0.2,
        chunk_rows: int = 1000,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.clock, self._sleep = clock, sleep
        self.deadline = clock() + budget_seconds
        self.max_share = max_share
        self.chunk_rows = chunk_rows

    def expired(self) -> bool:
        return self.clock() >= self.deadline

    def rest(self, busy_seconds: float) -> None:
        self._sleep(min(busy_seconds * (1 / self.max_share - 1), max(0.0, self.deadline - self.clock())))
