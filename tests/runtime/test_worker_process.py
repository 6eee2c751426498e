"""The persistence worker process: calls run in the child once it is ready and here before; a child that dies or
hangs fails its calls in flight (the callers retry) and is replaced; it never outlives its parent; metrics sent
through it land in the store exactly once, also when it is killed between and during flushes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from mlflow_persist import PersistConfig, Persistence, StoreError, StoreUnavailableError
from mlflow_persist._runtime.worker_main import portable_error
from mlflow_persist._runtime.worker_process import WorkerProcess, worker_wanted

READY_S = 60.0


class Unpicklable(Exception):
    def __init__(self, a: int, b: int) -> None:  # pickle rebuilds it with one argument: it cannot come back
        super().__init__(f"{a}/{b}")


def raise_unpicklable() -> None:
    raise Unpicklable(1, 2)


def sleep_then_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie waiting for its parent's wait() is gone too
        return stat.read().split(")")[-1].split()[0] != "Z"


def wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def worker() -> Iterator[WorkerProcess]:
    made = WorkerProcess(call_timeout=30.0)
    yield made
    made.close()


def test_worker_wanted_follows_the_setting_and_auto_needs_an_mlflow_store_and_two_cores() -> None:
    assert worker_wanted("on", False, 1) and not worker_wanted("off", True, 8)
    assert worker_wanted("auto", True, 2)
    assert not worker_wanted("auto", True, 1) and not worker_wanted("auto", True, None)
    assert not worker_wanted("auto", False, 8)  # an injected store (MemoryStore) cannot be reached from a child


def test_an_exception_that_does_not_survive_pickling_travels_as_a_store_error_with_its_type_and_message() -> None:
    kept = ValueError("bad value")
    assert portable_error(kept) is kept
    replaced = portable_error(Unpicklable(3, 4))
    assert type(replaced) is StoreError and str(replaced) == "Unpicklable: 3/4"


@pytest.mark.slow  # a child interpreter: seconds
def test_calls_run_here_until_the_child_is_ready_then_in_the_child(worker: WorkerProcess) -> None:
    assert worker.run(os.getpid) == os.getpid()  # not ready yet: this process
    assert worker.wait_ready(READY_S)
    child = worker.run(os.getpid)
    assert child != os.getpid() and child == worker.pid
    assert (worker.calls_in_process, worker.calls_in_worker) == (1, 1)


@pytest.mark.slow  # a child interpreter: seconds
def test_the_childs_exceptions_reach_the_caller(worker: WorkerProcess) -> None:
    assert worker.wait_ready(READY_S)
    with pytest.raises(ValueError, match="invalid literal"):
        worker.run(int, "x")
    with pytest.raises(StoreError, match=r"Unpicklable: 1/2"):
        worker.run(raise_unpicklable)
    assert worker.run(os.getpid) == worker.pid  # still serving


@pytest.mark.slow  # a child interpreter: seconds
def test_a_killed_child_fails_the_call_in_flight_and_a_new_child_takes_over(worker: WorkerProcess) -> None:
    assert worker.wait_ready(READY_S)
    first = worker.pid
    assert first is not None
    outcome: dict[str, object] = {}

    def call() -> None:
        try:
            outcome["result"] = worker.run(sleep_then_pid, 60)
        except Exception as exc:  # noqa: BLE001 - what the test looks at
            outcome["error"] = exc
        outcome["at"] = time.monotonic()

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(1.0)
    os.kill(first, signal.SIGKILL)
    killed_at = time.monotonic()
    thread.join(30)
    assert isinstance(outcome.get("error"), StoreUnavailableError), outcome
    assert float(outcome["at"]) - killed_at < 10  # type: ignore[arg-type]  # not the 60 s sleep, nor the timeout
    assert worker.lost_calls == 1
    assert worker.wait_ready(READY_S) and worker.pid not in (None, first) and worker.starts == 2
    assert worker.run(os.getpid) == worker.pid


@pytest.mark.slow  # a child interpreter: seconds
def test_a_call_the_child_does_not_answer_in_time_fails_and_the_child_is_stopped() -> None:
    worker = WorkerProcess(call_timeout=1.0)
    try:
        assert worker.wait_ready(READY_S)
        hung = worker.pid
        assert hung is not None
        with pytest.raises(StoreUnavailableError, match="did not answer in 1 s"):
            worker.run(sleep_then_pid, 60)
        assert wait_until(lambda: not alive(hung), 10)
    finally:
        worker.close()


@pytest.mark.slow  # a child interpreter: seconds
def test_after_its_last_start_fails_the_worker_is_given_up_and_calls_run_here(
    caplog: pytest.LogCaptureFixture,
) -> None:
    worker = WorkerProcess(max_starts=1)
    try:
        assert worker.wait_ready(READY_S)
        pid = worker.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not worker.ready, 10)
        assert worker.run(os.getpid) == os.getpid()
        assert not worker.wait_ready(1.0)
        assert "failed 1 times" in caplog.text and worker.starts == 1
    finally:
        worker.close()


PARENT = """
import os, sys, time
from mlflow_persist._runtime.worker_process import WorkerProcess
worker = WorkerProcess()
assert worker.wait_ready(60)
print(worker.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.slow  # a child interpreter: seconds
def test_the_child_does_not_outlive_a_parent_killed_with_sigkill() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.kill()
        parent.wait(10)
        assert wait_until(lambda: not alive(child), 15)
    finally:
        parent.kill()
        parent.wait(10)


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


@pytest.mark.slow  # a child interpreter: seconds
def test_metrics_sent_through_the_worker_land_in_the_store_once_also_when_it_is_killed(
    sqlite_uri: str, tmp_path: Path
) -> None:
    config = PersistConfig(
        tracking_uri=sqlite_uri,
        worker_process="on",
        log_system_metrics=False,
        scheduler_interval_seconds=3600,
        min_free_disk_mb=0,
        min_free_disk_percent=0,
    )
    persistence = Persistence(config, install_signal_handlers=False)
    try:
        assert persistence.worker is not None and persistence.worker.wait_ready(READY_S)
        model = torch.nn.Linear(2, 1)
        handle = persistence.track("net", model)
        expected: list[tuple[int, float]] = []

        def steps(count: int) -> None:
            for _ in range(count):
                value = float(len(expected)) / 7
                handle.step(score=value)
                expected.append((handle.current_step, value))

        steps(40)
        assert persistence.flush_metrics()
        first = persistence.worker.pid
        assert first is not None
        assert persistence.worker.calls_in_worker >= 1
        os.kill(first, signal.SIGKILL)  # between two flushes
        steps(40)
        worker = persistence.worker
        assert wait_until(lambda: not worker.ready, 10)
        persistence.flush_metrics()  # here (the worker is being restarted) or, if ready again, in the new child
        assert persistence.worker.wait_ready(READY_S) and persistence.worker.pid != first
        steps(40)
        assert persistence.flush_metrics()
        run_id = handle.run_id
    finally:
        persistence.close(final_checkpoints=False)
    assert _history(sqlite_uri, run_id, "score") == expected  # every value, once, at its step
