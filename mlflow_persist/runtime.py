"""Runtime: `Persistence` (store, writer, scheduler job, shutdown) and the per-model `ModelHandle`."""

from __future__ import annotations

import atexit
import copy
import errno
import logging
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import torch

from mlflow_persist.alerts import Alert, AlertDispatcher, AlertSink, command_sink, webhook_sink
from mlflow_persist.config import ModelSettings, PersistConfig
from mlflow_persist.errors import CheckpointCorruptError, PersistError
from mlflow_persist.naming import validate_model_name
from mlflow_persist.outbox import Outbox, default_outbox_root
from mlflow_persist.payload import FORMAT_VERSION, CheckpointState, build_payload, restore_rng_state
from mlflow_persist.policy import (
    BEST_ELIGIBLE,
    CATEGORIES,
    FINAL,
    PERFORMANCE,
    PERIODIC,
    PeriodicSchedule,
    PerformanceTracker,
    SaveDecision,
    decide_save,
    disk_pressure_order,
    retention_deletions,
)
from mlflow_persist.store import HEALTH_TAG, MlflowStore, VersionInfo, redact_credentials, tag
from mlflow_persist.sysmetrics import disk_space, system_metrics
from mlflow_persist.writer import CheckpointWriter, SaveJob

log = logging.getLogger("mlflow_persist")

# MLflow's own defaults retry an unreachable server for about 4 minutes per request; the outbox retries
# registration itself, so shorter client retries only make recovery quicker. A user's own settings win.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


class Stateful(Protocol):
    def state_dict(self) -> Any: ...
    def load_state_dict(self, state: Any) -> Any: ...


@dataclass(frozen=True)
class RestoreInfo:
    """What `restore()` loaded."""

    version: int | None  # None: resumed from the outbox, not registered yet
    category: str
    step: int
    value: float | None
    run_id: str | None
    skipped_corrupt: tuple[int, ...] = ()


class DiskFullError(PersistError, OSError):
    pass


@dataclass(frozen=True)
class Registration:
    """A completely written checkpoint waiting to become a registered version."""

    category: str
    step: int
    value: float | None
    improvement: float | None
    also: list[str]
    created_at: str
    sha256: str
    size_bytes: int
    retried: bool = False


class GracefulExit(SystemExit):
    """Raised in the main thread on SIGTERM so `with Persistence(...)` blocks unwind and save final checkpoints."""


def _run_is_gone(exc: BaseException) -> bool:
    return getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST" and "run" in str(exc).lower()


def _tensor_bytes(value: Any) -> int:
    """Bytes held by the tensors of a (nested) payload: about the size its checkpoint file needs."""
    if isinstance(value, torch.Tensor):
        return value.nelement() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _format_change(monitor: str, previous: float | None, value: float | None) -> str:
    if value is None:
        return f"{monitor} n/a"
    if previous is None:
        return f"{monitor} {value:.6g}"
    pct = f" ({(value - previous) / abs(previous) * 100:+.1f}%)" if previous else ""
    return f"{monitor} {previous:.6g} -> {value:.6g}{pct}"


def _age(created_at: str | None) -> str:
    if not created_at:
        return "?"
    try:
        seconds = (datetime.now(timezone.utc) - datetime.fromisoformat(created_at)).total_seconds()
    except ValueError:
        return "?"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


