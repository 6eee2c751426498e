"""Hugging Face Transformers: `PersistCallback`, a `TrainerCallback` that checkpoints the Trainer's model,
optimizer, learning-rate scheduler, random states and `TrainerState` into MLflow, and resumes through the
Trainer's own resume.

    persist = PersistCallback("tiny-bert", PersistConfig(monitor="eval_loss"))
    trainer = Trainer(model, args, train_dataset=train, eval_dataset=valid, callbacks=[persist])
    trainer.train(resume_from_checkpoint=persist.resume_checkpoint())  # None on the first run

- `resume_checkpoint()` writes the newest valid checkpoint as the folder the Trainer writes itself
  (`pytorch_model.bin`, `optimizer.pt`, `scheduler.pt`, `rng_state.pth`, `trainer_state.json`), so the Trainer
  resumes exactly as from its own checkpoint: `global_step`, `epoch`, `log_history` and `best_metric` come
  back, the dataloader is fast-forwarded past the batches already trained, the random states are restored
  after that, and `train_loss` and `steps_per_second` cover the steps this `train()` trained.
- A plain `trainer.train()` also resumes, at train begin, from the same checkpoint: weights, optimizer,
  scheduler, random states, `global_step` and the rest of `TrainerState`; the data order then starts again at
  the first batch of epoch 0 (the Trainer decided it before the callback could speak).
- Step axis: `state.global_step` (optimizer steps), so a `max_steps` run ends at the same total after every
  restart, and logging, evaluation and the learning-rate schedule continue on the same grid.
- Monitor: any key of the Trainer's logs or evaluation metrics, as the Trainer names it (`loss`,
  `eval_loss`, `eval_accuracy`, `grad_norm`, `learning_rate`); every numeric one is logged to the run (by the
  `MLflowCallback` alone when the callback shares its run).
- With `report_to` including `"mlflow"`, the run Hugging Face's `MLflowCallback` started (at train begin, before
  this callback's turn) is the model's run when it is in the same store: checkpoints, versions and metrics go
  there beside the Trainer's parameters and logs, and the `MLflowCallback` ends the run. In another store, the
  model keeps its own run, with a warning.
- Under `torch.distributed` only rank 0 touches the store; every rank restores the same checkpoint.
- SIGTERM/SIGINT stop the training at the next step (`should_training_stop`); the final checkpoints are
  taken at train end, then `GracefulExit` leaves `train()`.

Longer than 400 lines: the callback answers the Trainer's events in the order the Trainer calls them (a step's
report waits for its logs and evaluation), and those hooks read best side by side; the Trainer's folder
(trainer_folder.py) and the shared helpers (common.py) live apart.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch.distributed as dist
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from mlflow_persist._format.export import MODEL_CONFIG_KEY
from mlflow_persist._observe.logs import package_logger
from mlflow_persist._policy.policy import SaveDecision
from mlflow_persist._runtime.handle import RestoreInfo
from mlflow_persist._runtime.process_effects import GracefulExit
from mlflow_persist._store.protocol import CheckpointStore
from mlflow_persist.config import PersistConfig
from mlflow_persist.errors import CheckpointCorruptError, ConfigError, PersistError
from mlflow_persist.integrations.common import close_persistence, numeric_metrics, open_persistence, shared_run
from mlflow_persist.integrations.distributed import DistributedHandle, DistributedPersistence, is_distributed
from mlflow_persist.integrations.ranks import agree, same_random_streams
from mlflow_persist.integrations.trainer_folder import TRAINER_STATE_KEY, write_trainer_folder

__all__ = ["NOT_LOGGED", "PersistCallback", "TrainerStateRecord"]

log = package_logger("mlflow_persist")

# The Trainer logs its epoch counter with every record; after a restore it restarts at 0 (the dataloader
# does), so as a metric on the continued step axis it would mislead.
NOT_LOGGED = frozenset({"epoch"})


# The TrainerState fields a plain train() (no resume_from_checkpoint) takes back at train begin.
RESUMED_FIELDS = (
    "log_history",
    "best_metric",
    "best_global_step",
    "best_model_checkpoint",
    "total_flos",
    "num_input_tokens_seen",
)


class TrainerStateRecord:
    """The Trainer's `TrainerState` as a checkpoint member: its JSON as `trainer_state.json` holds it, taken when
    the snapshot is, with the TrainerControl's state as the Trainer records it in its own checkpoints."""

    def __init__(self, state: TrainerState, control: TrainerControl, model: Any = None) -> None:
        self.state = state
        self.control = control
        self.loaded: dict[str, Any] | None = None
        to_json = getattr(getattr(model, "config", None), "to_json_string", None)  # a PreTrainedModel's config
        self.model_config_json: str | None = to_json() if callable(to_json) else None  # `export --format hf` needs it

    def state_dict(self) -> dict[str, Any]:
        if isinstance(self.state.stateful_callbacks, dict):
            self.state.stateful_callbacks["TrainerControl"] = self.control.state()
        saved = {TRAINER_STATE_KEY: json.dumps(dataclasses.asdict(self.state), sort_keys=True)}
        if self.model_config_json is not None:
            saved[MODEL_CONFIG_KEY] = self.model_config_json
        return saved

    def load_state_dict(self, saved: Mapping[str, Any]) -> None:
        """Takes back the saved `log_history`, `best_metric` and the rest of RESUMED_FIELDS into the live state
        (`global_step` is the callback's to set), so that `state_dict()` then reflects what was loaded, as the
        other ranks receive it under torch.distributed."""
        self.loaded = json.loads(saved[TRAINER_STATE_KEY])
        for name in RESUMED_FIELDS:
            if name in self.loaded and hasattr(self.state, name):
                setattr(self.state, name, self.loaded[name])


