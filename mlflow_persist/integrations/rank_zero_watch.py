"""A lost rank 0 ends the other ranks within a bounded time, with one clear line.

Rank 0 alone writes checkpoints, and every collective waits for it. A rank 0 that dies usually fails the
others' next collective at once (the transport sees the closed connection), but one that hangs (a frozen
machine, a stopped process, a lost network) leaves them blocked until the process group's own timeout (30
minutes by default, and NCCL may never return). So rank 0 adds to a counter in the process group's store every
`interval` seconds from a thread of its own, and each other rank reads it from a thread of its own: when it
has not moved for `timeout` seconds, or the store itself is gone, that rank prints why and exits with
EXIT_RANK_ZERO_LOST. Nothing is lost by it: the other ranks hold nothing rank 0 has not saved, and a version
rank 0 did not finish registering never became one.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch.distributed as dist

from mlflow_persist._runtime.background_call import BackgroundCall

log = logging.getLogger("mlflow_persist")

__all__ = ["EXIT_RANK_ZERO_LOST", "HEARTBEAT_KEY", "RankZeroWatch"]

EXIT_RANK_ZERO_LOST = 75  # EX_TEMPFAIL: relaunching every rank resumes from the newest registered checkpoint
HEARTBEAT_KEY = "mlflow_persist/rank0_heartbeat"


def _exit_lost(reason: str) -> None:
    os.write(
        sys.stderr.fileno(),
        f"mlflow-persist: rank {dist.get_rank()}: {reason}; this rank exits now (code {EXIT_RANK_ZERO_LOST}): "
        "relaunch every rank to resume from the newest registered checkpoint.\n".encode(),
    )
    os._exit(EXIT_RANK_ZERO_LOST)


class RankZeroWatch:
    """Rank 0's heartbeat, and every other rank's watch on it (see the module's docstring)."""

    def __init__(
        self,
        timeout: float,
        interval: float = 1.0,
        on_lost: Callable[[str], None] = _exit_lost,
        store: Any = None,
        rank: int | None = None,
    ) -> None:
        self.timeout = timeout
        self.interval = min(interval, timeout / 4)
        self.on_lost = on_lost
        self.store = store if store is not None else _default_store()
        self.rank = dist.get_rank() if rank is None else rank
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> RankZeroWatch:
        if self.store is None:
            log.warning("no process group store to watch rank 0 through; a hung rank 0 is not detected")
            return self
        target = self._beat if self.rank == 0 else self._watch
        self._thread = threading.Thread(target=target, name="mlflow-persist-rank0-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval * 2 + 5)

    def _beat(self) -> None:
        while not self._stop.is_set():
            try:
                self.store.add(HEARTBEAT_KEY, 1)
            except Exception as exc:  # noqa: BLE001 - the store's host went away: the other ranks notice too
                log.debug("rank 0 heartbeat failed: %s", exc)
            self._stop.wait(self.interval)

    def _watch(self) -> None:
        last_value, last_change = -1, time.monotonic()
        while not self._stop.wait(self.interval):
            try:
                value = self._read(deadline=last_change + self.timeout)
            except Exception as exc:  # noqa: BLE001 - the store lived with rank 0 or its launcher: it is gone
                if not self._stop.is_set():
                    self.on_lost(f"rank 0's process group store stopped answering ({type(exc).__name__}: {exc})")
                return
            now = time.monotonic()
            if value is not None and value != last_value:
                last_value, last_change = value, now
            elif now - last_change >= self.timeout and not self._stop.is_set():
                self.on_lost(f"rank 0 has given no sign of life for {now - last_change:.0f} s (it died or hangs)")
                return

    def _read(self, deadline: float) -> int | None:
        """The heartbeat counter, or None when the store did not answer by `deadline` (a store hosted by a
        stopped rank 0 keeps the connection open and never answers: the read is left behind in its thread)."""
        read = BackgroundCall(lambda: int(self.store.add(HEARTBEAT_KEY, 0)), "mlflow-persist-rank0-read")
        if not read.wait(max(deadline - time.monotonic(), self.interval)):  # add(0) reads; get() would block
            return None
        return read.result()


def _default_store() -> Any:
    try:
        return dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - a process group without a store (a custom backend)
        return None
