"""How a `Persistence` ends: `close()` takes the final checkpoints as one system checkpoint, waits for them within
its timeout (also against a store that hangs), and reports each one's outcome (close_report.py); at interpreter
exit an unclosed Persistence is closed, and a process left without its final checkpoint exits non-zero."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Callable

from mlflow_persist._observe.alerts import AlertDispatcher
from mlflow_persist._observe.logs import package_logger
from mlflow_persist._policy.policy import FINAL
from mlflow_persist._runtime.close_report import (
    EXIT_NO_FINAL_CHECKPOINT,
    CloseReport,
    FinalSave,
    final_save,
    run_bounded,
    seconds_left,
)
from mlflow_persist._runtime.cut_keeper import CutKeeper
from mlflow_persist._runtime.handle import ModelHandle
from mlflow_persist._runtime.outbox import Outbox
from mlflow_persist._runtime.process_effects import SignalHandlers
from mlflow_persist._runtime.scheduler import PeriodicJob
from mlflow_persist._runtime.worker_process import WorkerProcess
from mlflow_persist._runtime.writer import CheckpointWriter, SaveJob
from mlflow_persist._store.protocol import CheckpointStore
from mlflow_persist.config import PersistConfig
from mlflow_persist.errors import FinalCheckpointError

__all__ = ["Closing"]

log = package_logger("mlflow_persist")


class Closing:
    """The end of a `Persistence`; it provides the state declared here."""

    config: PersistConfig
    store: CheckpointStore
    handles: dict[str, ModelHandle]
    writer: CheckpointWriter
    outbox: Outbox | None
    cuts: CutKeeper
    job: PeriodicJob
    worker: WorkerProcess | None
    alerts: AlertDispatcher
    last_cut_jobs: dict[str, SaveJob]
    _signals: SignalHandlers
    _unregister_atexit: Callable[[], None] | None
    _close_lock: threading.Lock
    _closed: bool
    _close_report: CloseReport | None
    save_all: Callable[..., str]  # SystemCheckpoints.save_all
    _final_metrics_flush: Callable[[], None]  # Persistence._final_metrics_flush

    def close(self, final_checkpoints: bool = True, timeout: float | None = 600.0) -> CloseReport:
        """Flush everything, save a `final` checkpoint per model (one system checkpoint), finish the runs.

        Returns a `CloseReport`: per model, what became of its final save (`registered`, durable in the
        `outbox` behind an unreachable server, `failed`, `not_finished`, `not_taken`). Raises
        `FinalCheckpointError` (carrying the report) when a final checkpoint asked for is not stored or a
        checkpoint could never be written. `timeout` bounds the whole wait, also against a store that hangs:
        what has not finished by then is reported, not waited for. A second call returns the first report."""
        with self._close_lock:
            if self._closed:
                return self._close_report or CloseReport()
            self._closed = True
        deadline = None if timeout is None else time.monotonic() + timeout
        finals: dict[str, SaveJob | None] = {}
        cut_id: str | None = None
        try:
            if final_checkpoints and self.handles:
                finals = dict.fromkeys(self.handles)
                try:
                    # the final saves may wait for the writer as long as close() itself may wait
                    cut_id = self.save_all(FINAL, submit_wait=seconds_left(deadline))
                    finals.update(self.last_cut_jobs)
                except Exception as exc:  # noqa: BLE001 - reported per model below
                    log.error("the final checkpoints could not be taken: %s", exc)
            self.writer.close(timeout=seconds_left(deadline))
            run_bounded(self._drain_outboxes, seconds_left(deadline), "registering what waits in the outbox")
            cut_wait = 30.0 if self.outbox is None else 5.0
            self.cuts.close(timeout=cut_wait if deadline is None else min(cut_wait, seconds_left(deadline) or 0.0))
        finally:
            self.job.stop()
            run_bounded(self._final_metrics_flush, seconds_left(deadline, floor=0.5), "the last metrics flush")
            if self.worker is not None:
                self.worker.close(timeout=min(10.0, seconds_left(deadline, floor=0.5) or 10.0))
            run_bounded(self._finish_runs, seconds_left(deadline, floor=0.5), "marking the runs finished")
            self.alerts.close()
            self._signals.uninstall()
            if self._unregister_atexit is not None:
                self._unregister_atexit()
        pending_cut = self.cuts.find(cut_id) if cut_id is not None else None
        report = CloseReport(
            finals={name: final_save(name, job) for name, job in finals.items()}
            if final_checkpoints
            else {name: FinalSave(name, "skipped") for name in self.handles},
            cut=cut_id,
            cut_outcome=pending_cut.outcome if pending_cut is not None else None,
            lost=tuple(f"{j.model} step {j.step} ({j.category}): {j.error}" for j in self.writer.failed),
            lost_count=self.writer.failures,
            timed_out=deadline is not None and time.monotonic() >= deadline,
        )
        self._close_report = report
        if not report.ok:
            raise FinalCheckpointError(f"close(): {report.describe()}", report)
        return report

    def _drain_outboxes(self) -> None:
        for handle in list(self.handles.values()):
            waiting = handle.pipeline.drain_outbox(blocking=True)
            if waiting > 0 and self.outbox is not None:
                log.warning(
                    "%s: %d checkpoint(s) wait in the outbox %s; they are registered at the next start",
                    handle.name,
                    waiting,
                    self.outbox.root / handle.registered_name,
                )

    def _finish_runs(self) -> None:
        for handle in list(self.handles.values()):
            try:
                self.store.finish_run(handle.run_id)
            except Exception as exc:  # noqa: BLE001
                log.warning("could not mark the run of %s finished: %s", handle.name, exc)

    def _close_at_exit(self) -> None:
        """The interpreter exits with this Persistence still open: take the final checkpoints now. Without
        them the process must not look successful: one line on stderr and exit EXIT_NO_FINAL_CHECKPOINT."""
        if self._closed:
            return
        try:
            self.close()
        except FinalCheckpointError as exc:
            print(f"mlflow-persist: {exc}", file=sys.stderr, flush=True)
            logging.shutdown()
            sys.stdout.flush()
            os._exit(EXIT_NO_FINAL_CHECKPOINT)
        except Exception as exc:  # noqa: BLE001
            log.error("%s", exc)
