"""A checkpoint an older release wrote (weights, optimizer and scheduler, no trainer loop state) still resumes
Lightning's step count: global_step continues from the checkpoint's step, so max_steps keeps its meaning."""

from __future__ import annotations

import pytest

pytest.importorskip("lightning")

import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import mlflow_persist as mp  # noqa: E402
from mlflow_persist.integrations.lightning import PersistCallback  # noqa: E402
from mlflow_persist.testing import MemoryStore  # noqa: E402

from .lightning_proc import QUIET_ON_CPU  # noqa: E402

pytestmark = pytest.mark.slow  # importing Lightning takes seconds


class Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_a_checkpoint_without_loop_state_continues_global_step_from_its_step() -> None:
    store = MemoryStore()
    config = mp.PersistConfig(
        monitor="train_loss", log_system_metrics=False, min_free_disk_mb=0, min_free_disk_percent=0
    )
    old = Tiny()
    with torch.no_grad():
        old.layer.weight.fill_(0.5)
    with mp.Persistence(config, store=store, install_signal_handlers=False) as persist:  # as an older release saved
        handle = persist.track("tiny", old, torch.optim.SGD(old.parameters(), lr=0.1))
        handle.step(step=7, train_loss=1.0)
    callback = PersistCallback("tiny", config, store=store)
    trainer = pl.Trainer(max_steps=10, **QUIET_ON_CPU, callbacks=[callback])
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    model = Tiny()
    restored_weight: list[torch.Tensor] = []

    class Watch(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            restored_weight.append(pl_module.layer.weight.detach().clone())

    trainer.callbacks.append(Watch())  # type: ignore[attr-defined]
    trainer.fit(model, DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=8))
    assert callback.restored is not None and callback.restored.step == 7
    assert torch.equal(restored_weight[0], torch.full((1, 4), 0.5))  # the old checkpoint's weights
    assert trainer.global_step == 10  # 3 steps more, to the same total
    steps = sorted(v.step for v in store.list_versions("tiny"))
    assert steps[0] == 7 and steps[-1] == 10
