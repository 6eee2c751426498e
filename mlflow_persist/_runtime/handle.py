"""`ModelHandle`: what the training thread calls for one model: `step()`, `save()`, `restore()`,
`revert_to_best()`. A step without a save costs microseconds and does no I/O; a save costs one in-memory
copy of the state, handed to the writer (see pipeline.py for what happens next)."""

from __future__ import annotations

import copy
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from mlflow_persist._format.device_copy import CopyBackend, DeviceCopies, default_backend
from mlflow_persist._format.fitting import fitting_part, model_state_fit
from mlflow_persist._format.payload import CheckpointState, build_payload, read_checkpoint_dir, restore_rng_state
from mlflow_persist._format.timestamps import format_age
from mlflow_persist._observe.alerts import Alert, AlertDispatcher
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
    select_best,
)
from mlflow_persist._policy.smoothing import MonitorSmoother
from mlflow_persist._policy.versions import VersionInfo, tag
from mlflow_persist._runtime.health import ModelHealth
from mlflow_persist._runtime.metrics_buffer import MetricsBuffer
from mlflow_persist._runtime.pipeline import SavePipeline
from mlflow_persist._runtime.writer import CheckpointWriter, SaveJob
from mlflow_persist._store.best import mark_corrupt
from mlflow_persist._store.protocol import CheckpointStore
from mlflow_persist.config import ModelSettings
from mlflow_persist.errors import CheckpointCorruptError, CheckpointMismatchError, PersistError, StoreError

__all__ = ["RESTORE_LOAD_ATTEMPTS", "Evaluate", "ModelHandle", "RestoreInfo", "Stateful"]

log = package_logger("mlflow_persist")

RESTORE_LOAD_ATTEMPTS = 4  # a transient store error is retried with 0.2, 0.4, 0.8 s pauses, then raised

Evaluate = Callable[[], float]


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
    cut: str | None = None  # the system checkpoint it came from (`Persistence.restore_all`)


