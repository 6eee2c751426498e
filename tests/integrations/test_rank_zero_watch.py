"""The watch on rank 0, with torch's in-memory store and threads: a beating rank 0 keeps the others going, a
silent or unreachable one ends them once the timeout passed, and never before."""

from __future__ import annotations

import threading
import time
from typing import Any

import torch.distributed as dist

from mlflow_persist.integrations.rank_zero_watch import RankZeroWatch


class Lost:
    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.event = threading.Event()

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)
        self.event.set()


def test_a_beating_rank_zero_is_never_taken_for_lost() -> None:
    store, lost = dist.HashStore(), Lost()
    beat = RankZeroWatch(0.4, interval=0.05, store=store, rank=0).start()
    watch = RankZeroWatch(0.4, interval=0.05, on_lost=lost, store=store, rank=1).start()
    time.sleep(1.5)
    watch.stop()
    beat.stop()
    assert lost.reasons == []


def test_a_rank_zero_that_stops_beating_is_lost_after_the_timeout_and_not_before() -> None:
    store, lost = dist.HashStore(), Lost()
    beat = RankZeroWatch(0.5, interval=0.05, store=store, rank=0).start()
    watch = RankZeroWatch(0.5, interval=0.05, on_lost=lost, store=store, rank=1).start()
    time.sleep(0.3)
    beat.stop()  # rank 0 hangs
    stopped_at = time.monotonic()
    assert lost.event.wait(5)
    waited = time.monotonic() - stopped_at
    watch.stop()
    assert 0.4 <= waited < 2.0, waited
    assert "no sign of life" in lost.reasons[0]


class HangingStore:
    """A store whose host stopped: every call blocks (the connection stays open, nothing answers)."""

    def add(self, key: str, value: int) -> Any:
        threading.Event().wait()


class GoneStore:
    def add(self, key: str, value: int) -> Any:
        raise RuntimeError("Connection reset by peer")


def test_a_store_that_never_answers_or_is_gone_ends_the_rank() -> None:
    for store, expected in ((HangingStore(), "no sign of life"), (GoneStore(), "stopped answering")):
        lost = Lost()
        watch = RankZeroWatch(0.4, interval=0.05, on_lost=lost, store=store, rank=1).start()
        assert lost.event.wait(5), store
        watch.stop()
        assert expected in lost.reasons[0]
