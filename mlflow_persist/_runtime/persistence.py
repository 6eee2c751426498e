"""`Persistence`, the composition root: it opens the store (or takes one), wires the per-model handle, save
pipeline, health and metric buffer together, and runs the threads:

- training thread: `ModelHandle.step/save/restore/revert_to_best` (handle.py);
- writer thread: `SavePipeline.execute` for each snapshot (writer.py, pipeline.py);
- scheduler thread: `tick()` (time-based saves due, outbox drain, system metrics, metric flush, disk guard);
- alert thread: the alert sinks (alerts.py).

Process-wide side effects are switched in process_effects.py.

Longer than 400 lines: it is the composition root; what it holds is the wiring (track, tick, the metric sender,
the exit paths), and every part it wires lives in a module of its own.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tenacity import Retrying, retry_if_result, stop_after_attempt, wait_exponential

from mlflow_persist._format.naming import validate_model_name
from mlflow_persist._format.safetensors_weights import SAFETENSORS, require_safetensors
from mlflow_persist._observe.alerts import Alert, AlertDispatcher, AlertSink, command_sink, webhook_sink
from mlflow_persist._observe.logs import package_logger
from mlflow_persist._observe.system_metrics import HELD_BACK_METRIC, OVERHEAD_METRIC, system_metrics
from mlflow_persist._policy.overhead import OverheadBudget
from mlflow_persist._policy.versions import HEALTH_TAG, tag
from mlflow_persist._runtime.close_report import CloseReport
from mlflow_persist._runtime.closing import Closing
from mlflow_persist._runtime.cut_keeper import CutKeeper, PendingCut
from mlflow_persist._runtime.disk_guard import DiskGuard
from mlflow_persist._runtime.handle import Evaluate, ModelHandle, Stateful
from mlflow_persist._runtime.health import ModelHealth
from mlflow_persist._runtime.metrics_buffer import MetricsBuffer, Pace
from mlflow_persist._runtime.outbox import Outbox, default_outbox_root
from mlflow_persist._runtime.pipeline import SavePipeline
from mlflow_persist._runtime.process_effects import (
    GracefulExit,
    ProcessEffects,
    SignalHandlers,
    apply_http_retry_defaults,
    interactive_session,
    register_atexit,
)
from mlflow_persist._runtime.scheduler import PeriodicJob
from mlflow_persist._runtime.system_checkpoints import SystemCheckpoints, cut_writer_slot
from mlflow_persist._runtime.worker_process import WorkerProcess, worker_wanted
from mlflow_persist._runtime.writer import CheckpointWriter, SaveJob
from mlflow_persist._store.protocol import CheckpointStore, MetricRow
from mlflow_persist._store.store_address import StoreAddress
from mlflow_persist.config import PersistConfig
from mlflow_persist.errors import ConfigError, DiskFullError, NotFoundError, PersistError, describe_store_error

__all__ = ["Persistence", "open_mlflow_store"]

log = package_logger("mlflow_persist")


def open_mlflow_store(config: PersistConfig) -> CheckpointStore:
    """The MLflow store of `config` (imported here: `import mlflow` costs over a second)."""
    from mlflow_persist._store.mlflow_store import MlflowStore

    return MlflowStore(config.tracking_uri, config.experiment_name, config.artifact_location)


class Persistence(Closing, SystemCheckpoints):
    """Opens the store, starts the background writer and the scheduler job; `close()` saves final checkpoints.

    `store`: any `CheckpointStore` (default: the MLflow store of `config.tracking_uri`); tests pass
    `mlflow_persist.testing.MemoryStore()`. `alert_sinks`: callables that receive each `Alert` on the alert
    thread. `effects`: which process-wide side effects to have (process_effects.py).
    """

    def __init__(
        self,
        config: PersistConfig | None = None,
        *,
        store: CheckpointStore | None = None,
        alert_sinks: list[AlertSink] | None = None,
        install_signal_handlers: bool | None = None,
        effects: ProcessEffects | None = None,
    ) -> None:
        self.config = config or PersistConfig()
        self.effects = effects or ProcessEffects(signal_handlers=install_signal_handlers)
        interactive = interactive_session()
        if self.config.fast_serialization:
            log.warning(
                "fast_serialization has no effect any more (checkpoints are always written without torch's "
                "zip CRC32); remove it from the configuration"
            )
        if (
            store is None
            and self.effects.http_retry_defaults
            and self.config.tracking_uri.startswith(("http://", "https://"))
        ):
            apply_http_retry_defaults()
        self.store: CheckpointStore = store if store is not None else open_mlflow_store(self.config)
        self.worker: WorkerProcess | None = None
        if worker_wanted(self.config.worker_process, store is None, os.cpu_count()):
            self.worker = WorkerProcess()
            self.worker.start()  # its imports take seconds, on another core; until then work runs here
        self.outbox: Outbox | None = None
        if self.store.is_remote:
            root = (
                Path(self.config.outbox_dir)
                if self.config.outbox_dir
                else default_outbox_root(self.config.tracking_uri)
            )
            self.outbox = Outbox(root)
        sinks = list(alert_sinks or [])
        if self.config.alert_command:
            sinks.append(command_sink(self.config.alert_command))
        if self.config.alert_webhook:
            sinks.append(webhook_sink(self.config.alert_webhook))
        self.alerts = AlertDispatcher(sinks)
        self.handles: dict[str, ModelHandle] = {}
        self._adopted: set[str] = set()  # models whose run another tool owns (track's run_id): never finished here
        self._state_steps: dict[str, Callable[[], int] | None] = {}  # application-state members of the cuts
        self._cut_sequence: int | None = None
        self._cut_writer_slot = cut_writer_slot()
        self.cuts = CutKeeper(self.store, on_given_up=self._cut_given_up)
        self.guard = DiskGuard(
            self.store,
            self.config.min_free_disk_mb,
            self.config.min_free_disk_percent,
            lambda: [h.pipeline.guarded() for h in list(self.handles.values())],
            keep=self.cuts.protected,
        )
        self.writer = CheckpointWriter(
            self._execute,
            queue_size=self.config.writer_queue_size,
            max_attempts=self.config.save_retry_attempts,
            max_backoff_seconds=self.config.save_retry_max_wait_seconds,
            on_failure=self._on_failure,
            max_submit_wait=self.config.max_training_wait_seconds,
            budget=OverheadBudget(self.config.max_overhead),
        )
        self._closed = False
        self._close_report: CloseReport | None = None
        self._stopping = False
        self._close_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self.job = PeriodicJob(self.tick, self.config.scheduler_interval_seconds)
        self.job.start()
        self._signals = SignalHandlers(self.config.shutdown_grace_seconds, self._exit_without_final, interactive)
        if self.effects.wants_signal_handlers(interactive):
            self._signals.install()
        self._unregister_atexit = register_atexit(self._close_at_exit) if self.effects.atexit_close else None

    # ------------------------------------------------------------------------------------- API

    def track(
        self,
        name: str,
        model: torch.nn.Module,
        optimizer: Stateful | None = None,
        scheduler: Stateful | None = None,
        extra: Stateful | None = None,
        *,
        evaluate: Evaluate | None = None,
        evaluate_every_steps: int | None = None,
        run_id: str | None = None,
        log_reported_metrics: bool = True,
    ) -> ModelHandle:
        """Track one model. With `evaluate`, every `evaluate_every_steps` steps `step()` calls it at the step
        boundary and its value becomes the monitor (a validation loss, a mean reward), smoothed as
        configured; the training metric of the monitor's name is then only logged.

        `run_id`: an existing run of this store (a Lightning `MLFlowLogger`'s, Hugging Face's `MLflowCallback`'s)
        that is the model's run in this process instead of its own: its checkpoints, metrics and versions go
        there. Its status stays its owner's to set: `close()` does not finish it. A restart with another run
        still resumes from the newest version, which the registry finds by the model's name.

        `log_reported_metrics=False`: the metrics given to `step()` decide saves but are not logged, because the
        run's owner logs them already (a framework's MLflow logger sharing the run would otherwise get every
        point twice); the package's own metrics (`checkpoint/*`, `best_*`, a smoothed monitor) still are."""
        validate_model_name(name)
        registered_name = self.config.registered_name(name)
        validate_model_name(registered_name)  # a bad prefix fails here, not at every save
        if name in self.handles:
            raise PersistError(f"Model {name!r} is already tracked in this process; call track() once per model.")
        settings = self.config.for_model(name)
        if settings.weights_format == SAFETENSORS:
            require_safetensors()
        # One run per registered model: two configurations (prefixes) tracking the same name are two models.
        # Earlier versions keyed the run by the bare name; such a run of this registered model is taken over.
        # With run_id, a run another tool opened is the model's run, tagged with its name as its own run would be.
        run_tags = {tag("registered_model"): registered_name}
        adopted = False
        if run_id is None:
            run_id = self.store.ensure_run(
                registered_name,
                run_name=name,
                tags=run_tags,
                previous_key=name if name != registered_name else None,
            )
        else:
            try:
                run_id = self.store.ensure_run(registered_name, tags=run_tags, run_id=run_id)
            except NotFoundError:
                raise ConfigError(
                    f"{name}: track(run_id={run_id!r}) names no run of the store at {self.store.description}; "
                    "pass the id of an existing run of that store, or no run_id for the model's own run."
                ) from None
            adopted = True
        metrics = MetricsBuffer(
            name,
            max_rows=self.config.metrics_buffer_max_rows,
            flush_size=self.config.metrics_flush_size,
            on_full=self.request_flush,
        )
        health = ModelHealth(
            name,
            self.alerts,
            self.config.failure_alert_threshold,
            lambda tags: self.store.set_run_tags(run_id, tags),
            lambda step, key, value: metrics.add(step, {key: value}),
            HEALTH_TAG,
        )
        health.max_wait = self.config.max_training_wait_seconds
        pipeline = SavePipeline(
            name=name,
            registered_name=registered_name,
            run_id=run_id,
            settings=settings,
            store=self.store,
            outbox=self.outbox,
            guard=self.guard,
            health=health,
            metrics=metrics,
            outbox_max_mb=self.config.outbox_max_mb,
            cut_keep=self.cuts.protected,
        )
        handle = ModelHandle(
            name=name,
            registered_name=registered_name,
            model=model,
            optimizer=optimizer,
            scheduler=scheduler,
            extra=extra,
            settings=settings,
            store=self.store,
            writer=self.writer,
            alerts=self.alerts,
            pipeline=pipeline,
            health=health,
            metrics=metrics,
            stop=self._stop_at_boundary,
            evaluate=evaluate,
            evaluate_every_steps=evaluate_every_steps,
        )
        handle.max_wait = self.config.max_training_wait_seconds
        handle.log_reported_metrics = log_reported_metrics
        self.handles[name] = handle
        if adopted:
            self._adopted.add(name)
        try:
            self.store.sweep_partial_checkpoints(run_id, self.config.partial_sweep_age_seconds, owner=registered_name)
        except Exception as exc:  # noqa: BLE001 - sweeping leftovers is housekeeping
            log.warning("could not sweep leftovers of interrupted saves for %s: %s", name, exc)
        return handle

    def track_state(self, name: str, state: Stateful, step: Callable[[], int] | None = None) -> ModelHandle:
        """Track the application's own state (anything with state_dict/load_state_dict: positions, pending
        work, RNG streams, buffers) as a member of every system checkpoint. It is saved only by `save_all()`
        and `close()`, restored by `restore_all()`. `step`: the application's step count recorded with it
        (default: the highest step of the tracked models)."""
        handle = self.track(name, torch.nn.Module(), extra=state)
        self._state_steps[name] = step
        return handle

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every save is written (False on timeout), then register what waits in the outbox.

        Behind a server a save ends in the outbox, and the scheduler may be registering it at that moment:
        the blocking drain waits for that, so after `flush()` the registry shows every save the server could
        take. What it could not take stays in the outbox (`handle.pending_outbox()`)."""
        done = self.writer.flush(timeout=timeout)
        if done:
            for handle in list(self.handles.values()):
                handle.pipeline.drain_outbox(blocking=True)
        self.flush_metrics()
        return done

    def __enter__(self) -> Persistence:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    # ------------------------------------------------------------------------------------- background

    def _cut_given_up(self, cut: PendingCut, reason: str) -> None:
        self.alerts.fire(
            Alert(
                "cut_abandoned",
                "system",
                f"system checkpoint {cut.id} was given up: its completion could not be recorded ({reason}); "
                "a restart resumes from the previous complete one",
                {"cut": cut.id, "members": sorted(cut.jobs)},
            )
        )

    def _execute(self, job: SaveJob) -> Any:
        return self.handles[job.model].pipeline.execute(job)

    def _on_failure(self, job: SaveJob, exc: BaseException, final: bool) -> None:
        self.handles[job.model].pipeline.on_failure(job, exc, final)

    def request_flush(self) -> None:
        self.job.wake()

    def _metric_sender(
        self, run_id: str, pace: Pace | None
    ) -> tuple[Callable[[Sequence[MetricRow]], None], Pace | None]:
        """How one model's metrics are sent: through the worker process once it is ready (not paced: it does not
        hold this process's interpreter lock), else by this process's store (paced)."""
        if self.worker is None or not self.worker.ready:
            return functools.partial(self.store.log_metrics, run_id), pace
        from mlflow_persist._store.worker_calls import log_metrics

        return functools.partial(self.worker.run, log_metrics, self.store_address, run_id), None

    @property
    def pending_signal(self) -> int | None:
        """The SIGTERM/SIGINT this process received and has not acted on at a step boundary yet (or has)."""
        return self._signals.signum if self._signals.stop.is_set() else None

    @property
    def store_address(self) -> StoreAddress:
        """What opens this store in another process (the persistence worker)."""
        return StoreAddress(self.config.tracking_uri, self.config.experiment_name, self.config.artifact_location)

    def flush_metrics(self, pace: Pace | None = None) -> bool:
        """Send every buffered metric (paced by `pace`, see metrics_buffer.py); False when the store refused
        (they stay buffered for the next flush)."""
        with self._flush_lock:
            for handle in list(self.handles.values()):
                try:
                    send, paced = self._metric_sender(handle.run_id, pace)
                    handle.metrics.flush(send, paced)
                except Exception as exc:  # noqa: BLE001 - metrics are retried at the next flush
                    log.warning(
                        "could not log %d metrics of %s (%s); will retry",
                        len(handle.metrics),
                        handle.name,
                        describe_store_error(exc),
                    )
                    return False
        return True

    def _final_metrics_flush(self, attempts: int = 6) -> None:
        flushed = Retrying(
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=0.25, max=5.0),
            retry=retry_if_result(lambda ok: ok is False),
            retry_error_callback=lambda state: False,
        )(self.flush_metrics)
        if flushed:
            return
        waiting = sum(len(h.metrics) for h in self.handles.values())
        log.error("%d buffered metric values could not be logged before exit; the store kept refusing them", waiting)

    def tick(self, now: float | None = None) -> None:
        """The scheduler job: marks time-based saves due, drains outboxes, logs system metrics, flushes
        metrics, checks disk."""
        now = time.monotonic() if now is None else now
        handles = list(self.handles.values())
        for handle in handles:
            handle.schedule.check_time(now)
        if self.outbox is not None:
            for handle in handles:
                handle.pipeline.drain_outbox()
        if self.config.log_system_metrics and handles:
            try:
                metrics = system_metrics(self.store.checkpoint_disk_path(handles[0].run_id))
            except Exception as exc:  # noqa: BLE001
                log.debug("system metrics unavailable: %s", exc)
            else:
                if self.writer.budget is not None:  # what checkpoint writing costs, and what the budget held back
                    metrics[OVERHEAD_METRIC] = self.writer.budget.overhead(time.monotonic())
                    metrics[HELD_BACK_METRIC] = float(self.writer.deferred)
                ts = int(time.time() * 1000)
                for handle in handles:
                    handle.metrics.add(handle.current_step, metrics, ts)
        # Paced, and done by the next interval: what is left waits for the next tick.
        self.flush_metrics(Pace(budget_seconds=0.8 * self.config.scheduler_interval_seconds))
        for handle in handles:
            try:
                self.guard.ensure_space(handle.pipeline.guarded())
            except DiskFullError as exc:
                log.warning("%s", exc)
            except Exception as exc:  # noqa: BLE001
                log.debug("disk check failed for %s: %s", handle.name, exc)

    def _stop_at_boundary(self) -> None:
        """Called at the end of every handle's step(). With a stop signal pending: raise GracefulExit here, between
        two updates, once; `close()` then takes the final checkpoints. Also revives the background job when a
        wall-clock jump stalled it."""
        self.job.revive_if_stalled()
        if not self._signals.stop.is_set() or self._stopping:
            return
        self._stopping = True
        self._signals.reached_boundary()
        raise GracefulExit(self._signals.exit_code())

    def _finish_runs(self) -> None:
        """At close(): the models' own runs are marked FINISHED; an adopted run (track's `run_id`) is left as it
        is, since its owner (a logger) ends it itself, possibly after this close."""
        for handle in list(self.handles.values()):
            if handle.name in self._adopted:
                continue
            try:
                self.store.finish_run(handle.run_id)
            except Exception as exc:  # noqa: BLE001
                log.warning("could not mark the run of %s finished: %s", handle.name, exc)

    def _exit_without_final(self, signum: int) -> None:
        """No step() boundary came in time (or a second signal): let the saves already taken finish briefly,
        mark the models' own runs KILLED (never FINISHED: their final checkpoint is missing) and exit. An adopted
        run's status is its owner's, here too (the owner may be another process that goes on)."""
        try:
            self.writer.close(timeout=5.0)
            self._final_metrics_flush(attempts=1)
            if self.worker is not None:
                self.worker.close(timeout=5.0)
            for handle in list(self.handles.values()):
                if handle.name in self._adopted:
                    continue
                try:
                    self.store.finish_run(handle.run_id, status="KILLED")
                except Exception as exc:  # noqa: BLE001
                    log.warning("could not mark the run of %s killed: %s", handle.name, exc)
        finally:
            logging.shutdown()
            os._exit(128 + signum)