class PersistCallback(TrainerCallback):
    """Restores the newest checkpoint at train begin, advances the step axis at every optimizer step, reports
    the Trainer's logs and evaluation metrics at that step (a save when the monitor improved or a periodic
    save is due), and takes `final` checkpoints at train end. With `report_to` including `"mlflow"`, the run of
    Hugging Face's `MLflowCallback` is the model's run when it is in the same store (the `MLflowCallback` ends it).

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
        self._resume_folder: tuple[Path, int, int | None] | None = None  # (temp dir, step, version) handed out
        self._pending: dict[str, float] | None = None  # a step's report waiting for its logs and evaluation
        self._training = False  # between train begin and close
        self._names_seen: set[str] = set()  # every metric name the Trainer logged or evaluated in this train()
        self._monitor_found = False

    # ------------------------------------------------------------------------------------- native resume

    def resume_checkpoint(self) -> str | None:
        """The newest valid checkpoint as a Trainer checkpoint folder, for `trainer.train(resume_from_checkpoint=...)`;
        None when the store holds none (the first run). Damaged versions are passed over, as a restore does.
        The folder is a temporary copy, removed at train end.

        Under torch.distributed it is collective (call it on every rank): rank 0 writes the folder and every rank
        gets its path, so the ranks must share the temporary directory's filesystem (one machine, or TMPDIR on a
        shared one). A checkpoint holds rank 0's random state: every rank takes it when the ranks' random states
        are alike now (the Trainer's `set_seed` seeds every rank the same); else only rank 0 does, and the Trainer
        says the other ranks' are missing."""
        if self.persistence is None:
            self.persistence = open_persistence(self.config, self.store, self.persistence_kwargs)
        outcome: tuple[str, Any] = ("ok", None)
        alike = {"python", "numpy", "torch"} <= same_random_streams()  # collective, as this whole call is
        rank_files = (dist.get_world_size() if alike else 1) if is_distributed() else 0
        if self.persistence.is_writer:
            try:
                outcome = ("ok", self._write_resume_folder(rank_files))
            except Exception as exc:  # noqa: BLE001 - raised on every rank by agree
                outcome = ("error", exc)
        handed_out = agree(outcome, "write the Trainer's resume folder") if is_distributed() else outcome[1]
        if outcome[0] == "error":
            raise outcome[1]
        if handed_out is None:
            return None
        folder, step, version = handed_out
        self._resume_folder = (Path(folder).parent, step, version)
        return str(folder)

    def _write_resume_folder(self, rank_files: int) -> tuple[str, int, int | None] | None:
        """On rank 0: the newest valid version written as a Trainer folder (its path, step and version)."""
        assert self.persistence is not None
        persistence = self.persistence.persistence
        assert persistence is not None  # rank 0: the writer
        registered = persistence.config.registered_name(self.name)
        for info in persistence.store.newest_versions(registered):
            if info.corrupt:
                continue
            try:
                state = persistence.store.load_version(info)
            except CheckpointCorruptError as exc:
                log.warning("%s: v%s is damaged (%s); trying the next older one", self.name, info.version, exc)
                continue
            directory = Path(tempfile.mkdtemp(prefix="mlflow-persist-resume-"))
            try:
                folder = write_trainer_folder(state, directory, rank_files)
            except BaseException:
                shutil.rmtree(directory, ignore_errors=True)
                raise
            log.info(
                "%s: v%s (step %d) written for the Trainer's resume at %s", self.name, info.version, state.step, folder
            )
            return str(folder), state.step, info.version
        return None

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
        if self._training:
            self.close()  # a previous train() with this callback: its final checkpoint is what resumes now
        self._training = True
        self._reported, self._loss_window, self._stop, self._pending = {}, None, None, None
        self._names_seen, self._monitor_found = set(), False
        if self.persistence is None:
            self.persistence = open_persistence(self.config, self.store, self.persistence_kwargs)
        record = TrainerStateRecord(state, control, model)
        callback_run = self._mlflow_callback_run(args)
        self.handle = self.persistence.track(  # with the MLflowCallback's run, it logs the Trainer's metrics
            self.name,
            model,
            optimizer,
            lr_scheduler,
            extra=record,
            run_id=callback_run,
            log_reported_metrics=callback_run is None,
        )
        try:
            self.restored = self.handle.restore()
            native = self._check_resume(state)
        except Exception:
            # A final checkpoint of this unrestored model would become the newest and lose the progress.
            self.close(final_checkpoints=False)
            raise
        if self.restored is None or native:
            return  # the Trainer resumed itself, from the folder resume_checkpoint() wrote
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

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._report_pending(control, state)  # a log or evaluation that was due and did not come

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if not self._open():
            return
        self._reported = {}
        if control.should_log or control.should_evaluate:
            # Reported after this step's last log or evaluation, so that a checkpoint of this step holds them in
            # its TrainerState, as the Trainer's own checkpoint of the step does.
            self._pending = {}
        else:
            self._step(control, state.global_step, {})

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._names_seen.update(numeric_metrics(logs or {}))
        metrics = self.fresh_metrics(logs or {})
        if "loss" in metrics and self._loss_window is not None:
            metrics["loss"] = self._corrected_loss(metrics["loss"], state.global_step)
        if self._pending is not None and control.should_evaluate:  # the evaluation of this step is still to come
            self._pending.update(metrics)
            self._reported.update(metrics)
            return
        self._report(control, state, metrics)
        if args.eval_strategy == "no":  # else the first evaluation decides
            self._require_monitor()

    def on_evaluate(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        metrics: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        self._names_seen.update(numeric_metrics(metrics or {}))
        self._report(control, state, self.fresh_metrics(metrics or {}))
        self._require_monitor()

    def on_epoch_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._report_pending(control, state)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._report_pending(control, state)
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
        persistence, self.persistence, self._training = self.persistence, None, False
        close_persistence(persistence, self.name, final_checkpoints)
        folder, self._resume_folder = self._resume_folder, None
        if folder is not None and (persistence is None or persistence.is_writer):  # rank 0 wrote it
            shutil.rmtree(folder[0], ignore_errors=True)

    def _check_resume(self, state: TrainerState) -> bool:
        """Whether the Trainer resumed from the folder `resume_checkpoint()` wrote (True), or not at all (False).
        A Trainer resumed from another checkpoint while the store has one of its own fails: the two would mix."""
        restored = self.restored
        if restored is None or not state.global_step:
            return False
        handed_out = self._resume_folder
        if handed_out is not None and handed_out[1] == state.global_step:
            if handed_out[2] is not None and restored.version != handed_out[2]:
                raise PersistError(
                    f"{self.name}: the Trainer resumed from v{handed_out[2]} but the newest valid checkpoint is now "
                    f"v{restored.version}; call resume_checkpoint() right before train()."
                )
            return True
        raise ConfigError(
            f"{self.name}: train() was given a checkpoint at global_step {state.global_step} that "
            f"resume_checkpoint() did not write, and the store holds v{restored.version} (step {restored.step}); "
            "pass resume_from_checkpoint=callback.resume_checkpoint(), or nothing."
        )

    # ------------------------------------------------------------------------------------- internals

    def _mlflow_callback_run(self, args: TrainingArguments) -> str | None:
        """The run Hugging Face's `MLflowCallback` logs to, when `report_to` includes it and it logs to the
        checkpoint store; None otherwise. It starts its run (or takes the active one) in its own on_train_begin,
        which the Trainer calls first: `report_to`'s callbacks come before those passed in `callbacks`."""
        report_to = [args.report_to] if isinstance(args.report_to, str) else list(args.report_to or [])
        if "mlflow" not in report_to or self.persistence is None or not self.persistence.is_writer:
            return None
        import mlflow  # imported already: the MLflowCallback and the store use it

        active = mlflow.active_run()
        if active is None:
            log.warning(
                "%s: report_to includes mlflow but no MLflow run is active at train begin (add PersistCallback "
                "after the MLflowCallback); the checkpoints go to the model's own run",
                self.name,
            )
            return None
        return shared_run(
            self.name, self.persistence, "the MLflowCallback", active.info.run_id, mlflow.get_tracking_uri()
        )

    def _require_monitor(self) -> None:
        """A monitor missing from what the Trainer logged by its first evaluation (or its first log, without
        evaluation) is a misspelling or a metric never computed: fail at once, as the Trainer's own
        `metric_for_best_model` does, instead of never saving a performance checkpoint. The final checkpoint is
        still taken, so the steps trained so far are kept."""
        if self._monitor_found or not self._open():
            return
        monitor = (self.config or PersistConfig()).for_model(self.name).monitor
        if monitor is None or monitor in self._names_seen:
            self._monitor_found = True
            return
        self.close()
        raise ConfigError(
            f"{self.name}: the monitor {monitor!r} is not among the metrics the Trainer logs and evaluates "
            f"({', '.join(sorted(self._names_seen)) or 'none'}); set `monitor` in the PersistConfig to one of "
            "those (evaluation metrics carry the `eval_` prefix)."
        )

    def _open(self) -> bool:
        """False outside train() (a `trainer.evaluate()` before or after it logs nothing here)."""
        return self._training and self.persistence is not None and self.handle is not None

    def _report(self, control: TrainerControl, state: TrainerState, metrics: dict[str, float]) -> None:
        """Logs and evaluations come after this step's `on_step_end` and belong to the same step: reported
        at `global_step`, they do not advance the axis. A step whose report waited for them goes with them."""
        pending, self._pending = self._pending, None
        if (metrics or pending is not None) and self._open():
            self._reported.update(metrics)
            self._step(control, state.global_step, {**(pending or {}), **metrics})

    def _report_pending(self, control: TrainerControl, state: TrainerState) -> None:
        if self._pending is not None:
            self._report(control, state, {})

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
