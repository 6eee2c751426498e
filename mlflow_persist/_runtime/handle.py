"""`ModelHandle`: what the training thread calls for one model: `step()`, `save()`, `restore()`,
`revert_to_best()`. A step without a save costs microseconds and does no I/O; a save costs one in-memory
copy of the state, handed to the writer (see pipeline.py for what happens next).

Longer than 400 lines: the training thread's whole per-model surface (step, save, restore, revert, the
evaluation and snapshot reuse) shares its state; restore.py and pipeline.py already hold what could leave."""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from mlflow_persist._format.device_copy import CopyBackend, DeviceCopies, default_backend
from mlflow_persist._format.payload import CheckpointState, build_payload
from mlflow_persist._observe.alerts import AlertDispatcher
from mlflow_persist._observe.logs import package_logger
from mlflow_persist._policy.policy import (
    CATEGORIES,
    FINAL,
    PERFORMANCE,
    PERIODIC,
    PerformanceTracker,
    PeriodicSchedule,
    SaveDecision,
    decide_save,
)
from mlflow_persist._policy.smoothing import MonitorSmoother
from mlflow_persist._policy.versions import VersionInfo, tag
from mlflow_persist._runtime.background_call import BackgroundCall
from mlflow_persist._runtime.health import ModelHealth
from mlflow_persist._runtime.metrics_buffer import MetricsBuffer
from mlflow_persist._runtime.pipeline import SavePipeline
from mlflow_persist._runtime.restore import RESTORE_LOAD_ATTEMPTS, HandleRestore, RestoreInfo, Stateful
from mlflow_persist._runtime.writer import CheckpointWriter, SaveJob
from mlflow_persist._store.protocol import CheckpointStore
from mlflow_persist.config import ModelSettings
from mlflow_persist.errors import ConfigError, PersistError

__all__ = [
    "RESTORE_LOAD_ATTEMPTS",
    "Evaluate",
    "ModelHandle",
    "RestoreInfo",
    "Stateful",
]  # the restore names re-exported

log = package_logger("mlflow_persist")


Evaluate = Callable[[], float]


