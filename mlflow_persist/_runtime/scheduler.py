"""The APScheduler job that drives the periodic background work (time-based saves due, metric flushes,
system metrics, disk checks): it runs one callable at an interval on the scheduler's thread, and is planned
again when a wall-clock jump stalled it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime

from apscheduler.schedulers.background import BackgroundScheduler

from mlflow_persist._observe.logs import package_logger

__all__ = ["JOB_ID", "OVERLAP_LOGGERS", "STALL_INTERVALS", "PeriodicJob"]

log = package_logger("mlflow_persist.scheduler")
JOB_ID = "mlflow-persist-tick"
#: The job counts as stalled when it has not started for this many intervals.
STALL_INTERVALS = 3


class _QuietOverlaps(logging.Filter):
    """Drops APScheduler's warning that an interval run of our job was skipped because a woken run was still
    busy (by design: the runs coalesce). Other jobs' warnings pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (
            record.getMessage().startswith('Execution of job "PeriodicJob._run')
            and "maximum number of running instances" in record.getMessage()
        )


_quiet_overlaps = _QuietOverlaps()
#: Where APScheduler logs a skipped overlapping run: its scheduler (3.11) or the default executor (earlier).
OVERLAP_LOGGERS = ("apscheduler.scheduler", "apscheduler.executors.default")


class PeriodicJob:
    """Runs `tick()` every `interval_seconds` on a BackgroundScheduler thread.

    `wake()` runs it now (used when the metric buffer fills up early); overlapping runs are coalesced.
    """

    def __init__(self, tick: Callable[[], None], interval_seconds: float) -> None:
        self._tick = tick
        self._interval = interval_seconds
        self._running = False
        self.last_run = time.monotonic()  # when the job last started (or the job was made)
        self._scheduler = BackgroundScheduler(
            daemon=True, job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        )
        self._scheduler.add_job(self._run, "interval", seconds=interval_seconds, id=JOB_ID)
        for logger in OVERLAP_LOGGERS:  # idempotent: one filter object; the logger differs by APScheduler release
            logging.getLogger(logger).addFilter(_quiet_overlaps)

    def _run(self) -> None:
        self._running = True
        self.last_run = time.monotonic()
        try:
            self._tick()
        except Exception:  # noqa: BLE001 - the job must keep running
            log.exception("the mlflow-persist background job failed; it runs again at the next interval")
        finally:
            self._running = False

    def start(self) -> None:
        self._scheduler.start()

    def wake(self) -> None:
        """Run the job now, unless it is running (it would be skipped, with a warning from APScheduler)."""
        if self._scheduler.running and not self._running:
            self._scheduler.modify_job(JOB_ID, next_run_time=datetime.now(self._scheduler.timezone))

    def revive_if_stalled(self, now: float | None = None) -> bool:
        """APScheduler plans runs on the wall clock: after the clock is set back, the next run waits for the
        clock to catch up (an hour set back: no run for an hour). Called from the training thread at each step:
        when the job has not started for STALL_INTERVALS intervals of the monotonic clock, it is planned again
        from the clock as it is now. Returns whether it was."""
        now = time.monotonic() if now is None else now
        if now - self.last_run < STALL_INTERVALS * self._interval or self._running or not self._scheduler.running:
            return False
        self.last_run = now  # one revival per stall, whatever the scheduler does next
        log.warning(
            "the mlflow-persist background job has not run for %.0f s (the wall clock was set back?); planned again",
            STALL_INTERVALS * self._interval,
        )
        self._scheduler.reschedule_job(JOB_ID, trigger="interval", seconds=self._interval)  # from the clock's now
        return True

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
