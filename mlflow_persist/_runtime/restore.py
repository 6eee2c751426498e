"""The restore half of `ModelHandle`: load the newest valid checkpoint (or `best`) into the tracked objects, all
or nothing, falling back past damaged versions; revert the live model to `best`; resume from the outbox while a
server is unreachable. Runs on the training thread, at start-up or at a safe point.

Longer than 400 lines: the four ways in (newest, `best`, the outbox, a degradation revert) share one fallback
past damaged versions and one all-or-nothing apply, which are clearer side by side than split apart."""

from __future__ import annotations

import copy
import itertools
import time
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from mlflow_persist._format.fitting import fitting_part, model_state_fit
from mlflow_persist._format.payload import CheckpointState, read_checkpoint_dir, restore_rng_state
from mlflow_persist._format.timestamps import format_age
from mlflow_persist._observe.alerts import Alert, AlertDispatcher
from mlflow_persist._observe.logs import package_logger
from mlflow_persist._policy.policy import PerformanceTracker, PeriodicSchedule, select_best
from mlflow_persist._policy.smoothing import MonitorSmoother
from mlflow_persist._policy.versions import VersionInfo
from mlflow_persist._runtime.background_call import BackgroundCall
from mlflow_persist._runtime.metrics_buffer import MetricsBuffer
from mlflow_persist._runtime.pipeline import SavePipeline
from mlflow_persist._store.best import mark_corrupt
from mlflow_persist._store.protocol import CheckpointStore
from mlflow_persist.config import ModelSettings
from mlflow_persist.errors import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    CheckpointUnavailableError,
    StoreError,
)

__all__ = ["RESTORE_LOAD_ATTEMPTS", "HandleRestore", "RestoreInfo", "Stateful"]

log = package_logger("mlflow_persist")
#: Versions the restore's log line shows, and the first page it reads.
RECENT_SHOWN = 8

RESTORE_LOAD_ATTEMPTS = 4  # a transient store error is retried with 0.2, 0.4, 0.8 s pauses, then raised


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


