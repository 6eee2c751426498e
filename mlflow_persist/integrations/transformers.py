"""Hugging Face Transformers: `PersistCallback`, a `TrainerCallback` that checkpoints the Trainer's model,
optimizer and learning-rate scheduler into MLflow, and resumes from the newest checkpoint when `train()` starts.

    trainer = Trainer(model, args, train_dataset=train, eval_dataset=valid,
                      callbacks=[PersistCallback("tiny-bert", PersistConfig(monitor="eval_loss"))])
    trainer.train()  # the next run of the same script resumes where this one stopped

- Step axis: `state.global_step` (optimizer steps). After a restore `global_step` is the restored step, so a
  `max_steps` run ends at the same total after every restart, and logging, evaluation and the learning-rate
  schedule continue on the same grid. The data order does not continue: the Trainer starts its dataloader
  at the first batch of epoch 0 (with the checkpoint's random state).
- Monitor: any key of the Trainer's logs or evaluation metrics, as the Trainer names it (`loss`,
  `eval_loss`, `eval_accuracy`, `grad_norm`, `learning_rate`); every numeric one is logged to the run.
- Under `torch.distributed` only rank 0 touches the store; every rank restores the same checkpoint.
- SIGTERM/SIGINT stop the training at the next step (`should_training_stop`); the final checkpoints are
  taken at train end, then `GracefulExit` leaves `train()`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from mlflow_persist._observe.logs import package_logger
from mlflow_persist._policy.policy import SaveDecision
from mlflow_persist._runtime.handle import RestoreInfo
from mlflow_persist._runtime.process_effects import GracefulExit
from mlflow_persist._store.protocol import CheckpointStore
from mlflow_persist.config import PersistConfig
from mlflow_persist.errors import PersistError
from mlflow_persist.integrations.common import close_persistence, numeric_metrics, open_persistence
from mlflow_persist.integrations.distributed import DistributedHandle, DistributedPersistence

__all__ = ["NOT_LOGGED", "PersistCallback"]

log = package_logger("mlflow_persist")

# The Trainer logs its epoch counter with every record; after a restore it restarts at 0 (the dataloader
# does), so as a metric on the continued step axis it would mislead.
NOT_LOGGED = frozenset({"epoch"})


class PersistCallback(TrainerCallback):
    """Restores the newest checkpoint at train begin, advances the step axis at every optimizer step, reports
    the Trainer's logs and evaluation metrics at that step (a save when the monitor improved or a periodic
    save is due), and takes `final` checkpoints at train end.

    `store` and `persistence_kwargs` go to the `Persistence` (a test's MemoryStore, alert sinks,
    `install_signal_handlers`). One callback may serve several `train()` calls: each one resumes from the
    checkpoint the previous one closed with.
    """

    def __init__(
        self,
        name: str,
        config: PersistConfig | None = None,
        *,
        store: CheckpointStore | None = None,
        persistence_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.store = store
        self.persistence_kwargs = dict(persistence_kwargs or {})
        self.persistence: DistributedPersistence | None = None
        self.handle: DistributedHandle | None = None
        self.restored: RestoreInfo | None = None
        self._reported: dict[str, float] = {}  # what this step already reported (eval metrics arrive twice)
        self._loss_window: tuple[int, int] | None = None  # (global_step the Trainer began at, restored step)
        self._stop: GracefulExit | None = None

    # ------------------------------------------------------------------------------------- Trainer events

    def on_train_begin(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        model: Any = None,
        optimizer: Any = None,
        lr_scheduler: Any = None,
        **kwargs: Any,
    ) -> None:
        if model is None:
            raise PersistError("PersistCallback got no model at train begin; add it to a Trainer's callbacks.")
        self.close()  # a previous train() with this callback: its final checkpoint is what resumes now
        self._reported, self._loss_window, self._stop = {}, None, None
        self.persistence = open_persistence(self.config, self.store, self.persistence_kwargs)
        self.handle = self.persistence.track(self.name, model, optimizer, lr_scheduler)
        try:
            self.restored = self.handle.restore()
        except Exception:
            # A final checkpoint of this unrestored model would become the newest and lose the progress.
            self.close(final_checkpoints=False)
            raise
        if self.restored is None:
            return
        if state.global_step:
            log.warning(
                "%s: resume_from_checkpoint was overridden by checkpoint v%s (step %d); drop it, the "
                "callback resumes on its own",
                self.name,
                self.restored.version,
                self.restored.step,
            )
        if self.restored.step >= state.max_steps:
            log.warning(
                "%s: the restored step %d has reached max_steps=%d, so the Trainer stops after one more "
                "step; raise max_steps to train further",
                self.name,
                self.restored.step,
                state.max_steps,
            )
        # The Trainer averages its first `loss` log over the steps since its own start (global_step before
        # this restore), not over the steps it trained since: remember both to correct that one value.
        self._loss_window = (state.global_step, self.restored.step)
        state.global_step = self.restored.step

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self._open():
            self._reported = {}
            self._step(control, state.global_step, {})

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        metrics = self.fresh_metrics(logs or {})
        if "loss" in metrics and self._loss_window is not None:
            metrics["loss"] = self._corrected_loss(metrics["loss"], state.global_step)
        self._report(control, state, metrics)

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._report(control, state, self.fresh_metrics(metrics or {}))

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self.close()
        stop, self._stop = self._stop, None
        if stop is not None:
            raise stop

    # ------------------------------------------------------------------------------------- API

    def persist_step(self, step: int | None = None, **metrics: float) -> SaveDecision:
        """One `handle.step` (subclasses may look at the decision); `step` None advances the axis by one."""
        assert self.handle is not None, "persist_step() runs inside train(), after on_train_begin"
        return self.handle.step(step, **metrics)

    def fresh_metrics(self, values: Mapping[str, Any]) -> dict[str, float]:
        """The numeric values of a Trainer log record this step has not reported yet, under their own keys."""
        metrics = numeric_metrics(values)
        return {
            key: value for key, value in metrics.items() if key not in NOT_LOGGED and self._reported.get(key) != value
        }

    def close(self, final_checkpoints: bool = True) -> None:
        """Take the final checkpoints and finish the run (idempotent). A checkpoint that could never be
        written is logged, not raised: training is over and the model in memory is intact."""
        persistence, self.persistence = self.persistence, None
        close_persistence(persistence, self.name, final_checkpoints)

    # ------------------------------------------------------------------------------------- internals

    def _open(self) -> bool:
        """False outside train() (a `trainer.evaluate()` before or after it logs nothing here)."""
        return self.persistence is not None and self.handle is not None

    def _report(self, control: TrainerControl, state: TrainerState, metrics: dict[str, float]) -> None:
        """Logs and evaluations come after this step's `on_step_end` and belong to the same step: reported
        at `global_step`, they do not advance the axis."""
        if metrics and self._open():
            self._reported.update(metrics)
            self._step(control, state.global_step, metrics)

    def _step(self, control: TrainerControl, step: int, metrics: dict[str, float]) -> None:
        try:
            self.persist_step(step, **metrics)
        except GracefulExit as stop:  # a SIGTERM/SIGINT reached this step boundary: end train() cleanly
            self._stop = stop
            control.should_training_stop = True

    def _corrected_loss(self, loss: float, global_step: int) -> float:
        """The first `loss` after a restore as the mean over the steps trained since (see on_train_begin)."""
        assert self._loss_window is not None
        divided_by, trained_from = self._loss_window
        self._loss_window = None
        if global_step <= trained_from or global_step <= divided_by:
            return loss
        return loss * (global_step - divided_by) / (global_step - trained_from)