class ModelHandle:
    """What the training code calls for one model: `step()`, `save()`, `restore()`."""

    def __init__(self, persistence: "Persistence", name: str, model: torch.nn.Module, optimizer: Stateful | None,
                 scheduler: Stateful | None, extra: Stateful | None, settings: ModelSettings) -> None:
        self._persistence = persistence
        self.name = name
        self.registered_name = persistence.config.registered_name(name)
        self.model, self.optimizer, self.scheduler, self.extra = model, optimizer, scheduler, extra
        self.settings = settings
        self.tracker = PerformanceTracker(settings.monitor, settings.mode, settings.min_delta, settings.min_delta_mode)
        self.schedule = PeriodicSchedule(
            settings.periodic_every_steps,
            settings.periodic_every_minutes * 60 if settings.periodic_every_minutes else None,
        )
        self.current_step = 0
        self.last_version: int | None = None
        self.last_saved: tuple[int, int] | None = None  # (version, step) of the newest registered save
        self.last_save_time: float | None = None
        self.saves = 0
        self.consecutive_failures = 0
        self.failures = 0
        self.reverts = 0
        self.degraded = False
        self._alerted_failures = False
        self._last_saved_value: float | None = None
        self._last_reported: dict[str, float] = {}
        # One written snapshot kept for reuse: the next snapshot copies into its tensors (no page faults).
        self._spare_payloads: deque[dict[str, Any]] = deque(maxlen=1)
        self._metrics: deque[tuple[int, int, dict[str, float]]] = deque()
        self._registry_lock = threading.RLock()
        self._drain_lock = threading.Lock()
        self.run_id = persistence.store.ensure_run(name, tags={tag("registered_model"): self.registered_name})
        self.schedule.start(0, time.monotonic())

    # ------------------------------------------------------------------------------------- training thread

    @property
    def best_value(self) -> float | None:
        return self.tracker.best_value

    def step(self, step: int | None = None, **metrics: float) -> SaveDecision:
        """Report this step's metrics; saves (asynchronously) when the monitored value improved or a periodic
        save is due. Costs microseconds when nothing is saved."""
        self.current_step = step = self.current_step + 1 if step is None else int(step)
        self._last_reported = metrics
        self._metrics.append((step, int(time.time() * 1000), metrics))
        if len(self._metrics) >= self._persistence.config.metrics_flush_size:
            self._persistence.request_flush()
        value = metrics.get(self.tracker.monitor)
        if value is not None:
            value = float(value)
            self.tracker.observe(step, value)
        decision = decide_save(self.tracker, self.schedule, step, value)
        if decision.save:
            if decision.category == PERIODIC:
                self.schedule.taken(step, time.monotonic())
                if self._persistence.writer.attach_to_waiting(self.name, PERIODIC):
                    return SaveDecision(True, PERIODIC, value, None, "periodic version shares the waiting checkpoint")
            try:
                self._submit(decision.category or PERFORMANCE, step, value, decision.improvement, forced=False)
            except Exception as exc:  # noqa: BLE001 - a failed snapshot must never stop training
                self.record_failure(decision.category or PERFORMANCE, step, exc, attempts=1, final=True)
        elif value is not None and self.settings.degradation_margin is not None:
            self._check_degradation(value)
        return decision

    def save(self, category: str = FINAL, wait: bool = False, timeout: float | None = None) -> SaveJob | None:
        """Force a checkpoint of the current state (asynchronous unless `wait`); None if no snapshot could be
        taken (the reason is logged and counted)."""
        if category not in CATEGORIES:
            raise PersistError(f"Checkpoint category {category!r} is not one of {', '.join(CATEGORIES)}; use one.")
        value = self.tracker.last_value
        try:
            job = self._submit(category, self.current_step, value, None, forced=True)
        except Exception as exc:  # noqa: BLE001
            self.record_failure(category, self.current_step, exc, attempts=1, final=True)
            return None
        if wait:
            job.done.wait(timeout)
        return job

    def flush(self, timeout: float | None = None) -> bool:
        return self._persistence.writer.flush(self.name, timeout)

    def _submit(self, category: str, step: int, value: float | None, gained: float | None, forced: bool) -> SaveJob:
        try:
            spare = self._spare_payloads.pop()
        except IndexError:
            spare = None
        payload = build_payload(
            reuse=spare,
            model_name=self.name,
            model_state=self.model.state_dict(),
            optimizer_state=self.optimizer.state_dict() if self.optimizer is not None else None,
            scheduler_state=self.scheduler.state_dict() if self.scheduler is not None else None,
            extra_state=self.extra.state_dict() if self.extra is not None else None,
            step=step,
            metrics=self._latest_metrics(),
            category=category,
        )
        job = SaveJob(self.name, category, step, payload, value=value, improvement=gained, forced=forced,
                      release=self._spare_payloads.append)
        return self._persistence.writer.submit(job)

    def _latest_metrics(self) -> dict[str, float]:
        metrics = {}
        for key, value in self._last_reported.items():
            try:
                metrics[key] = float(value)
            except (TypeError, ValueError):
                continue
        return metrics

    def _check_degradation(self, value: float) -> None:
        streak = self.tracker.update_degradation(value, self.settings.degradation_margin,
                                                 self.settings.degradation_margin_mode)
        if streak != self.settings.degradation_patience:
            return
        self._persistence.alerts.fire(Alert(
            "degradation", self.name,
            f"{self.tracker.monitor} has been worse than the best ({self.tracker.best_value:.6g}) by more than "
            f"{self.settings.degradation_margin} for {streak} steps (now {value:.6g})",
            {"best": self.tracker.best_value, "value": value, "steps": streak},
        ))
        if self.settings.revert_on_degradation:
            self.revert_to_best()

    def revert_to_best(self) -> RestoreInfo | None:
        """Load the `best` checkpoint into the live model (on the training thread, a safe point)."""
        info = self._persistence.store.alias_version(self.registered_name)
        if info is None:
            log.warning("%s: degradation revert skipped, no `best` checkpoint exists", self.name)
            return None
        state = self._persistence.store.load_version(info)
        self._apply(state, restore_rng=False, restore_step=False)
        self.reverts += 1
        self.tracker.degraded_steps = 0
        self._metrics.append((self.current_step, int(time.time() * 1000), {"reverts": float(self.reverts)}))
        log.warning("%s: reverted the live model to best v%d (%s=%s)", self.name, info.version,
                    info.monitor, info.value, extra={"model": self.name, "version": info.version,
                                                     "outcome": "reverted"})
        return RestoreInfo(info.version, info.category, info.step or 0, info.value, info.run_id)

    # ------------------------------------------------------------------------------------- restore

    def restore(self) -> RestoreInfo | None:
        """Load the most recent valid checkpoint (or `best`, per `resume_from`) into every tracked object.

        A damaged version (checksum, format, shapes) is tagged `corrupt=true` and the next older one is tried.
        Returns None when the store holds no usable checkpoint of this model.
        """
        store = self._persistence.store
        if self._persistence.outbox is not None and self.drain_outbox(blocking=True) > 0:
            from_outbox = self._restore_from_outbox()
            if from_outbox is not None:
                return from_outbox
        versions = store.list_versions(self.registered_name)
        best = store.alias_version(self.registered_name)
        if best is not None and best.value is not None and best.monitor in (None, self.tracker.monitor):
            self.tracker.best_value, self.tracker.best_step = best.value, best.step
        candidates = [v for v in reversed(versions) if not v.corrupt]
        if self.settings.resume_from == "best" and best is not None and not best.corrupt:
            candidates = [best] + [v for v in candidates if v.version != best.version]
        skipped: list[int] = []
        for info in candidates:
            try:
                state = store.load_version(info)
                self._apply(state, restore_rng=True, restore_step=True)
            except CheckpointCorruptError as exc:
                skipped.append(info.version)
                log.error("%s v%d is damaged (%s); falling back to the previous version", self.name, info.version,
                          exc, extra={"model": self.name, "version": info.version, "outcome": "corrupt"})
                store.mark_corrupt(info.name, info.version, str(exc))
                continue
            self.last_version = info.version
            self.last_saved = (info.version, state.step)
            self.schedule.start(self.current_step, time.monotonic())
            self._log_history(versions, info)
            return RestoreInfo(info.version, info.category, state.step, info.value, self.run_id, tuple(skipped))
        if versions:
            log.error("%s: none of the %d stored checkpoints could be restored; starting fresh", self.name,
                      len(versions))
        return None

    def _restore_from_outbox(self) -> RestoreInfo | None:
        """The server is unreachable and newer checkpoints wait in the outbox: resume from the newest of them."""
        from mlflow_persist.payload import read_checkpoint_dir

        assert self._persistence.outbox is not None
        for entry in reversed(self._persistence.outbox.entries(self.registered_name)):
            try:
                state = read_checkpoint_dir(entry.directory, expected_sha256=entry.sha256)
                self._apply(state, restore_rng=True, restore_step=True)
            except CheckpointCorruptError as exc:
                log.error("%s: outbox checkpoint %s is damaged (%s); trying an older one", self.name, entry.directory,
                          exc)
                continue
            self.schedule.start(self.current_step, time.monotonic())
            log.warning("%s: restored step %d from the outbox %s (not registered yet: the server is unreachable)",
                        self.name, entry.step, entry.directory)
            return RestoreInfo(None, entry.category, entry.step, entry.value, self.run_id)
        return None

    def _apply(self, state: CheckpointState, restore_rng: bool, restore_step: bool) -> None:
        targets: list[tuple[str, Stateful, Any]] = [("model", self.model, state.model_state)]
        if self.optimizer is not None and state.optimizer_state is not None:
            targets.append(("optimizer", self.optimizer, state.optimizer_state))
        if self.scheduler is not None and state.scheduler_state is not None:
            targets.append(("scheduler", self.scheduler, state.scheduler_state))
        if self.extra is not None and state.extra_state is not None:
            targets.append(("extra", self.extra, state.extra_state))
        backups = [(obj, copy.deepcopy(obj.state_dict())) for _, obj, _ in targets]
        try:
            for _, obj, saved in targets:
                obj.load_state_dict(saved)
        except Exception as exc:  # noqa: BLE001 - shapes or keys that do not fit this model
            for obj, backup in backups:
                try:
                    obj.load_state_dict(backup)
                except Exception:  # noqa: BLE001
                    log.exception("%s: could not roll back a partial load", self.name)
            raise CheckpointCorruptError(
                f"checkpoint v{state.version} of {self.name} does not fit the tracked objects ({str(exc)[:300]})"
            ) from None
        if restore_rng:
            restore_rng_state(state.rng_state)
        if restore_step:
            self.current_step = state.step

    def _log_history(self, versions: list[VersionInfo], restored: VersionInfo) -> None:
        lines = [f"{self.name}: restored v{restored.version} ({restored.category}, step {restored.step}, "
                 f"{self.tracker.monitor}={restored.value}); best={self.tracker.best_value}; last checkpoints:"]
        for v in versions[-8:][::-1]:
            mark = " <- restored" if v.version == restored.version else ""
            flag = " CORRUPT" if v.corrupt else ""
            lines.append(f"  v{v.version:<4} {v.category:<11} step {v.step!s:<8} {v.monitor or ''}={v.value!s:<12}"
                         f" age {_age(v.created_at)}{flag}{mark}")
        log.info("\n".join(lines))

    def history(self, limit: int = 10) -> list[VersionInfo]:
        return self._persistence.store.list_versions(self.registered_name)[-limit:]

    # ------------------------------------------------------------------------------------- writer thread

    def execute(self, job: SaveJob) -> Any:
        """Write, register, move `best`, apply retention. Runs on the writer thread.

        Remote stores go through the durable outbox: the checkpoint is complete on local disk before any
        network call, and registration failures leave it there, in order, for the next drain.
        """
        persistence = self._persistence
        store = persistence.store
        started = time.monotonic()
        persistence.ensure_disk_space(self)
        if persistence.outbox is not None:
            entry = persistence.outbox.put(
                model=self.name, registered_name=self.registered_name, run_id=self.run_id,
                dirname=store.checkpoint_dirname(self.name, job.step), payload=job.payload, category=job.category,
                step=job.step, value=job.value, improvement=job.improvement, also=list(job.also),
            )
            job.payload = {}
            self.drain_outbox()
            return entry
        try:
            source, written = store.write_checkpoint(self.run_id, self.name, job.step, job.payload)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                persistence.free_disk(self, reason="disk full while writing",
                                      need_mb=_tensor_bytes(job.payload) / 2**20)
            raise
        registration = Registration(job.category, job.step, job.value, job.improvement, list(job.also),
                                    str(job.payload.get("created_at", "")), written.sha256, written.size_bytes,
                                    retried=job.attempts > 1)
        return self._register(source, registration, started)

    def _register(self, source: str, reg: "Registration", started: float, run_id: str | None = None) -> VersionInfo:
        """Register a written checkpoint; `run_id` is the run that holds its artifacts (default: this handle's)."""
        run_id = run_id or self.run_id
        store = self._persistence.store
        tags = {
            tag("category"): reg.category, tag("step"): reg.step, tag("monitor"): self.tracker.monitor,
            tag("value"): reg.value if reg.value is not None else "", tag("sha256"): reg.sha256,
            tag("format_version"): FORMAT_VERSION, tag("created_at"): reg.created_at, tag("size_bytes"): reg.size_bytes,
        }
        with self._registry_lock, store.lock(f"model-{self.registered_name}"):
            info = store.register_version(self.registered_name, source, run_id, tags, retried=reg.retried)
            for category in reg.also:
                store.register_version(self.registered_name, source, run_id, {**tags, tag("category"): category},
                                       retried=reg.retried)
            versions = store.list_versions(self.registered_name)
            best = store.reconcile_best(self.registered_name, self.settings.mode, versions,
                                        converge=not store.lock_is_shared, monitor=self.tracker.monitor) \
                if reg.category in BEST_ELIGIBLE else store.alias_version(self.registered_name)
            self._apply_retention(versions, best.version if best else None)
        self._after_save(reg, info, best, time.monotonic() - started)
        return info

    def drain_outbox(self, blocking: bool = False) -> int:
        """Upload and register this model's outbox entries in order; stops at the first failure (the rest
        wait for the next drain). Returns how many are still waiting. Never raises.

        Non-blocking calls return at once when another thread is draining this model already."""
        outbox = self._persistence.outbox
        if outbox is None:
            return 0
        if not self._drain_lock.acquire(blocking=blocking):
            return -1
        try:
            with outbox.lock(self.registered_name):
                return self._drain_locked(outbox)
        finally:
            self._drain_lock.release()

    def _drain_locked(self, outbox: Outbox) -> int:
        entries = outbox.entries(self.registered_name, sweep=True)
        for position, entry in enumerate(entries):
            started = time.monotonic()
            if not outbox.is_intact(entry):  # damaged on disk: it would block every later entry forever
                moved = outbox.quarantine(entry)
                log.error("%s: outbox checkpoint of step %d is incomplete or damaged; moved it to %s and went on "
                          "with the next one", self.name, entry.step, moved)
                continue
            try:
                source = self._persistence.store.upload_checkpoint_files(entry.run_id, entry.directory, entry.dirname)
                registration = Registration(entry.category, entry.step, entry.value, entry.improvement, entry.also,
                                            entry.created_at, entry.sha256, entry.size_bytes, retried=True)
                self._register(source, registration, started, run_id=entry.run_id)
            except Exception as exc:  # noqa: BLE001 - the entry stays on disk for the next drain
                if _run_is_gone(exc):
                    moved = outbox.quarantine(entry)
                    log.error("%s: outbox checkpoint of step %d belongs to run %s, which the server no longer has; "
                              "moved it to %s for the operator", self.name, entry.step, entry.run_id, moved)
                    continue
                self.record_failure(entry.category, entry.step, exc, attempts=None, final=False)
                return len(entries) - position
            outbox.remove(entry)
        return 0

    def pending_outbox(self) -> int:
        outbox = self._persistence.outbox
        return len(outbox.entries(self.registered_name)) if outbox is not None else 0

    def _apply_retention(self, versions: list[VersionInfo], best_version: int | None) -> None:
        store = self._persistence.store
        doomed = retention_deletions([v.summary() for v in versions], self.settings.mode, self.settings.keep_best,
                                     self.settings.keep_periodic, self.settings.keep_final, best_version)
        by_number = {v.version: v for v in versions}
        in_use = {v.source for v in versions if v.version not in doomed}
        for number in doomed:
            store.delete_version(by_number[number], sources_in_use=in_use)
            log.debug("%s: retention removed v%d (%s)", self.name, number, by_number[number].category)

    def _after_save(self, reg: "Registration", info: VersionInfo, best: VersionInfo | None, duration: float) -> None:
        self.saves += 1
        self.last_saved = (info.version, reg.step)  # one assignment: readers never see a torn pair
        self.last_version = info.version
        self.last_save_time = time.time()
        previous = self._last_saved_value if reg.category == PERFORMANCE else None
        if reg.category == PERFORMANCE:
            self._last_saved_value = reg.value
        metrics = {"checkpoint/saves": float(self.saves), "checkpoint/version": float(info.version),
                   "checkpoint/failures": float(self.failures)}
        if best is not None and best.value is not None:
            metrics[f"best_{self.tracker.monitor}"] = best.value
            metrics["checkpoint/best_version"] = float(best.version)
        if reg.improvement is not None:
            metrics["checkpoint/improvement"] = float(reg.improvement)
        self._metrics.append((reg.step, int(time.time() * 1000), metrics))
        change = _format_change(self.tracker.monitor, previous, reg.value) if reg.category == PERFORMANCE else \
            f"{self.tracker.monitor} {reg.value:.6g}" if reg.value is not None else self.tracker.monitor
        log.info("%s: %s, saved v%d (%s, step %d, %.1f MB, %.0f ms)", self.name, change, info.version, reg.category,
                 reg.step, reg.size_bytes / 2**20, duration * 1000,
                 extra={"model": self.name, "category": reg.category, "version": info.version, "step": reg.step,
                        "value": reg.value, "improvement": reg.improvement, "bytes": reg.size_bytes,
                        "duration_s": round(duration, 4), "outcome": "saved"})
        if self.consecutive_failures or self.degraded:
            self.consecutive_failures = 0
            if self.degraded:
                self.degraded = False
                self._alerted_failures = False
                self._persistence.safe_set_run_tags(self.run_id, {HEALTH_TAG: "ok"})
                log.warning("%s: saves succeed again; health back to ok", self.name)

    def on_failure(self, job: SaveJob, exc: BaseException, final: bool) -> None:
        self.record_failure(job.category, job.step, exc, job.attempts, final)

    def record_failure(self, category: str, step: int, exc: BaseException, attempts: int | None, final: bool) -> None:
        self.failures += 1
        self.consecutive_failures += 1
        attempt = f"attempt {attempts}" if attempts is not None else "registration from the outbox"
        outcome = "giving up" if final else "will retry"
        log.error("%s: saving the %s checkpoint of step %d failed (%s, %s): %s", self.name, category, step, attempt,
                  outcome, redact_credentials(str(exc)), extra={"model": self.name, "category": category, "step": step, "outcome": "failed"})
        self._metrics.append((self.current_step, int(time.time() * 1000),
                              {"checkpoint/failures": float(self.failures)}))
        threshold = self._persistence.config.failure_alert_threshold
        if self.consecutive_failures >= threshold and not self._alerted_failures:
            self._alerted_failures = True
            self.degraded = True
            self._persistence.safe_set_run_tags(self.run_id, {HEALTH_TAG: "degraded"})
            self._persistence.alerts.fire(Alert(
                "save_failures", self.name,
                f"{self.consecutive_failures} consecutive checkpoint saves failed: {redact_credentials(str(exc))}",
                {"step": step, "category": category, "error": redact_credentials(str(exc))[:500]},
            ))

    def drain_metrics(self) -> list[tuple[str, float, int, int]]:
        rows: list[tuple[str, float, int, int]] = []
        while self._metrics:
            step, ts, values = self._metrics.popleft()
            for key, value in values.items():
                try:
                    rows.append((key, float(value), ts, step))
                except (TypeError, ValueError):
                    continue
        return rows