class ModelHandle(HandleRestore):
    """One tracked model: its objects, its performance tracker and periodic schedule, and the training-thread
    API. The save pipeline, health and metric buffer it owns run on the writer and scheduler threads."""

    def __init__(
        self,
        *,
        name: str,
        registered_name: str,
        model: torch.nn.Module,
        optimizer: Stateful | None,
        scheduler: Stateful | None,
        extra: Stateful | None,
        settings: ModelSettings,
        store: CheckpointStore,
        writer: CheckpointWriter,
        alerts: AlertDispatcher,
        pipeline: SavePipeline,
        health: ModelHealth,
        metrics: MetricsBuffer,
        stop: Callable[[], None] = lambda: None,
        evaluate: Evaluate | None = None,
        evaluate_every_steps: int | None = None,
    ) -> None:
        self.name = name
        self.registered_name = registered_name
        self.model, self.optimizer, self.scheduler, self.extra = model, optimizer, scheduler, extra
        self.settings = settings
        self.tracker = PerformanceTracker(settings.monitor, settings.mode, settings.min_delta, settings.min_delta_mode)
        self.smoother = MonitorSmoother(settings.monitor_smoothing, settings.monitor_ema_alpha, settings.monitor_window)
        if evaluate is not None and (evaluate_every_steps is None or evaluate_every_steps < 1):
            raise PersistError(f"track({name!r}, evaluate=...) needs evaluate_every_steps of 1 or more.")
        if evaluate is not None and settings.monitor is None:
            raise ConfigError(
                f"track({name!r}, evaluate=...): the evaluation's value is the monitor, and the config has "
                "monitor=None; name the metric it is (for example monitor='eval_reward')."
            )
        self.evaluate = evaluate
        self.evaluate_every_steps = evaluate_every_steps
        self.evaluations = 0
        self.evaluation_failures = 0
        self.last_raw_value: float | None = None
        self.schedule = PeriodicSchedule(
            settings.periodic_every_steps,
            settings.periodic_every_minutes * 60 if settings.periodic_every_minutes else None,
        )
        self.current_step = 0
        self.reverts = 0
        self.revert_failures = 0
        self.run_id = pipeline.run_id
        self.pipeline = pipeline
        self.health = health
        self.metrics = metrics
        self.log_reported_metrics = True  # False: the run's owner logs step()'s metrics (track's docstring)
        self._store = store
        self._writer = writer
        self._alerts = alerts
        self._stop = stop
        self._last_reported: dict[str, float] = {}
        self._claims: list[tuple[int, SaveJob]] = []  # performance saves in flight, settled at step()
        # One written snapshot kept for reuse: the next snapshot copies into its tensors (no page faults).
        self._spare_payloads: deque[dict[str, Any]] = deque(maxlen=1)
        self.max_wait = 0.5  # seconds a training call waits on the store (Persistence sets its config's)
        self._pending_revert: BackgroundCall[tuple[VersionInfo, CheckpointState] | None] | None = None
        self.copy_backend: CopyBackend | None = None  # None: CUDA's when CUDA is in use (device_copy.py)
        # What a save holds as model_state, given the step, when not the model's state_dict(): sharded
        # checkpoints (integrations/sharded.py) write the ranks' shards there and return the shard record
        self.model_state_for_save: Callable[[int], Mapping[str, Any]] | None = None
        self.schedule.start(0, time.monotonic())

    # ------------------------------------------------------------------------------------- read-only views

    @property
    def best_value(self) -> float | None:
        return self.tracker.best_value

    @property
    def saves(self) -> int:
        return self.pipeline.saves

    @property
    def failures(self) -> int:
        return self.health.failures

    @property
    def consecutive_failures(self) -> int:
        return self.health.consecutive_failures

    @property
    def degraded(self) -> bool:
        return self.health.degraded

    @property
    def last_saved(self) -> tuple[int, int] | None:
        return self.pipeline.last_saved

    @property
    def last_version(self) -> int | None:
        return self.pipeline.last_version

    @property
    def last_save_time(self) -> float | None:
        return self.pipeline.last_save_time

    def pending_outbox(self) -> int:
        return self.pipeline.pending_outbox()

    def history(self, limit: int = 10) -> list[VersionInfo]:
        return self._store.list_versions(self.registered_name)[-limit:]

    # ------------------------------------------------------------------------------------- training thread

    def step(self, step: int | None = None, **metrics: float) -> SaveDecision:
        """Report this step's metrics; saves (asynchronously) when the monitored value improved or a periodic
        save is due. Costs microseconds when nothing is saved."""
        self.current_step = step = self.current_step + 1 if step is None else int(step)
        if self._claims:
            self._settle_claims()
        if self._pending_revert is not None:
            self._apply_pending_revert()
        monitor = self.tracker.monitor
        decides = True
        if self.evaluate is not None:
            metrics, decides = self._with_evaluation(step, metrics)
        raw = metrics.get(monitor) if decides and monitor is not None else None
        value = None
        if raw is not None:
            try:
                raw = float(raw)
            except (TypeError, ValueError):
                raw = None
        if raw is not None:
            self.last_raw_value = raw
            value = self.smoother.update(raw)
            if self.smoother.kind != "none" and value is not None:
                metrics = {**metrics, f"{monitor}_smoothed": value}
        self._last_reported = metrics
        self.metrics.add(step, metrics if self.log_reported_metrics else self._own_metrics(metrics, monitor))
        if value is not None:
            self.tracker.observe(step, value)
        if self.schedule.every_seconds is not None:  # on the monotonic clock, whether or not the scheduler runs
            self.schedule.check_time(time.monotonic())
        decision = decide_save(self.tracker, self.schedule, step, value)
        attached = False
        if decision.category == PERIODIC:
            self.schedule.taken(step, time.monotonic())
            attached = self._writer.attach_to_waiting(self.name, PERIODIC)
            if attached:
                decision = SaveDecision(True, PERIODIC, value, None, "periodic version shares the waiting checkpoint")
        if decision.save and not attached:
            try:
                job = self._submit(decision.category or PERFORMANCE, step, value, decision.improvement, forced=False)
            except Exception as exc:  # noqa: BLE001 - a failed snapshot must never stop training
                self.health.record_failure(decision.category or PERFORMANCE, step, exc, attempts=1, final=True)
                if decision.category == PERFORMANCE:
                    self.tracker.settle(step, stored=False)
            else:
                if decision.category == PERFORMANCE:
                    self._claims.append((step, job))
        elif not decision.save and value is not None and self.settings.degradation_margin is not None:
            self._check_degradation(value)
        self._stop()  # a pending SIGTERM/SIGINT raises GracefulExit here, at a step boundary
        return decision

    def save(
        self,
        category: str = FINAL,
        wait: bool = False,
        timeout: float | None = None,
        *,
        value: float | None = None,
        monitor: str | None = None,
        tags: dict[str, str] | None = None,
        submit_wait: float | None = -1.0,
    ) -> SaveJob | None:
        """Force a checkpoint of the current state (asynchronous unless `wait`); None if no snapshot could be
        taken (the reason is logged and counted). While two snapshots of this model already wait behind the
        writer's current save, this call waits at most `max_training_wait_seconds` (or `submit_wait`; None: no
        limit) before the save is skipped (outcome `dropped`, counted in the writer's `skipped`).

        `value` and `monitor` record another measure than the tracked monitor's latest (smoothed) value, such
        as an episode score (`save("episode", value=score, monitor="episode/reward")`); `tags` are added to
        the version."""
        if category not in CATEGORIES:
            raise PersistError(f"Checkpoint category {category!r} is not one of {', '.join(CATEGORIES)}; use one.")
        extra_tags = dict(tags or {})
        if monitor is not None:
            extra_tags[tag("monitor")] = monitor
        if value is None and monitor is None:
            value = self.tracker.last_value
        try:
            job = self._submit(
                category, self.current_step, value, None, forced=True, tags=extra_tags, submit_wait=submit_wait
            )
        except Exception as exc:  # noqa: BLE001
            self.health.record_failure(category, self.current_step, exc, attempts=1, final=True)
            return None
        if wait:
            job.done.wait(timeout)
        return job

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until this model's saves are written (False on timeout); behind a server, also register what
        its outbox holds (see `Persistence.flush`)."""
        done = self._writer.flush(self.name, timeout)
        if done:
            self.pipeline.drain_outbox(blocking=True)
        return done

    def _submit(
        self,
        category: str,
        step: int,
        value: float | None,
        gained: float | None,
        forced: bool,
        tags: dict[str, str] | None = None,
        submit_wait: float | None = -1.0,
    ) -> SaveJob:
        """Snapshot the tracked objects and hand the snapshot to the writer. The copy goes into the tensors of
        the waiting snapshot it replaces, else of the spare one: at most two copies of the state exist (the
        one being written and one more). The time this takes the training thread is charged to the overhead budget."""
        with _charged_to(self._writer):
            replacing = self._writer.take_waiting(self.name, category)
            spare: dict[str, Any] | None = replacing.payload if replacing is not None else None
            if spare is None:
                try:
                    spare = self._spare_payloads.pop()
                except IndexError:
                    spare = None
            try:
                job = self._snapshot(category, step, value, gained, forced, spare, tags or {})
            except BaseException as exc:
                if replacing is not None:  # its tensors may be half overwritten: it cannot be written any more
                    replacing.payload = {}
                    replacing.finish("failed", error=exc)
                raise
            return self._writer.submit(job, replacing=replacing, max_wait=submit_wait)

    def _snapshot(
        self,
        category: str,
        step: int,
        value: float | None,
        gained: float | None,
        forced: bool,
        spare: dict[str, Any] | None,
        tags: dict[str, str],
    ) -> SaveJob:
        backend = self.copy_backend or default_backend()
        device_copies = DeviceCopies(backend) if backend is not None else None
        payload = build_payload(
            reuse=spare,
            device_copies=device_copies,
            model_name=self.name,
            model_state=self.model_state_for_save(step) if self.model_state_for_save else self.model.state_dict(),
            optimizer_state=self.optimizer.state_dict() if self.optimizer is not None else None,
            scheduler_state=self.scheduler.state_dict() if self.scheduler is not None else None,
            extra_state=self.extra.state_dict() if self.extra is not None else None,
            step=step,
            metrics=self._latest_metrics(),
            category=category,
            monitor_state=self.monitor_state(),
            weights_format=self.settings.weights_format,
        )
        if tag("monitor") not in tags:
            tags = {**tags, **self._value_tags()}
        return SaveJob(
            self.name,
            category,
            step,
            payload,
            value=value,
            improvement=gained,
            forced=forced,
            release=self._spare_payloads.append,
            ready=device_copies.finish() if device_copies is not None else None,
            tags=tags,
        )

    def monitor_state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the monitor: the smoothing state, so a restart continues its curve."""
        return {
            "smoother": self.smoother.state_dict(),
            "last_raw_value": self.last_raw_value,
            "evaluations": self.evaluations,
        }

    def _value_tags(self) -> dict[str, str]:
        """The raw monitor value and the smoothing it was decided on (the `value` tag is the smoothed one)."""
        tags: dict[str, str] = {tag("smoothing"): self.smoother.kind}
        if self.last_raw_value is not None:
            tags[tag("raw_value")] = repr(self.last_raw_value)
        if self.tracker.last_value is not None:
            tags[tag("smoothed_value")] = repr(self.tracker.last_value)
        return tags

    @staticmethod
    def _own_metrics(metrics: dict[str, Any], monitor: str | None) -> dict[str, Any]:
        smoothed = f"{monitor}_smoothed"
        return {smoothed: metrics[smoothed]} if smoothed in metrics else {}

    def _with_evaluation(self, step: int, metrics: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """On every `evaluate_every_steps`-th step, the evaluation's value becomes the monitor (True: it
        decides); on the other steps a training metric of the monitor's name is only logged. Runs here, at
        the step boundary on the training thread, so its value is the same in every run of the same steps."""
        monitor = self.tracker.monitor
        assert self.evaluate is not None and self.evaluate_every_steps is not None
        if step % self.evaluate_every_steps != 0:
            return metrics, False
        try:
            value = float(self.evaluate())
        except Exception as exc:  # noqa: BLE001 - a failing evaluation must never stop training
            self.evaluation_failures += 1
            if self.evaluation_failures == 1 or self.evaluation_failures % 100 == 0:
                log.error(
                    "%s: the evaluation at step %d failed (%s; %d so far); training goes on",
                    self.name,
                    step,
                    exc,
                    self.evaluation_failures,
                )
            return metrics, False
        if not math.isfinite(value):  # nothing to evaluate on yet (an empty window): nothing decided
            return metrics, False
        self.evaluations += 1
        assert monitor is not None  # track() refuses an evaluation without a monitor
        return {**metrics, monitor: value}, True

    def _settle_claims(self) -> None:
        """End the claims of performance saves whose outcome is known (cheap: done events only)."""
        waiting = []
        for step, job in self._claims:
            if job.done.is_set():  # superseded: the newer save that took over holds a claim of its own
                self.tracker.settle(step, stored=job.outcome == "saved")
            else:
                waiting.append((step, job))
        self._claims = waiting

    def _latest_metrics(self) -> dict[str, float]:
        metrics = {}
        for key, value in self._last_reported.items():
            try:
                metrics[key] = float(value)
            except (TypeError, ValueError):
                continue
        return metrics

    # ------------------------------------------------------------------------------------- restore


@contextlib.contextmanager
def _charged_to(writer: CheckpointWriter) -> Iterator[None]:
    """Charge the training thread's time in the block to the writer's overhead budget."""
    started = time.perf_counter()
    try:
        yield
    finally:
        writer.charge(time.perf_counter() - started)
