"""EpisodeRecorder: `record()` appends to memory on the decision path; a background thread (or an
explicit `flush()`, e.g. from the scheduler job) serializes and uploads off that path."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import mlflow

from mlflow_persist._runtime.worker_process import WorkerProcess
from mlflow_persist._store.store_address import StoreAddress
from mlflow_persist.episodes.model import Episode, as_episode
from mlflow_persist.episodes.upload import FlushResult, next_seq, write_flush, write_flush_at
from mlflow_persist.episodes.weights import StateDict, upload_weights
from mlflow_persist.errors import PersistError

__all__ = ["EpisodeRecorder", "RecorderStats"]

log = logging.getLogger(__name__)


@dataclass
class RecorderStats:
    recorded: int
    stored: int
    buffered: int
    dropped: int
    rejected: int
    failed_flushes: int
    bytes_written: int
    last_error: str | None
    weights_stored: int = 0
    weights_bytes: int = 0


class EpisodeRecorder:
    """Buffers episodes and stores them as Parquet artifacts of `run_id`.

    flush_rows: the background thread writes once this many episodes are buffered.
    flush_interval_s: it also writes buffered episodes older than this (None: only by rows/flush()).
    max_buffer_rows: beyond this the oldest buffered episodes are dropped (counted, logged), so a
        long MLflow outage cannot exhaust memory (default 16 x flush_rows).
    copy: `record` takes a private copy of frames/tensors so later in-place edits cannot change it.
    background: False runs no thread; `flush()` then writes in the calling thread (scheduler job).
    """

    def __init__(
        self,
        client: mlflow.MlflowClient,
        run_id: str,
        flush_rows: int = 256,
        *,
        flush_interval_s: float | None = None,
        max_buffer_rows: int | None = None,
        copy: bool = True,
        background: bool = True,
        compression_level: int = 3,
        log_dataset: bool = True,
        retry_backoff_s: tuple[float, float] = (1.0, 60.0),
        worker: WorkerProcess | None = None,
        address: StoreAddress | None = None,
    ) -> None:
        if flush_rows < 1:
            raise PersistError(f"flush_rows={flush_rows} must be at least 1.")
        self.client = client
        self.run_id = run_id
        self._worker, self._address = worker, address  # Parquet encoding and uploads run there once it is ready
        self.flush_rows = flush_rows
        self.flush_interval_s = flush_interval_s
        self.max_buffer_rows = max_buffer_rows or 16 * flush_rows
        self.copy = copy
        self.compression_level = compression_level
        self.log_dataset = log_dataset
        self._backoff = retry_backoff_s
        self._token = uuid.uuid4().hex[:8]
        self._seq: int | None = None
        self._cond = threading.Condition()
        self._buffer: deque[tuple[float, Episode]] = deque()
        self._recorded = 0
        self._settled = 0
        self._flush_target = 0
        self._errors = 0
        self._closing = False
        self._closed = False
        self._write_lock = threading.Lock()
        self.results: list[FlushResult] = []
        self._stored = self._dropped = self._rejected = self._bytes = 0
        self._weights: deque[tuple[str, str, StateDict]] = deque()
        self._weights_seen: set[tuple[str, str]] = set()
        self._weights_stored = self._weights_bytes = 0
        self._last_error: str | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, name="episode-recorder", daemon=True)
            self._thread.start()

    # ------------------------------------------------------------------ decision path
    def record(self, episode: Episode | Mapping[str, Any]) -> None:
        """Queue one episode; O(1) plus a private copy (see `copy`); never touches MLflow."""
        ep = as_episode(episode)
        if self.copy:
            ep = ep.detached_copy()
        with self._cond:
            if self._closed or self._closing:
                raise PersistError("the episode recorder is closed; create a new EpisodeRecorder to record more.")
            self._buffer.append((time.monotonic(), ep))
            self._recorded += 1
            if len(self._buffer) > self.max_buffer_rows:
                _, lost = self._buffer.popleft()
                self._dropped += 1
                self._settled += 1
                if self._dropped == 1 or self._dropped % 100 == 0:
                    log.warning(
                        "episode buffer full (%d); dropped episode %s (%d dropped so far): %s",
                        self.max_buffer_rows,
                        lost.episode_id,
                        self._dropped,
                        self._last_error,
                    )
            if len(self._buffer) >= self.flush_rows:
                self._cond.notify_all()

    def record_weights(self, name: str, fingerprint: str, state: StateDict) -> None:
        """Keep the weights that make decisions (a CPU state_dict nobody changes later, fingerprinted with
        `state_fingerprint`): stored once per fingerprint with the next flush, before the episodes, so
        replay works after the registry deleted their version. O(1); never touches MLflow."""
        with self._cond:
            if (name, fingerprint) in self._weights_seen:
                return
            self._weights_seen.add((name, fingerprint))
            self._weights.append((name, fingerprint, state))

    # ------------------------------------------------------------------ flushing
    def request_flush(self) -> None:
        """Ask the background thread to write everything buffered now; returns at once."""
        with self._cond:
            self._flush_target = max(self._flush_target, self._recorded)
            self._cond.notify_all()

    def stored_marker(self) -> Callable[[], bool]:
        """Ask for everything recorded so far to be stored (returns at once); the returned check is True
        once it is. A system checkpoint waits for it, so that no episode before the checkpoint is lost."""
        if self._thread is None:
            ok = self._write_pending()
            return lambda: ok
        with self._cond:
            target = self._recorded
            self._flush_target = max(self._flush_target, target)
            self._cond.notify_all()
        return lambda: self._settled >= target

    def flush(self, timeout: float | None = None) -> bool:
        """Store everything recorded before this call; True when it is stored, False on a failed
        write (see `stats().last_error`; the episodes stay buffered and are retried) or timeout."""
        if self._thread is None:
            return self._write_pending()
        with self._cond:
            target = self._recorded
            errors = self._errors
            self._flush_target = max(self._flush_target, target)
            self._cond.notify_all()
            self._cond.wait_for(
                lambda: self._settled >= target or self._errors != errors or not self._alive(), timeout=timeout
            )
            return self._settled >= target

    def close(self, timeout: float | None = 60.0) -> bool:
        """Flush and stop; True when nothing was left unstored."""
        if self._closed:
            return True
        ok = self.flush(timeout=timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
        with self._cond:
            self._closed = True
            left = len(self._buffer)
        if left:
            log.error("episode recorder closed with %d episodes not stored: %s", left, self._last_error)
        return ok and not left

    def __enter__(self) -> EpisodeRecorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stats(self) -> RecorderStats:
        with self._cond:
            return RecorderStats(
                self._recorded,
                self._stored,
                len(self._buffer),
                self._dropped,
                self._rejected,
                self._errors,
                self._bytes,
                self._last_error,
                self._weights_stored,
                self._weights_bytes,
            )

    # ------------------------------------------------------------------ internals
    def _alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _due(self) -> bool:
        if not self._buffer:
            return False
        if len(self._buffer) >= self.flush_rows or self._flush_target > self._settled or self._closing:
            return True
        return self.flush_interval_s is not None and time.monotonic() - self._buffer[0][0] >= self.flush_interval_s

    def _take_batch(self) -> list[Episode]:
        batch = [ep for _, ep in self._buffer]
        self._buffer.clear()
        return batch

    def _write_weights(self) -> None:
        """Store the queued weights in order; one that fails stays queued (with those after it) for the retry."""
        with self._cond:
            pending = list(self._weights)
        for name, fingerprint, state in pending:
            size = upload_weights(self.client, self.run_id, name, fingerprint, state)
            with self._cond:
                self._weights.popleft()
                self._weights_stored += 1
                self._weights_bytes += size

    def _write(self, batch: list[Episode]) -> None:
        with self._write_lock:
            self._write_weights()
            if self._seq is None:
                self._seq = next_seq(self.client, self.run_id)
            options: dict[str, Any] = {
                "seq": self._seq,
                "token": self._token,
                "compression_level": self.compression_level,
                "log_dataset": self.log_dataset,
            }
            if self._worker is not None and self._address is not None and self._worker.ready:
                result = self._worker.run(write_flush_at, self._address, self.run_id, batch, **options)
            else:
                result = write_flush(self.client, self.run_id, batch, **options)
            self._seq += 1
        self.results.append(result)
        with self._cond:
            self._stored += result.rows
            self._rejected += len(result.rejected)
            self._bytes += result.bytes_written
            self._settled += len(batch)
            self._cond.notify_all()

    def _fail(self, batch: list[Episode], exc: BaseException) -> None:
        with self._cond:
            stamp = time.monotonic()
            self._buffer.extendleft((stamp, ep) for ep in reversed(batch))
            self._errors += 1
            self._last_error = f"{type(exc).__name__}: {exc}"
            self._cond.notify_all()
        log.error("storing %d episodes failed (attempt %d), will retry: %s", len(batch), self._errors, exc)

    def _write_pending(self) -> bool:
        with self._cond:
            batch = self._take_batch()
        if not batch:
            return True
        try:
            self._write(batch)
        except Exception as exc:  # noqa: BLE001 - keep the episodes, report, retry on the next flush
            self._fail(batch, exc)
            return False
        return True

    def _run(self) -> None:
        failures = 0
        while True:
            with self._cond:
                poll = self.flush_interval_s / 4 if self.flush_interval_s else None
                self._cond.wait_for(lambda: self._due() or self._closing, timeout=poll)
                if self._closing and (not self._buffer or failures):
                    return
                if not self._due():
                    continue
                batch = self._take_batch()
            try:
                self._write(batch)
                failures = 0
            except Exception as exc:  # noqa: BLE001 - never kill the thread; keep the batch and back off
                self._fail(batch, exc)
                failures += 1
                delay = min(self._backoff[0] * 2 ** (failures - 1), self._backoff[1])
                with self._cond:
                    self._cond.wait_for(lambda: self._closing, timeout=delay)
