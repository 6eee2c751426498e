"""The periodic job: ticks at its interval on APScheduler's thread, keeps ticking after a failing tick, runs
at once on `wake()`, coalesces overlapping runs, and stops (waiting for a running tick) on `stop()`.
Short intervals and events with bounded timeouts; no assertion on how fast anything ran."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, tzinfo

import pytest
from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobSubmissionEvent
from apscheduler.schedulers.background import BackgroundScheduler
from runtime_support import wait_until

from mlflow_persist._runtime.scheduler import PeriodicJob

SKIP_WARNING = "maximum number of running instances"


class Ticks:
    """A tick that records the thread of each call and can fail or block on demand."""

    def __init__(self, fail_first: int = 0, block_first: bool = False) -> None:
        self.calls: list[str] = []
        self.fail_first = fail_first
        self.gate = threading.Event()
        self.running = threading.Event()
        self.block_first = block_first
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.calls.append(threading.current_thread().name)
            count = len(self.calls)
        if self.block_first and count == 1:
            self.running.set()
            self.gate.wait(10)
        if count <= self.fail_first:
            raise RuntimeError(f"tick {count} failed")

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.calls)


@pytest.fixture
def jobs() -> Iterator[Callable[[Callable[[], None], float], PeriodicJob]]:
    """Make started jobs; every one is stopped after the test."""
    made: list[PeriodicJob] = []

    def make(tick: Callable[[], None], interval: float) -> PeriodicJob:
        job = PeriodicJob(tick, interval)
        made.append(job)
        job.start()
        return job

    yield make
    for job in made:
        job.stop()


def test_the_tick_runs_again_and_again_off_the_calling_thread(
    jobs: Callable[[Callable[[], None], float], PeriodicJob],
) -> None:
    ticks = Ticks()
    jobs(ticks, 0.05)
    assert wait_until(lambda: ticks.count >= 3), f"only {ticks.count} ticks"
    assert threading.current_thread().name not in ticks.calls


def test_a_failing_tick_is_logged_and_the_job_runs_again(
    jobs: Callable[[Callable[[], None], float], PeriodicJob], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="mlflow_persist")
    ticks = Ticks(fail_first=2)
    jobs(ticks, 0.05)
    assert wait_until(lambda: ticks.count >= 4), f"the job stopped after {ticks.count} ticks"
    failures = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], RuntimeError)]
    assert [str(r.exc_info[1]) for r in failures[:2]] == ["tick 1 failed", "tick 2 failed"]  # type: ignore[index]


def test_a_job_that_always_fails_does_not_stop_another(
    jobs: Callable[[Callable[[], None], float], PeriodicJob],
) -> None:
    broken, healthy = Ticks(fail_first=10**9), Ticks()
    jobs(broken, 0.05)
    jobs(healthy, 0.05)
    assert wait_until(lambda: healthy.count >= 3 and broken.count >= 3)


def test_wake_runs_the_job_now(jobs: Callable[[Callable[[], None], float], PeriodicJob]) -> None:
    ticks = Ticks()
    job = jobs(ticks, 3600)  # the interval alone would not run it during the test
    job.wake()
    assert wait_until(lambda: ticks.count == 1)
    job.wake()
    assert wait_until(lambda: ticks.count == 2)


def test_wake_before_start_and_after_stop_does_nothing() -> None:
    ticks = Ticks()
    job = PeriodicJob(ticks, 3600)
    job.wake()  # not started: nothing runs, nothing raises
    job.stop()  # never started: nothing to stop
    job.start()
    job.stop()
    job.wake()
    assert ticks.count == 0


def test_wake_while_the_tick_runs_adds_no_run(
    jobs: Callable[[Callable[[], None], float], PeriodicJob], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    ticks = Ticks(block_first=True)
    job = jobs(ticks, 3600)
    job.wake()
    assert ticks.running.wait(10)
    for _ in range(3):
        job.wake()
    ticks.gate.set()
    assert not wait_until(lambda: ticks.count > 1, timeout=0.5), "a wake during a run queued another run"
    assert not [r for r in caplog.records if SKIP_WARNING in r.getMessage()]


def test_stop_waits_for_a_running_tick_and_no_tick_follows(
    jobs: Callable[[Callable[[], None], float], PeriodicJob],
) -> None:
    ticks = Ticks(block_first=True)
    job = jobs(ticks, 0.05)
    assert ticks.running.wait(10)
    stopper = threading.Thread(target=job.stop, daemon=True)
    stopper.start()
    stopper.join(0.3)
    assert stopper.is_alive(), "stop() returned while a tick was still running"
    ticks.gate.set()
    stopper.join(10)
    assert not stopper.is_alive()
    count = ticks.count
    assert not wait_until(lambda: ticks.count > count, timeout=0.3), "the job ticked after stop()"


def _skipped_runs(scheduler: BackgroundScheduler) -> list[JobSubmissionEvent]:
    skipped: list[JobSubmissionEvent] = []
    scheduler.add_listener(skipped.append, EVENT_JOB_MAX_INSTANCES)
    return skipped


def test_apschedulers_skipped_run_warning_of_other_jobs_still_passes(
    jobs: Callable[[Callable[[], None], float], PeriodicJob], caplog: pytest.LogCaptureFixture
) -> None:
    """The control of the test below: APScheduler does warn of a skipped overlapping run here, and the
    package's filter (installed by any PeriodicJob) leaves other jobs' warnings alone."""
    caplog.set_level(logging.WARNING)
    jobs(Ticks(), 3600)  # installs the filter
    release = threading.Event()
    scheduler = BackgroundScheduler(daemon=True, job_defaults={"coalesce": True, "max_instances": 1})
    scheduler.add_job(lambda: release.wait(10), "interval", seconds=0.05, id="someone-elses-job", name="other")
    skipped = _skipped_runs(scheduler)
    scheduler.start()
    try:
        assert wait_until(lambda: skipped), "APScheduler never skipped an overlapping run"
    finally:
        release.set()
        scheduler.shutdown(wait=True)
    warnings = [r.getMessage() for r in caplog.records if SKIP_WARNING in r.getMessage()]
    assert warnings and all(m.startswith('Execution of job "other') for m in warnings)


def test_an_overlapping_run_of_the_job_is_skipped_without_a_warning(
    jobs: Callable[[Callable[[], None], float], PeriodicJob], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    ticks = Ticks(block_first=True)
    job = jobs(ticks, 0.05)
    skipped = _skipped_runs(job._scheduler)  # APScheduler's own record of the skip
    assert ticks.running.wait(10)
    try:
        assert wait_until(lambda: skipped), "APScheduler never skipped an overlapping run"
    finally:
        ticks.gate.set()
    assert wait_until(lambda: ticks.count >= 2)  # the job goes on after the overlap
    assert not [r.getMessage() for r in caplog.records if SKIP_WARNING in r.getMessage()]


class _JumpedClock:
    """`datetime` for APScheduler's modules whose `now()` runs `offset` behind the real wall clock, as after
    `date -s` set the machine's clock back (the monotonic clock does not move)."""

    offset = timedelta(0)

    @classmethod
    def install(cls, monkeypatch: pytest.MonkeyPatch) -> None:
        import apscheduler.schedulers.base as base
        import apscheduler.triggers.interval as interval

        class Jumped(datetime):
            @classmethod
            def now(cls_, tz: tzinfo | None = None) -> datetime:  # type: ignore[override]  # noqa: N805
                return datetime.now(tz) - cls.offset

        for module in (base, interval):
            monkeypatch.setattr(module, "datetime", Jumped)