class HandleRestore:
    """Restore and revert for one tracked model; `ModelHandle` provides the state declared here."""

    name: str
    registered_name: str
    model: torch.nn.Module
    optimizer: Stateful | None
    scheduler: Stateful | None
    extra: Stateful | None
    settings: ModelSettings
    tracker: PerformanceTracker
    smoother: MonitorSmoother
    schedule: PeriodicSchedule
    pipeline: SavePipeline
    metrics: MetricsBuffer
    run_id: str
    current_step: int
    reverts: int
    evaluations: int
    last_raw_value: float | None
    _store: CheckpointStore
    _alerts: AlertDispatcher
    max_wait: float
    revert_failures: int
    _pending_revert: BackgroundCall[tuple[VersionInfo, CheckpointState] | None] | None

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
        if self.settings.revert_on_degradation and self._pending_revert is None:
            # The registry read and the load run on a thread of their own: step() waits at most max_wait for
            # them, and a slow store's revert is applied at a later step boundary (_apply_pending_revert).
            self._pending_revert = BackgroundCall(self.load_best_for_revert, "mlflow-persist-revert")
            if not self._pending_revert.wait(self.max_wait):
                log.warning("%s: the revert to `best` waits for the store; it is applied at a later step", self.name)
            self._apply_pending_revert()

    def _apply_pending_revert(self) -> None:
        pending = self._pending_revert
        if pending is None or not pending.done:
            return
        self._pending_revert = None
        try:
            self.apply_revert(pending.result())
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
        return self.apply_revert(self.load_best_for_revert())

    def load_best_for_revert(self) -> tuple[VersionInfo, CheckpointState] | None:
        """The best valid version, loaded and verified (may run off the training thread); None when there is
        none. A damaged one is tagged, `best` moves off it, and the next best is tried."""
        for _ in range(5):
            info = self._best_valid_version()
            if info is None:
                return None
            try:
                return info, self._load_with_retries(info)
            except CheckpointCorruptError as exc:
                mark_corrupt(self._store, info, str(exc), self.settings.mode, self.tracker.monitor)
        return None

    def apply_revert(self, loaded: tuple[VersionInfo, CheckpointState] | None) -> RestoreInfo | None:
        """Put a version `load_best_for_revert` loaded into the live model (training thread, a step boundary)."""
        if loaded is None:
            log.warning("%s: degradation revert skipped, no valid `best` checkpoint exists", self.name)
            return None
        info, state = loaded
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

    def _best_valid_version(self) -> VersionInfo | None:
        info = self._store.alias_version(self.registered_name)
        if info is not None and not info.corrupt:
            return info
        versions = self._store.list_versions(self.registered_name)
        chosen = select_best([v.summary() for v in versions], self.settings.mode, self.tracker.monitor)
        return next((v for v in versions if chosen is not None and v.version == chosen.version), None)

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
        return self.restore_newest(strict)

    def restore_newest(self, strict: bool = True, at_most: int | None = None) -> RestoreInfo | None:
        """`restore()`, among the versions numbered `at_most` or lower when given."""
        store = self._store
        if self.pipeline.outbox is not None and self.pipeline.drain_outbox(blocking=True) > 0:
            from_outbox = self._restore_from_outbox()
            if from_outbox is not None:
                return from_outbox
        # Newest first, a page at a time: a restore reads what it tries, not the whole history.
        newest = store.newest_versions(self.registered_name)
        recent = list(itertools.islice(newest, RECENT_SHOWN))  # what the restore's log line shows
        seen: set[int] = set()
        best = self.adopt_stored_best()
        if best is not None and at_most is not None and best.version > at_most:
            best = None
        first = [best] if self.settings.resume_from == "best" and best is not None and not best.corrupt else []
        skipped: list[int] = []
        for info in itertools.chain(first, recent, newest):
            repeated = info.version in seen
            seen.add(info.version)
            if repeated or info.corrupt or (at_most is not None and info.version > at_most):
                continue
            try:
                state = self._load_with_retries(info)
            except CheckpointUnavailableError as exc:
                self.unavailable(exc)
                return None
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
            return self.apply_version(info, state, recent[::-1], strict, tuple(skipped))
        if seen:
            log.error("%s: none of the %d stored checkpoints could be restored; starting fresh", self.name, len(seen))
        return None

    def unavailable(self, exc: CheckpointUnavailableError) -> None:
        """A checkpoint to restore cannot be reached: raise (on_unavailable="fail") or log and return, so the
        caller starts fresh ("fresh")."""
        if self.settings.on_unavailable == "fresh":
            log.error(
                "%s: %s Starting fresh, as on_unavailable='fresh' says.",
                self.name,
                exc,
                extra={"model": self.name, "outcome": "unavailable"},
            )
            return
        raise CheckpointUnavailableError(
            f"{exc} To start training without them, set on_unavailable='fresh' (nothing is lost either way)."
        ) from None

    def live_state(self) -> dict[str, Any]:
        """Copies of the tracked objects' states and step, to put back if a system restore fails later."""
        objects = {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler, "extra": self.extra}
        saved: dict[str, Any] = {k: _backup(o) for k, o in objects.items() if o is not None}
        saved["model"] = copy.deepcopy(self.model.state_dict())  # _backup shares an optimizer's tensors only
        saved["current_step"] = self.current_step
        return saved

    def put_back(self, saved: dict[str, Any]) -> None:
        """Return the tracked objects to a `live_state()`."""
        objects = {"model": self.model, "optimizer": self.optimizer, "scheduler": self.scheduler, "extra": self.extra}
        for key, obj in objects.items():
            if obj is not None and key in saved:
                obj.load_state_dict(saved[key])
        self.current_step = saved["current_step"]

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

        def warn(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome is not None else None
            log.warning("%s: loading v%d failed (%s); retrying", self.name, info.version, exc)

        retrying = Retrying(
            stop=stop_after_attempt(RESTORE_LOAD_ATTEMPTS),
            wait=wait_exponential(multiplier=0.2),
            retry=retry_if_exception(_transient),
            before_sleep=warn,
            reraise=True,
        )
        return retrying(self._store.load_version, info)

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
        """`versions`: the newest ones, oldest first."""
        lines = [
            f"{self.name}: restored v{restored.version} ({restored.category}, step {restored.step}, "
            f"{self.tracker.monitor or 'no monitor'}={restored.value}); best={self.tracker.best_value}; "
            "last checkpoints:"
        ]
        for v in versions[-RECENT_SHOWN:][::-1]:
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


def _transient(exc: BaseException) -> bool:
    """A store error worth retrying at once; files out of reach (a moved folder, a permission) are not."""
    return isinstance(exc, StoreError) and not isinstance(exc, CheckpointUnavailableError)
