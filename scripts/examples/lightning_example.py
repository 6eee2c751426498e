"""Lightning with mlflow-persist: run it again and the fit resumes where the previous one stopped.

    python scripts/examples/lightning_example.py [--tracking-uri URI] [--max-steps N]

`--max-steps` is Lightning's `max_steps`: the total of optimizer steps across restarts, as with Lightning's own
resume (a second run with the same value ends at once; raise it to train further).

Checkpoints go to the MLflow store (default: sqlite:///mlflow.db here) as versions of the registered
model `lightning-example`, with `best` on the lowest validation loss.
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

import mlflow_persist as mp
from mlflow_persist.integrations.lightning import PersistCallback


class Regressor(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = torch.nn.functional.mse_loss(self.net(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: list[torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", torch.nn.functional.mse_loss(self.net(batch[0]), batch[1]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def loader(seed: int) -> DataLoader:
    x = torch.randn(512, 8, generator=torch.Generator().manual_seed(seed))
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=32)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tracking-uri", default=None)
    parser.add_argument("--max-steps", type=int, default=60)
    args = parser.parse_args()
    config = mp.PersistConfig(
        tracking_uri=mp.resolve_tracking_uri(args.tracking_uri), monitor="val_loss", mode="min", periodic_every_steps=20
    )
    callback = PersistCallback("lightning-example", config)
    trainer = pl.Trainer(
        max_steps=args.max_steps,
        val_check_interval=10,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
    )
    trainer.fit(Regressor(), loader(0), loader(1))
    restored = callback.restored
    print(
        f"resumed from step {restored.step} (v{restored.version})" if restored else "started fresh",
        f"- trained to global_step {trainer.global_step} (max_steps={args.max_steps}, epoch {trainer.current_epoch})",
    )


if __name__ == "__main__":
    main()
