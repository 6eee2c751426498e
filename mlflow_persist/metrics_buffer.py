"""A bounded buffer of one model's metrics, filled by the training thread and flushed in batches by the
scheduler thread; while the store is unreachable it keeps the newest `max_rows` values and counts what it
had to drop."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable, Mapping, Sequence

from mlflow_persist.checkpoint_store import MetricRow
from mlflow_persist.logging_setup import package_logger

log = package_logger("mlflow_persist.metrics")


class MetricsBuffer:
    def __init__(self, name: str, max_rows: int = 100_000, flush_size: int = 1000,
                 on_full: Callable[[], None] | None = None) -> None:
        self.name = name
        self.max_rows = max_rows
        self.flush_size = flush_size
        self.dropped = 0
        self._rows: deque[MetricRow] = deque()
        self._lock = threading.Lock()
        self._on_full = on_full
        self._warned = False

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
            log.warning("%s: metric buffer full (%d values waiting, store unreachable?); the oldest values are "
                        "dropped until the store accepts them again", self.name, self.max_rows)
        if size >= self.flush_size and self._on_full is not None:
            self._on_full()

    def take(self) -> list[MetricRow]:
        with self._lock:
            rows = list(self._rows)
            self._rows.clear()
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

    def flush(self, send: Callable[[Sequence[MetricRow]], None]) -> int:
        """Send everything buffered; on failure the rows go back and the error propagates. Returns the count."""
        rows = self.take()
        if not rows:
            return 0
        try:
            send(rows)
        except BaseException:
            self.put_back(rows)
            raise
        self._warned = False
        return len(rows)
