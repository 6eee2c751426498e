"""`weights_format="safetensors"` end to end on the embedded sqlite store: every saved version has its weights in
model.safetensors, a restart restores them into a fresh model equal to the model the test trained, `best`
loads with `load_checkpoint`, and the two formats mix in one history."""

from __future__ import annotations

from pathlib import Path

import torch

import mlflow_persist as mp
from mlflow_persist._format.safetensors_weights import WEIGHTS_FILE


def _config(uri: str, weights_format: str) -> mp.PersistConfig:
    return mp.PersistConfig(
        tracking_uri=uri,
        weights_format=weights_format,
        periodic_every_steps=2,
        keep_periodic=10,
        log_system_metrics=False,
        min_free_disk_mb=0,
        min_free_disk_percent=0,
    )


def _train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, steps: int) -> None:
    for _ in range(steps):
        loss = model(torch.randn(8, 4)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_safetensors_versions_restore_into_a_fresh_model_and_mix_with_the_torch_format(
    sqlite_uri: str, tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    with mp.Persistence(_config(sqlite_uri, "torch"), install_signal_handlers=False) as persist:
        handle = persist.track("net", model, optimizer)
        for step in range(1, 5):
            _train(model, optimizer, 1)
            handle.step(loss=1.0 / step)
    with mp.Persistence(_config(sqlite_uri, "safetensors"), install_signal_handlers=False) as persist:
        handle = persist.track("net", model, optimizer)
        assert handle.restore() is not None  # a torch-format version restores under the new setting
        for step in range(5, 9):
            _train(model, optimizer, 1)
            handle.step(step=step, loss=1.0 / step)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    expected_moments = optimizer.state_dict()["state"][0]["exp_avg"].clone()

    written = sorted(p.parent.name for p in Path(sqlite_uri.removeprefix("sqlite:///")).parent.rglob(WEIGHTS_FILE))
    assert written and all(int(name.split("-")[1]) >= 5 for name in written)  # only the safetensors run's

    fresh = torch.nn.Linear(4, 3)
    fresh_optimizer = torch.optim.Adam(fresh.parameters(), lr=0.1)
    with mp.Persistence(_config(sqlite_uri, "safetensors"), install_signal_handlers=False) as persist:
        info = persist.track("net", fresh, fresh_optimizer).restore()
        assert info is not None and info.step == 8
    for key, tensor in expected.items():
        assert torch.equal(fresh.state_dict()[key], tensor), key
    assert torch.equal(fresh_optimizer.state_dict()["state"][0]["exp_avg"], expected_moments)
    best = mp.load_checkpoint("models:/net@best", tracking_uri=sqlite_uri)
    assert best.step == 8 and torch.equal(best.model_state["weight"], expected["weight"])
