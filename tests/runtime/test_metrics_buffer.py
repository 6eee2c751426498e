"""The metric buffer: one early-flush request per batch, and a paced background flush that keeps order."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from mlflow_persist._runtime.metrics_buffer import MetricsBuffer, Pace


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_a_full_buffer_asks_for_one_flush_per_batch_not_one_per_step() -> None:
    requests = []
    buffer = MetricsBuffer("m", flush_size=10, on_full=lambda: requests.append(len(buffer)))
    for step in range(50):
        buffer.add(step, {"loss": 1.0})
    assert requests == [10]  # the buffer kept filling while the flush was pending: still one request
    buffer.take()
    for step in range(10):
        buffer.add(step, {"loss": 1.0})
    assert requests == [10, 10]


def test_a_paced_flush_rests_between_chunks_and_sends_everything_in_order() -> None:
    clock = FakeClock()
    buffer = MetricsBuffer("m")
    for step in range(1, 1001):
        buffer.add(step, {"loss": float(step)})
    chunks: list[list[int]] = []

    def send(rows: Sequence[tuple[str, float, int, int]]) -> None:
        chunks.append([r[3] for r in rows])
        clock.now += 0.010  # each chunk keeps the interpreter busy for 10 ms

    sent = buffer.flush(send, Pace(budget_seconds=60, max_share=0.2, chunk_rows=200, clock=clock, sleep=clock.sleep))
    assert sent == 1000 and [len(c) for c in chunks] == [200] * 5
    assert [s for c in chunks for s in c] == list(range(1, 1001))
    assert clock.sleeps == pytest.approx([0.040] * 4)  # 10 ms busy, 40 ms rest: a 20 % share
    assert len(buffer) == 0


def test_what_a_paced_flush_leaves_at_its_deadline_goes_first_next_time() -> None:
    clock = FakeClock()
    buffer = MetricsBuffer("m")
    for step in range(1, 501):
        buffer.add(step, {"loss": float(step)})
    delivered: list[int] = []

    def send(rows: Sequence[tuple[str, float, int, int]]) -> None:
        delivered.extend(r[3] for r in rows)
        clock.now += 0.5

    sent = buffer.flush(send, Pace(budget_seconds=1.0, max_share=0.5, chunk_rows=100, clock=clock, sleep=clock.sleep))
    assert sent == 100 and delivered == list(range(1, 101))  # 0.5 s busy + 0.5 s rest: the budget is spent
    buffer.add(501, {"loss": 501.0})
    assert buffer.flush(send) == 401
    assert delivered == list(range(1, 502))  # the leftovers went ahead of the newer value


def test_a_failing_chunk_puts_every_unsent_row_back() -> None:
    buffer = MetricsBuffer("m")
    for step in range(1, 301):
        buffer.add(step, {"loss": float(step)})
    calls = []

    def send(rows: Sequence[tuple[str, float, int, int]]) -> None:
        calls.append(len(rows))
        if len(calls) == 2:
            raise ConnectionError("server went away")

    clock = FakeClock()
    with pytest.raises(ConnectionError):
        buffer.flush(send, Pace(budget_seconds=60, chunk_rows=100, clock=clock, sleep=clock.sleep))
    assert [r[3] for r in buffer.take()] == list(range(101, 301))
