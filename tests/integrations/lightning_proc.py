"""A Lightning BoringModel-style fit with PersistCallback, for the framework test.

Usage: lightning_proc.py URI DIGEST_LOG MAX_STEPS [MONITOR [CKPT_PATH]] [--logger-uri=LOGGER_URI]
With CKPT_PATH, fit() gets it as `ckpt_path`, and writes one there first when it does not exist.
With LOGGER_URI, the trainer logs with an `MLFlowLogger` of that tracking URI (a new run per launch) and prints
`LOGGER {"run_id": ...}` after fit.
Prints `RESTORED {...}` right after the restore in on_fit_start and `STEP n` after every batch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import MLFlowLogger
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mlflow_persist as mp  # noqa: E402
from integrations.support import DigestLog, keep_everything_config, state_digest  # noqa: E402
from mlflow_persist.integrations.lightning import PersistCallback  # noqa: E402

# A Trainer on one CPU that writes nothing of its own (no checkpoints, logs, progress bar or summary).
QUIET_ON_CPU = {
    "accelerator": "cpu",
    "devices": 1,
    "enable_checkpointing": False,
    "logger": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
}


class BoringModel(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.mse_loss(self(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self(x), y))

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.Adam(self.parameters(), lr=0.02)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=5, gamma=0.9)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def data(seed: int, n: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 32, generator=generator)
    y = torch.stack([x[:, :16].sum(1), x[:, 16:].sum(1)], dim=1) / 4
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True, generator=generator)


class RecordingCallback(PersistCallback):
    """Records, in its own log, the state right after every save decision and each monitor it reported."""

    def __init__(self, *args: object, log: DigestLog, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.records = log
        self.pl_module: pl.LightningModule | None = None
        self.trainer: pl.Trainer | None = None

    def digest(self) -> str:
        assert self.trainer is not None and self.pl_module is not None
        return state_digest(
            self.pl_module.state_dict(),
            [o.state_dict() for o in self.trainer.optimizers],
            [c.scheduler.state_dict() for c in self.trainer.lr_scheduler_configs],
        )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.trainer, self.pl_module = trainer, pl_module
        super().on_fit_start(trainer, pl_module)
        info = self.restored
        print(
            "RESTORED "
            + json.dumps(
                {
                    "step": info.step if info else None,
                    "version": info.version if info else None,
                    "run_id": info.run_id if info else None,
                    "digest": self.digest(),
                }
            ),
            flush=True,
        )

    def persist_step(self, step: int | None = None, **metrics: float) -> mp.SaveDecision:
        decision = super().persist_step(step, **metrics)
        if self.monitor in metrics:
            self.records.append(event="monitor", step=self.handle.current_step, value=metrics[self.monitor])
        if decision.save:
            self.records.append(event="saved", step=self.handle.current_step, digest=self.digest())
        return decision

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        super().on_train_batch_end(trainer, *args)  # type: ignore[arg-type]
        print(f"STEP {self.handle.current_step}", flush=True)

    def close(self) -> None:
        if self.persistence is not None:  # the final checkpoint holds this state
            self.records.append(event="saved", step=self.handle.current_step, digest=self.digest())
        super().close()


def main() -> None:
    logger_uri = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--logger-uri=")), None)
    argv = [a for a in sys.argv if not a.startswith("--logger-uri=")]
    uri, log_path, max_steps = argv[1], Path(argv[2]), int(argv[3])
    monitor = argv[4] if len(argv) > 4 else "val_loss"
    ckpt_path = argv[5] if len(argv) > 5 else None
    pl.seed_everything(0, verbose=False)
    torch.set_num_threads(1)
    config = keep_everything_config(uri, monitor, periodic_every_steps=10)
    callback = RecordingCallback("boring", config, log=DigestLog(log_path))
    logger = MLFlowLogger(experiment_name="lightning_logs", tracking_uri=logger_uri) if logger_uri else None
    trainer = pl.Trainer(
        max_steps=max_steps,
        **{**QUIET_ON_CPU, "logger": logger or False},
        log_every_n_steps=4,  # the logger's cadence (Lightning's default, 50, is longer than these runs)
        val_check_interval=8,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        callbacks=[callback],
    )
    model = BoringModel()
    if ckpt_path is not None and not Path(ckpt_path).exists():  # Lightning's own checkpoint, without the callback
        plain = pl.Trainer(max_steps=1, **QUIET_ON_CPU)
        plain.fit(BoringModel(), data(1, 16))
        plain.save_checkpoint(ckpt_path)
    trainer.fit(model, data(1, 1024), data(2, 64), ckpt_path=ckpt_path)
    if logger is not None:
        print("LOGGER " + json.dumps({"run_id": logger.run_id}), flush=True)
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