def test_after_the_wall_clock_is_set_back_time_based_saves_and_background_ticks_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The clock goes back an hour while training runs: periodic saves every 0.3 s (monotonic) still happen,
    and metrics still reach the store through the background job (it would wait an hour for its next run)."""
    import time

    import torch

    import mlflow_persist as mp
    from mlflow_persist.testing import MemoryStore

    _JumpedClock.install(monkeypatch)
    store = MemoryStore()
    config = mp.PersistConfig(
        periodic_every_minutes=0.005, scheduler_interval_seconds=0.1, log_system_metrics=False, keep_periodic=100
    )
    with mp.Persistence(config, store=store, install_signal_handlers=False) as persist:
        handle = persist.track("net", torch.nn.Linear(2, 2))
        handle.step(1, reward=0.0)
        assert wait_until(lambda: len(store.metric_history(handle.run_id, "reward")) == 1)
        _JumpedClock.offset = timedelta(hours=1)
        try:
            started = time.monotonic()
            step = 1
            while time.monotonic() - started < 1.5:
                step += 1
                handle.step(step, reward=float(step))
                time.sleep(0.02)
            logged_during_jump = len(store.metric_history(handle.run_id, "reward"))
            periodic = [v for v in store.list_versions("net") if v.category == "periodic"]
        finally:
            _JumpedClock.offset = timedelta(0)
        persist.close(final_checkpoints=False)
    assert len(periodic) >= 3  # 1.5 s at one per 0.3 s (allowing for a slow machine)
    assert logged_during_jump > step // 2  # the background job flushed the metrics while the clock was back
