"""`PersistCallback` for Lightning: the LightningModule as the tracked model, the trainer's optimizers and LR
schedulers with it, the monitor read from `trainer.callback_metrics`.

- Restore happens in `on_fit_start`, after the strategy set up the optimizers and before the first batch, where
  Lightning's own `fit(ckpt_path=...)` restores: the weights, the optimizers and LR schedulers, and the trainer's
  loop state as Lightning saves it in its checkpoints (`fit_loop.state_dict()`: `global_step`, the epoch, the
  batch within it, a resumable dataloader's position), the precision plugin's state (a GradScaler) and the
  other callbacks' states. So `max_steps` and `max_epochs` stay totals across restarts, as with Lightning's own
  resume.
- The step axis is `trainer.global_step` (optimizer steps, not batches: with `accumulate_grad_batches` a step is
  reported on the batch that stepped the optimizer). A validation monitor (one that changes during validation,
  such as `val_loss`) is reported after each validation, at the same step, and only then.
- A `final` checkpoint is saved at the end of fit, on teardown and on an exception (whichever comes first).
- `fit(ckpt_path=...)` while the callback resumes from a checkpoint of its own fails with `ConfigError` before
  the first batch (Lightning would restore optimizers and loops from its file over the callback's).
- A monitor the LightningModule never logs fails fit with `ConfigError` naming the metrics it does log, where
  Lightning's own ModelCheckpoint raises: after the first validation, or after the first training epoch when
  there is no validation.
- With an `MLFlowLogger` among the trainer's loggers that logs to the same store, its run is the model's run:
  the checkpoints, their versions and the callback's metrics go there beside the logger's metrics and
  hyperparameters, and the logger ends the run (the callback does not finish it). A logger of another store is
  warned about and the model keeps its own run. A restart resumes from the newest version whatever run it is in.
- Under DDP only global rank 0 touches the store; restore gives every rank the same state
  (`mlflow_persist.integrations.distributed`). Lightning owns the signals: its SIGTERM handling ends fit through
  `on_exception`, where the final checkpoint is taken.

Use it with `enable_checkpointing=False` (or alongside ModelCheckpoint: they do not interfere).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import MLFlowLogger

from mlflow_persist._observe.logs import package_logger
from mlflow_persist._policy.policy import NO_SAVE, SaveDecision
from mlflow_persist._runtime.handle import RestoreInfo
from mlflow_persist.config import PersistConfig
from mlflow_persist.errors import ConfigError
from mlflow_persist.integrations.common import (
    close_persistence,
    numeric_metrics,
    one_or_list,
    open_persistence,
    shared_run,
)
from mlflow_persist.integrations.distributed import DistributedHandle, DistributedPersistence

log = package_logger("mlflow_persist.integrations.lightning")


class LightningTrainingState:
    """The trainer's share of a checkpoint, as Lightning's own checkpoint holds it (the weights, optimizers and
    schedulers are tracked apart): the fit loop's progress, the precision plugin's state and the other
    callbacks' states. Loading it is what Lightning's `restore_training_state` does with a `ckpt_path`."""

    def __init__(self, trainer: pl.Trainer, owner: pl.Callback) -> None:
        self.trainer = trainer
        self.owner = owner
        self.loaded = False

    def state_dict(self) -> dict[str, Any]:
        return {
            "fit_loop": self.trainer.fit_loop.state_dict(),
            "precision": self.trainer.precision_plugin.state_dict(),
            "callbacks": {
                callback.state_key: state
                for callback in self._other_callbacks()
                if (state := callback.state_dict()) and _plain(state)
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.trainer.fit_loop.load_state_dict(dict(state["fit_loop"]))
        if state.get("precision"):
            self.trainer.precision_plugin.load_state_dict(dict(state["precision"]))
        saved = state.get("callbacks") or {}
        for callback in self._other_callbacks():
            if callback.state_key in saved:
                callback.load_state_dict(dict(saved[callback.state_key]))
        self.loaded = True

    def _other_callbacks(self) -> list[pl.Callback]:
        return [callback for callback in self.trainer.callbacks if callback is not self.owner]  # type: ignore[attr-defined]


def _plain(value: Any) -> bool:
    """Whether `value` is made of what a checkpoint holds (a callback keeping an object elsewhere is skipped)."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return True
    if isinstance(value, Mapping):
        return all(isinstance(key, (str, int)) and _plain(item) for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return all(_plain(item) for item in value)
    return False


class PersistCallback(pl.Callback):
    """Persist a LightningModule's training with mlflow-persist, as the registered model `name`.

    The LightningModule is the tracked model, with the trainer's optimizers and LR schedulers; the monitor is
    read from `trainer.callback_metrics`. The newest checkpoint is restored in `on_fit_start` (after the
    strategy set up the optimizers, before the first batch); the handle steps after every training batch, and
    a validation monitor (such as `val_loss`) is reported after each validation, only then; a `final`
    checkpoint is saved at the end of fit, on teardown or on an exception. Under DDP only global rank 0 touches
    the store. With an `MLFlowLogger` of the same store among the trainer's loggers, the logger's run is the
    model's run (the logger ends it). `store` and `persistence_kwargs` go to the `Persistence` (a test's
    `MemoryStore`, alert sinks). Use it with `enable_checkpointing=False` (or alongside `ModelCheckpoint`: they
    do not interfere).
    """

    def __init__(
        self,
        name: str,
        config: PersistConfig | None = None,
        *,
        store: Any = None,
        persistence_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.config = config or PersistConfig()
        self._store = store
        self._persistence_kwargs = dict(persistence_kwargs or {})
        self.persistence: DistributedPersistence | None = None
        self.handle: DistributedHandle | None = None
        self.restored: RestoreInfo | None = None
        self.monitor = self.config.for_model(name).monitor  # once: it is read after every batch
        self._monitor_at_last_batch: float | None = None
        self._validation_monitor = False
        self._monitor_seen = False
        self._reported_step = -1

    # ------------------------------------------------------------------------------------- fit start

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.persistence = open_persistence(
            self.config, self._store, {"install_signal_handlers": False, **self._persistence_kwargs}
        )
        schedulers = [config.scheduler for config in trainer.lr_scheduler_configs]
        training_state = LightningTrainingState(trainer, self)
        logger_run = self._logger_run(trainer)
        self.handle = self.persistence.track(
            self.name,
            pl_module,
            optimizer=one_or_list(trainer.optimizers),
            scheduler=one_or_list(schedulers),
            extra=training_state,
            run_id=logger_run,
            log_reported_metrics=logger_run is None,  # else the MLFlowLogger logs them, at its own cadence
        )
        try:
            self.restored = self.handle.restore()
        except Exception:
            # A final checkpoint of this unrestored model would become the newest and lose the progress.
            persistence, self.persistence = self.persistence, None
            close_persistence(persistence, self.name, final_checkpoints=False)
            raise
        if self.restored is not None and trainer.ckpt_path is not None:
            # Lightning restores the optimizers and loops from its file after this hook: the two would mix.
            persistence, self.persistence = self.persistence, None
            close_persistence(persistence, self.name, final_checkpoints=False)
            raise ConfigError(
                f"{self.name}: fit() was given ckpt_path={str(trainer.ckpt_path)!r} and PersistCallback resumed "
                f"from v{self.restored.version} (step {self.restored.step}); Lightning would restore the optimizers "
                "and loops from its file over them, so pass one: drop ckpt_path to resume from mlflow-persist."
            )
        if self.restored is not None:
            if not training_state.loaded:
                _continue_global_step(trainer, self.restored.step, self.name)
            log.info(
                "%s: resumed from v%s (%s, step %d, epoch %d)",
                self.name,
                self.restored.version,
                self.restored.category,
                self.restored.step,
                trainer.current_epoch,
            )
            if trainer.max_steps != -1 and self.restored.step >= trainer.max_steps:
                log.warning(
                    "%s: the restored step %d has reached max_steps=%d, so fit ends at once (max_steps is the "
                    "total across restarts, as with Lightning's own resume); raise it to train further",
                    self.name,
                    self.restored.step,
                    trainer.max_steps,
                )
        self._reported_step = trainer.global_step

    def _logger_run(self, trainer: pl.Trainer) -> str | None:
        """The run of the trainer's `MLFlowLogger` when it logs to the checkpoint store (rank 0 only: elsewhere
        the logger has no run); None without one."""
        if self.persistence is None or not self.persistence.is_writer:
            return None
        loggers = [logger for logger in trainer.loggers if isinstance(logger, MLFlowLogger)]
        for logger in loggers:
            client = logger.experiment  # creates the logger's run now if it has none yet, as its first log would
            run_id = shared_run(self.name, self.persistence, "the MLFlowLogger", logger.run_id, client.tracking_uri)
            if run_id is not None:
                return run_id
        return None

    # ------------------------------------------------------------------------------------- steps

    def persist_step(self, step: int | None = None, **metrics: float) -> SaveDecision:
        """Every report to the handle goes through here (a subclass may observe the decisions)."""
        if self.handle is None:
            return NO_SAVE
        return self.handle.step(step, **metrics)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        metrics = numeric_metrics(trainer.callback_metrics)
        self._monitor_at_last_batch = metrics.get(self.monitor) if self.monitor is not None else None
        step = trainer.global_step
        if step == self._reported_step:
            return  # an accumulating batch: the optimizer did not step, the next batch that steps reports
        self._reported_step = step
        if self._validation_monitor and self.monitor is not None:
            metrics.pop(self.monitor, None)  # a stale validation value decides nothing between validations
        self.persist_step(step, **metrics)  # type: ignore[arg-type]

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.handle is None:
            return
        self._require_monitor(trainer)
        if self.monitor is None:
            return
        value = numeric_metrics(trainer.callback_metrics).get(self.monitor)
        if value is None:
            return
        if self._monitor_at_last_batch is None or value != self._monitor_at_last_batch:
            self._validation_monitor = True
        if self._validation_monitor:
            self.persist_step(step=self.handle.current_step, **{self.monitor: value})

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.enable_validation:  # else the first validation decides
            self._require_monitor(trainer)

    def _require_monitor(self, trainer: pl.Trainer) -> None:
        """A monitor missing from the logged metrics when Lightning's ModelCheckpoint would look for it is a
        misspelling or a metric never logged: fail at once instead of never saving a performance checkpoint."""
        if self._monitor_seen or self.monitor is None:
            return
        logged = numeric_metrics(trainer.callback_metrics)
        if self.monitor in logged:
            self._monitor_seen = True
            return
        raise ConfigError(
            f"{self.name}: the monitor {self.monitor!r} is not among the metrics the LightningModule logs "
            f"({', '.join(sorted(logged)) or 'none'}); log it with self.log({self.monitor!r}, value) or set "
            "`monitor` in the PersistConfig to one of those."
        )

    # ------------------------------------------------------------------------------------- the end

    def close(self) -> None:
        """Save the final checkpoint and finish the run (once; later calls do nothing). A checkpoint that
        could never be written is logged, not raised: training is over and the model in memory is intact."""
        persistence, self.persistence = self.persistence, None
        close_persistence(persistence, self.name)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        log.warning("%s: fit ended with %s; saving the final checkpoint", self.name, type(exception).__name__)
        self.close()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.close()


def _continue_global_step(trainer: pl.Trainer, step: int, name: str) -> None:
    """A checkpoint without the loop state (saved by an older release): the optimizer-step count continues from
    its step, so that the step axis and `max_steps` go on from there (the epoch starts again at 0)."""
    epoch_loop = trainer.fit_loop.epoch_loop
    progress = (
        epoch_loop.automatic_optimization.optim_progress.optimizer.step
        if trainer.lightning_module.automatic_optimization
        else epoch_loop.manual_optimization.optim_step_progress
    )
    progress.total.ready = progress.total.completed = step
    epoch_loop._batches_that_stepped = step
    log.warning(
        "%s: the checkpoint holds no loop state (an older release saved it): global_step continues from %d, "
        "the epoch starts again at 0",
        name,
        step,
    )


__all__ = ["LightningTrainingState", "PersistCallback"]
