"""GPU snapshots on a real CUDA device: pinned host buffers, side-stream copies, and the training stream
ordered after them. Collected only where CUDA is available (conftest.py deselects them elsewhere)."""

from __future__ import annotations

import pytest
import torch

import mlflow_persist as mp
from mlflow_persist.testing import MemoryStore

pytestmark = pytest.mark.gpu


def test_a_gpu_snapshot_holds_the_weights_of_its_step_although_training_runs_on() -> None:
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(2048, 2048), torch.nn.ReLU(), torch.nn.Linear(2048, 2048)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    config = mp.PersistConfig(
        min_free_disk_mb=0,
        min_free_disk_percent=0,
        log_system_metrics=False,
        keep_best=100,
        keep_periodic=100,
        keep_final=100,
    )
    store = MemoryStore()
    expected = {}
    with mp.Persistence(config, store=store, install_signal_handlers=False) as persist:
        handle = persist.track("gpu-net", model, optimizer=optimizer)
        for step in range(1, 6):
            optimizer.zero_grad()
            model(torch.randn(256, 2048, device=device)).pow(2).mean().backward()
            optimizer.step()
            expected[step] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            handle.step(loss=100.0 - step)  # the next step's in-place updates are queued right behind the copies
        assert persist.flush(timeout=120)
    for info in store.list_versions("gpu-net"):
        if info.category != "performance":
            continue
        state = store.load_version(info)
        for key, tensor in expected[info.step].items():
            assert torch.equal(state.model_state[key], tensor), f"{key} at step {info.step}"
