"""The APScheduler job that drives the periodic background work (time-based saves due, metric flushes,
system metrics, disk checks): it runs one callable at an interval on the scheduler's thread."""

from __future__ import annotations

from datetime import datetime
from typing import Callable

from apscheduler.schedulers.background import BackgroundScheduler
from mlflow_persist.logging_setup import package_logger

log = package_logger("mlflow_persist.scheduler")
JOB_ID = "mlflow-persist-tick"


class PeriodicJob:
    """Runs `tick()` every `interval_seconds` on a BackgroundScheduler thread.

    `wake()` runs it now (used when the metric buffer fills up early); overlapping runs are coalesced.
    """

    def __init__(self, tick: Callable[[], None], interval_seconds: float) -> None:
        self._tick = tick
        self._scheduler = BackgroundScheduler(daemon=True, job_defaults={"coalesce": True, "max_instances": 1,
                                                                         "misfire_grace_time": None})
        self._scheduler.add_job(self._run, "interval", seconds=interval_seconds, id=JOB_ID)

    def _run(self) -> None:
        try:
            self._tick()
        except Exception:  # noqa: BLE001 - the job must keep running
            log.exception("the mlflow-persist background job failed; it runs again at the next interval")

    def start(self) -> None:
        self._scheduler.start()

    def wake(self) -> None:
        if self._scheduler.running:
            self._scheduler.modify_job(JOB_ID, next_run_time=datetime.now(self._scheduler.timezone))

    def stop(self) -> None:
        if self._scheduler.running:
            self._scheduler.shutdown(wait=True)