class ModelHandle:
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
        self._store = store
        self._writer = writer
        self._alerts = alerts
        self._stop = stop
        self._last_reported: dict[str, float] = {}
        self._claims: list[tuple[int, SaveJob]] = []  # performance saves in flight, settled at step()
        # One written snapshot kept for reuse: the next snapshot copies into its tensors (no page faults).
        self._spare_payloads: deque[dict[str, Any]] = deque(maxlen=1)
        self.copy_backend: CopyBackend | None = None  # None: CUDA's when CUDA is in use (device_copy.py)
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
        monitor = self.tracker.monitor
        decides = True
        if self.evaluate is not None:
            metrics, decides = self._with_evaluation(step, metrics)
        raw = metrics.get(monitor) if decides else None
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
        self.metrics.add(step, metrics)
        if value is not None:
            self.tracker.observe(step, value)
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
    ) -> SaveJob | None:
        """Force a checkpoint of the current state (asynchronous unless `wait`); None if no snapshot could be
        taken (the reason is logged and counted).

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
            job = self._submit(category, self.current_step, value, None, forced=True, tags=extra_tags)
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
    ) -> SaveJob:
        """Snapshot the tracked objects and hand the snapshot to the writer. The copy goes into the tensors of
        the waiting snapshot it replaces, else of the spare one: at most two copies of the state exist (the
        one being written and one more)."""
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
        return self._writer.submit(job, replacing=replacing)

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
            model_state=self.model.state_dict(),
            optimizer_state=self.optimizer.state_dict() if self.optimizer is not None else None,
            scheduler_state=self.scheduler.state_dict() if self.scheduler is not None else None,
            extra_state=self.extra.state_dict() if self.extra is not None else None,
            step=step,
            metrics=self._latest_metrics(),
            category=category,
            monitor_state=self.monitor_state(),
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

    # ------------------------------------------------------------------------------------- degradation

    def _check_degradation(self, value: float) -> None:
        streak = self.tracker.update_degradation(
            value, self.settings.degradation_margin, self.settings.degradation_margin_mode
        )
        if streak != self.settings.degradation_patience:
            return
        self._alerts.fire(
            Alert(
                "degradation",
                self.name,
                f"{self.tracker.monitor} has been worse than the best ({self.tracker.best_value:.6g}) by more than "
                f"{self.settings.degradation_margin} for {streak} steps (now {value:.6g})",
                {"best": self.tracker.best_value, "value": value, "steps": streak},
            )
        )
        if self.settings.revert_on_degradation:
            try:
                self.revert_to_best()
            except Exception as exc:  # noqa: BLE001 - a failed revert must never stop training
                self.revert_failures += 1
                self.metrics.add(self.current_step, {"checkpoint/revert_failures": float(self.revert_failures)})
                log.error(
                    "%s: reverting to `best` failed (%s); training goes on with the live model",
                    self.name,
                    exc,
                    extra={"model": self.name, "outcome": "revert_failed"},
                )
                self._alerts.fire(
                    Alert("revert_failed", self.name, f"reverting to `best` failed: {exc}", {"step": self.current_step})
                )

    def revert_to_best(self) -> RestoreInfo | None:
        """Load the best valid checkpoint into the live model (on the training thread, a safe point); never a
        version tagged corrupt. A damaged one is tagged, `best` moves off it, and the next best is tried."""
        for _ in range(5):
            info = self._best_valid_version()
            if info is None:
                log.warning("%s: degradation revert skipped, no valid `best` checkpoint exists", self.name)
                return None
            try:
                state = self._load_with_retries(info)
            except CheckpointCorruptError as exc:
                mark_corrupt(self._store, info, str(exc), self.settings.mode, self.tracker.monitor)
                continue
            self._apply(state, restore_rng=False, restore_step=False, strict=True)
            self.reverts += 1
            self.tracker.degraded_steps = 0
            self.metrics.add(self.current_step, {"reverts": float(self.reverts)})
            log.warning(
                "%s: reverted the live model to best v%d (%s=%s)",
                self.name,
                info.version,
                info.monitor,
                info.value,
                extra={"model": self.name, "version": info.version, "outcome": "reverted"},
            )
            return RestoreInfo(info.version, info.category, info.step or 0, info.value, self.run_id)
        return None

    def _best_valid_version(self) -> VersionInfo | None:
        info = self._store.alias_version(self.registered_name)
        if info is not None and not info.corrupt:
            return info
        versions = self._store.list_versions(self.registered_name)
        chosen = select_best([v.summary() for v in versions], self.settings.mode, self.tracker.monitor)
        return next((v for v in versions if chosen is not None and v.version == chosen.version), None)

    # ------------------------------------------------------------------------------------- restore

    def restore(self, strict: bool = True) -> RestoreInfo | None:
        """Load the most recent valid checkpoint (or `best`, per `resume_from`) into every tracked object.

        - Damaged bytes (checksum, missing files, unreadable or refused payload): the version is tagged
          `corrupt=true`, `best` moves off it, and the next older version is tried.
        - An intact checkpoint that does not fit the tracked objects (a changed architecture) raises
          CheckpointMismatchError naming the keys and shapes, and leaves the registry untouched. With
          `strict=False` the tensors that fit are loaded and the rest keep their live values.
        - A store that stays unreachable raises StoreUnavailableError after retries; nothing is tagged.

        Returns None when the store holds no usable checkpoint of this model.
        """
        store = self._store
        if self.pipeline.outbox is not None and self.pipeline.drain_outbox(blocking=True) > 0:
            from_outbox = self._restore_from_outbox()
            if from_outbox is not None:
                return from_outbox
        versions = store.list_versions(self.registered_name)
        best = self.adopt_stored_best()
        candidates = [v for v in reversed(versions) if not v.corrupt]
        if self.settings.resume_from == "best" and best is not None and not best.corrupt:
            candidates = [best] + [v for v in candidates if v.version != best.version]
        skipped: list[int] = []
        for info in candidates:
            try:
                state = self._load_with_retries(info)
            except CheckpointCorruptError as exc:
                skipped.append(info.version)
                log.error(
                    "%s v%d is damaged (%s); falling back to the previous version",
                    self.name,
                    info.version,
                    exc,
                    extra={"model": self.name, "version": info.version, "outcome": "corrupt"},
                )
                mark_corrupt(store, info, str(exc), self.settings.mode, self.tracker.monitor)
                continue
            return self.apply_version(info, state, versions, strict, tuple(skipped))
        if versions:
            log.error(
                "%s: none of the %d stored checkpoints could be restored; starting fresh", self.name, len(versions)
            )
        return None

    def adopt_stored_best(self) -> VersionInfo | None:
        """Take the store's `best` as the value to beat (at restore); returns that version."""
        best = self._store.alias_version(self.registered_name)
        if (
            best is not None
            and best.value is not None
            and best.monitor in (None, self.tracker.monitor)
            and not best.corrupt
        ):
            self.tracker.reset_best(best.value, best.step)
        return best

    def apply_version(
        self,
        info: VersionInfo,
        state: CheckpointState,
        versions: list[VersionInfo],
        strict: bool = True,
        skipped: tuple[int, ...] = (),
    ) -> RestoreInfo:
        """Load a loaded and verified version into the tracked objects and continue from its step."""
        self._apply(state, restore_rng=True, restore_step=True, strict=strict)
        self.pipeline.last_version = info.version
        self.pipeline.last_saved = (info.version, state.step)
        self.schedule.start(self.current_step, time.monotonic())
        self._log_history(versions, info)
        return RestoreInfo(info.version, info.category, state.step, info.value, self.run_id, skipped, info.cut)

    def load_version(self, info: VersionInfo) -> CheckpointState:
        """Fetch and verify one version (transient store errors retried); CheckpointCorruptError when damaged."""
        return self._load_with_retries(info)

    def _load_with_retries(self, info: VersionInfo) -> CheckpointState:
        """Load a version; a store error (unreachable, refused) is transient, so it is retried and finally
        raised, never taken for damaged bytes."""
        for attempt in range(RESTORE_LOAD_ATTEMPTS - 1):
            try:
                return self._store.load_version(info)
            except StoreError as exc:
                log.warning("%s: loading v%d failed (%s); retrying", self.name, info.version, exc)
                time.sleep(0.2 * 2**attempt)
        return self._store.load_version(info)  # the last attempt: its error is raised

    def _restore_from_outbox(self) -> RestoreInfo | None:
        """The server is unreachable and newer checkpoints wait in the outbox: resume from the newest of them."""
        outbox = self.pipeline.outbox
        assert outbox is not None
        for entry in reversed(outbox.entries(self.registered_name)):
            try:
                state = read_checkpoint_dir(entry.directory, expected=entry.checksum)
                self._apply(state, restore_rng=True, restore_step=True, strict=True)
            except CheckpointCorruptError as exc:
                log.error(
                    "%s: outbox checkpoint %s is damaged (%s); trying an older one", self.name, entry.directory, exc
                )
                continue
            self.schedule.start(self.current_step, time.monotonic())
            log.warning(
                "%s: restored step %d from the outbox %s (not registered yet: the server is unreachable)",
                self.name,
                entry.step,
                entry.directory,
            )
            return RestoreInfo(None, entry.category, entry.step, entry.value, self.run_id)
        return None

    def _apply(self, state: CheckpointState, restore_rng: bool, restore_step: bool, strict: bool) -> None:
        """Load `state` into the tracked objects, all or nothing: on any failure every object gets its
        previous state back and CheckpointMismatchError says what does not fit."""
        live_model = self.model.state_dict()
        fit = model_state_fit(live_model, state.model_state)
        if not fit.fits and strict:
            raise CheckpointMismatchError(
                f"Checkpoint v{state.version} of {self.name} does not fit the tracked model ({fit.describe()}); "
                f"call restore(strict=False) to load only the tensors that fit, or track the changed model under "
                f"a new name. The registry was left as it is."
            )
        model_state = state.model_state if fit.fits else {**live_model, **fitting_part(live_model, state.model_state)}
        # The model goes last: its fit is checked above, so it is the one load that cannot fail for a mismatch,
        # and it needs no backup copy (a restore then costs one copy of the weights, not three).
        targets: list[tuple[str, Stateful, Any]] = []
        if self.optimizer is not None and state.optimizer_state is not None and fit.fits:
            targets.append(("optimizer", self.optimizer, state.optimizer_state))
        if self.scheduler is not None and state.scheduler_state is not None:
            targets.append(("scheduler", self.scheduler, state.scheduler_state))
        if self.extra is not None and state.extra_state is not None:
            targets.append(("extra", self.extra, state.extra_state))
        targets.append(("model", self.model, model_state))
        if not fit.fits:
            log.warning(
                "%s: loaded only the tensors of v%s that fit (%s); the optimizer state was not loaded",
                self.name,
                state.version,
                fit.describe(),
            )
        backups = [(obj, _backup(obj)) for _, obj, _ in targets[:-1]]
        failed = "model"
        try:
            for failed, obj, saved in targets:  # noqa: B007
                obj.load_state_dict(saved)
        except Exception as exc:  # noqa: BLE001 - an optimizer, scheduler or extra state that does not fit
            for obj, backup in backups:
                try:
                    obj.load_state_dict(backup)
                except Exception:  # noqa: BLE001
                    log.exception("%s: could not roll back a partial load", self.name)
            raise CheckpointMismatchError(
                f"Checkpoint v{state.version} of {self.name} does not fit the tracked {failed} "
                f"({type(exc).__name__}: {str(exc)[:300]}); track the objects the checkpoint was saved with, "
                "or a new model name. The registry was left as it is."
            ) from None
        if restore_rng:
            restore_rng_state(state.rng_state)
        if restore_step:
            self.current_step = state.step
            monitor_state = state.monitor_state or {}
            if isinstance(monitor_state.get("smoother"), dict):
                self.smoother.load_state_dict(monitor_state["smoother"])
            self.last_raw_value = monitor_state.get("last_raw_value")
            self.evaluations = int(monitor_state.get("evaluations", 0) or 0)

    def _log_history(self, versions: list[VersionInfo], restored: VersionInfo) -> None:
        lines = [
            f"{self.name}: restored v{restored.version} ({restored.category}, step {restored.step}, "
            f"{self.tracker.monitor}={restored.value}); best={self.tracker.best_value}; last checkpoints:"
        ]
        for v in versions[-8:][::-1]:
            mark = " <- restored" if v.version == restored.version else ""
            flag = " CORRUPT" if v.corrupt else ""
            lines.append(
                f"  v{v.version:<4} {v.category:<11} step {v.step!s:<8} {v.monitor or ''}={v.value!s:<12}"
                f" age {format_age(v.created_at)}{flag}{mark}"
            )
        log.info("\n".join(lines))


def _backup(obj: Stateful) -> Any:
    """A state to roll `obj` back to. An optimizer's own state dict suffices: `Optimizer.load_state_dict`
    replaces its state tensors instead of writing into them. Anything else gets a deep copy."""
    if isinstance(obj, torch.optim.Optimizer):
        return obj.state_dict()
    return copy.deepcopy(obj.state_dict())