class Persistence:
    """Opens the store, starts the background writer and the scheduler job; `close()` saves final checkpoints."""

    def __init__(self, config: PersistConfig | None = None, alert_sinks: list[AlertSink] | None = None,
                 install_signal_handlers: bool = True) -> None:
        self.config = config or PersistConfig()
        if self.config.fast_serialization:
            torch.serialization.set_crc32_options(False)
        if MlflowStore.is_remote_uri(self.config.tracking_uri):
            for key, value in HTTP_RETRY_DEFAULTS.items():
                os.environ.setdefault(key, value)
        self.store = MlflowStore(self.config.tracking_uri, self.config.experiment_name, self.config.artifact_location)
        self.outbox: Outbox | None = None
        if self.store.is_remote:
            root = Path(self.config.outbox_dir) if self.config.outbox_dir else default_outbox_root(self.store.tracking_uri)
            self.outbox = Outbox(root)
        sinks = list(alert_sinks or [])
        if self.config.alert_command:
            sinks.append(command_sink(self.config.alert_command))
        if self.config.alert_webhook:
            sinks.append(webhook_sink(self.config.alert_webhook))
        self.alerts = AlertDispatcher(sinks)
        self.handles: dict[str, ModelHandle] = {}
        self.writer = CheckpointWriter(
            self._execute, queue_size=self.config.writer_queue_size, max_attempts=self.config.save_retry_attempts,
            max_backoff_seconds=self.config.save_retry_max_wait_seconds, on_failure=self._on_failure,
        )
        self._closed = False
        self._close_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._previous_handlers: dict[int, Any] = {}
        from mlflow_persist.scheduler import PeriodicJob
        self.job = PeriodicJob(self, self.config.scheduler_interval_seconds)
        self.job.start()
        if install_signal_handlers:
            self._install_signal_handlers()
        atexit.register(self._close_at_exit)

    # ------------------------------------------------------------------------------------- API

    def track(self, name: str, model: torch.nn.Module, optimizer: Stateful | None = None,
              scheduler: Stateful | None = None, extra: Stateful | None = None) -> ModelHandle:
        validate_model_name(name)
        validate_model_name(self.config.registered_name(name))  # a bad prefix fails here, not at every save
        if name in self.handles:
            raise PersistError(f"Model {name!r} is already tracked in this process; call track() once per model.")
        handle = ModelHandle(self, name, model, optimizer, scheduler, extra, self.config.for_model(name))
        self.handles[name] = handle
        try:
            self.store.sweep_partial_checkpoints(handle.run_id, self.config.partial_sweep_age_seconds)
        except Exception as exc:  # noqa: BLE001 - sweeping leftovers is housekeeping
            log.warning("could not sweep leftovers of interrupted saves for %s: %s", name, exc)
        return handle

    def flush(self, timeout: float | None = None) -> bool:
        done = self.writer.flush(timeout=timeout)
        self.flush_metrics()
        return done

    def __enter__(self) -> "Persistence":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self, final_checkpoints: bool = True, timeout: float | None = 600.0) -> None:
        """Flush everything, save a `final` checkpoint per model, finish the runs."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        try:
            if final_checkpoints:
                for handle in list(self.handles.values()):
                    try:
                        handle.save(FINAL)
                    except Exception as exc:  # noqa: BLE001
                        log.error("%s: the final checkpoint could not be taken: %s", handle.name, exc)
            self.writer.close(timeout=timeout)
            for handle in list(self.handles.values()):
                waiting = handle.drain_outbox(blocking=True)
                if waiting > 0 and self.outbox is not None:
                    log.warning("%s: %d checkpoint(s) wait in the outbox %s; they are registered at the next start",
                                handle.name, waiting, self.outbox.root / handle.registered_name)
        finally:
            self.job.stop()
            self.flush_metrics()
            for handle in list(self.handles.values()):
                try:
                    self.store.finish_run(handle.run_id)
                except Exception as exc:  # noqa: BLE001
                    log.warning("could not mark the run of %s finished: %s", handle.name, exc)
            self._restore_signal_handlers()
        lost = [job for job in self.writer.failed]
        if lost:
            summary = ", ".join(f"{j.model} step {j.step} ({j.category}): {j.error}" for j in lost[:5])
            raise PersistError(
                f"{len(lost)} checkpoint(s) could never be written ({summary}); check the store and disk, then "
                "restart to resume from the last saved checkpoint."
            )

    # ------------------------------------------------------------------------------------- background

    def _execute(self, job: SaveJob) -> VersionInfo:
        return self.handles[job.model].execute(job)

    def _on_failure(self, job: SaveJob, exc: BaseException, final: bool) -> None:
        self.handles[job.model].on_failure(job, exc, final)

    def request_flush(self) -> None:
        self.job.wake()

    def flush_metrics(self) -> None:
        with self._flush_lock:
            for handle in list(self.handles.values()):
                rows = handle.drain_metrics()
                if not rows:
                    continue
                try:
                    self.store.log_metrics(handle.run_id, rows)
                except Exception as exc:  # noqa: BLE001 - metrics are retried at the next flush
                    log.warning("could not log %d metrics of %s (%s); will retry", len(rows), handle.name, exc)
                    for key, value, ts, step in rows:
                        handle._metrics.appendleft((step, ts, {key: value}))
                    break

    def tick(self, now: float | None = None) -> None:
        """The scheduler job: marks time-based saves due, flushes metrics, logs system metrics, checks disk."""
        now = time.monotonic() if now is None else now
        for handle in list(self.handles.values()):
            handle.schedule.check_time(now)
        if self.outbox is not None:
            for handle in list(self.handles.values()):
                handle.drain_outbox()
        if self.config.log_system_metrics and self.handles:
            first = next(iter(list(self.handles.values())))
            try:
                metrics = system_metrics(self.store.checkpoint_disk_path(first.run_id))
            except Exception as exc:  # noqa: BLE001
                log.debug("system metrics unavailable: %s", exc)
            else:
                ts = int(time.time() * 1000)
                for handle in list(self.handles.values()):
                    handle._metrics.append((handle.current_step, ts, metrics))
        self.flush_metrics()
        for handle in list(self.handles.values()):
            try:
                self.ensure_disk_space(handle)
            except DiskFullError as exc:
                log.warning("%s", exc)
            except Exception as exc:  # noqa: BLE001
                log.debug("disk check failed for %s: %s", handle.name, exc)

    # ------------------------------------------------------------------------------------- disk

    def ensure_disk_space(self, handle: ModelHandle) -> None:
        path = self.store.checkpoint_disk_path(handle.run_id)
        if self.store.is_remote and self.store.local_artifact_dir(handle.run_id) is None:
            return
        space = disk_space(path)
        if not space.is_short(self.config.min_free_disk_mb, self.config.min_free_disk_percent):
            return
        self.free_disk(handle, reason=f"only {space.free_mb:.0f} MB ({space.free_percent:.1f}%) free")
        space = disk_space(path)
        if space.is_short(self.config.min_free_disk_mb, self.config.min_free_disk_percent):
            raise DiskFullError(
                f"Only {space.free_mb:.0f} MB free on {path} after cleanup (need {self.config.min_free_disk_mb} MB "
                f"and {self.config.min_free_disk_percent}%); free disk space or lower min_free_disk_mb."
            )

    def free_disk(self, handle: ModelHandle, reason: str, need_mb: float = 0.0) -> int:
        """Delete checkpoints in disk-pressure order (never `best`, never the newest) until space suffices:
        the configured reserve plus `need_mb` (the size of a checkpoint that just failed for lack of space)."""
        deleted = 0
        path = self.store.checkpoint_disk_path(handle.run_id)
        for candidate in [handle, *[h for h in list(self.handles.values()) if h is not handle]]:
            with candidate._registry_lock, self.store.lock(f"model-{candidate.registered_name}"):
                versions = self.store.list_versions(candidate.registered_name)
                best = self.store.alias_version(candidate.registered_name)
                order = disk_pressure_order([v.summary() for v in versions], candidate.settings.mode,
                                            best.version if best else None)
                by_number = {v.version: v for v in versions}
                for number in order:
                    if not disk_space(path).is_short(self.config.min_free_disk_mb + need_mb,
                                                     self.config.min_free_disk_percent):
                        break
                    self.store.delete_version(by_number[number])
                    deleted += 1
                    log.warning("%s: deleted v%d (%s) to free disk space: %s", candidate.name, number,
                                by_number[number].category, reason,
                                extra={"model": candidate.name, "version": number, "outcome": "deleted"})
        return deleted

    # ------------------------------------------------------------------------------------- signals

    def safe_set_run_tags(self, run_id: str, tags: dict[str, str]) -> None:
        try:
            self.store.set_run_tags(run_id, tags)
        except Exception as exc:  # noqa: BLE001
            log.warning("could not set run tags %s: %s", tags, exc)

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM,):
            self._previous_handlers[signum] = signal.signal(signum, self._on_signal)

    def _restore_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous_handlers.items():
            signal.signal(signum, previous)
        self._previous_handlers.clear()

    def _on_signal(self, signum: int, frame: Any) -> None:
        log.warning("received %s: saving final checkpoints", signal.Signals(signum).name)
        raise GracefulExit(0)

    def _close_at_exit(self) -> None:
        if not self._closed:
            try:
                self.close()
            except Exception as exc:  # noqa: BLE001
                log.error("%s", exc)
