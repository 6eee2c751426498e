"""A deterministic Lightning fit for the exact-resume test: the same fit run through, or killed and resumed.

Usage: lightning_resume_proc.py URI MAX_STEPS ACCUMULATE [plain | own:CKPT] [ddp]
With `plain` the fit runs without the callback (the uninterrupted oracle); with `own:CKPT` it runs without the
callback and resumes with Lightning's own `fit(ckpt_path=CKPT)` when CKPT exists, and saves it at the end
(`trainer.save_checkpoint`): the framework's own resume, as the oracle of its semantics. With `ddp` the fit runs
on 2 CPU processes (strategy "ddp", gloo) and every record carries the rank. Prints `STEP n` after every batch
that stepped the optimizer, `RESTORED {...}` after the restore, and at the end `DONE {...}`: the trainer's own
counters and digests of the weights and of the optimizer's state.
The data order is fixed (no shuffling) and the model has no randomness, so on CPU the fit is deterministic.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from integrations.lightning_proc import QUIET_ON_CPU  # noqa: E402
from integrations.support import emit, keep_everything_config, state_digest  # noqa: E402
from mlflow_persist.integrations.lightning import PersistCallback  # noqa: E402

BATCHES_PER_EPOCH = 8
BATCH_SECONDS = float(os.environ.get("BATCH_SECONDS", "0"))  # a pace like real training's, for the kill points


class Regressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        time.sleep(BATCH_SECONDS)
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.AdamW(self.parameters(), lr=0.01)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=3, gamma=0.8)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def data(seed: int, batches: int) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batches * 8, 8, generator=generator)
    y = x.sum(1, keepdim=True).sin()
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


class Printing(pl.Callback):
    def __init__(self) -> None:
        self.last = -1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.last = trainer.global_step  # after the restore

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step != self.last:
            self.last = trainer.global_step
            print(f"STEP {trainer.global_step}", flush=True)


def main() -> None:
    uri, max_steps, accumulate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    mode = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] != "ddp" else ""
    ddp = sys.argv[-1] == "ddp"
    own_ckpt = Path(mode[4:]) if mode.startswith("own:") else None
    plain = mode == "plain" or own_ckpt is not None
    torch.manual_seed(0)
    torch.set_num_threads(1)
    steps_per_epoch = BATCHES_PER_EPOCH // accumulate
    callbacks: list[pl.Callback] = [Printing()]
    persist = None
    if not plain:
        config = keep_everything_config(uri, "val_loss", periodic_every_steps=steps_per_epoch)
        persist = PersistCallback("regressor", config)
        callbacks.insert(0, persist)
    trainer = pl.Trainer(
        max_steps=max_steps,
        **{**QUIET_ON_CPU, **({"devices": 2, "strategy": "ddp"} if ddp else {})},
        accumulate_grad_batches=accumulate,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        callbacks=callbacks,
    )
    model = Regressor()
    if persist is not None:
        original = persist.on_fit_start

        def report_restore(trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            original(trainer, pl_module)
            info = persist.restored
            record = {"step": info.step if info else None, "global_step": trainer.global_step}
            emit("RESTORED", {**record, "rank": trainer.global_rank})

        persist.on_fit_start = report_restore  # type: ignore[method-assign]
    ckpt_path = str(own_ckpt) if own_ckpt is not None and own_ckpt.exists() else None
    trainer.fit(model, data(1, BATCHES_PER_EPOCH), data(2, 2), ckpt_path=ckpt_path)
    if own_ckpt is not None:
        trainer.save_checkpoint(own_ckpt)
    optimizer = trainer.optimizers[0]
    done = {
        "global_step": trainer.global_step,
        "epoch": trainer.current_epoch,
        "weights": state_digest(model.state_dict()),
        "optimizer": state_digest(optimizer.state_dict()),
        "lr": optimizer.param_groups[0]["lr"],
    }
    emit("DONE", {**done, "rank": trainer.global_rank} if ddp else done)


if __name__ == "__main__":
    main()
