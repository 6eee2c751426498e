"""Nothing with a missing or empty payload is ever registered (issue "Trust, round 3", defect 4).

Behind a tracking server a save goes to the durable outbox first; when the drain that follows raises and the
writer retries the job, the retry must not store the (already released) snapshot again as an empty payload.
Checked against the weights this test kept and the bytes the `MemoryStore` holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import mlflow_persist as mp
from mlflow_persist._format.payload import write_checkpoint_dir
from mlflow_persist._runtime.pipeline import SavePipeline
from mlflow_persist.testing import MemoryStore


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_retried_outbox_save_registers_the_real_checkpoint_never_an_empty_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = SavePipeline.drain_outbox
    failures = {"left": 1}

    def drain_that_fails_once(self: SavePipeline, blocking: bool = False) -> int:
        if failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("drain failed after the entry was written")
        return original(self, blocking)

    monkeypatch.setattr(SavePipeline, "drain_outbox", drain_that_fails_once)
    store = MemoryStore(remote=True)
    config = mp.PersistConfig(
        outbox_dir=str(tmp_path / "outbox"),
        log_system_metrics=False,
        save_retry_max_wait_seconds=0.05,
    )
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    with mp.Persistence(config, store=store, install_signal_handlers=False) as persist:
        handle = persist.track("net", model)
        kept = _weights(model)
        handle.save("periodic")
        assert persist.flush(timeout=30)
        persist.close(final_checkpoints=False)

    assert failures["left"] == 0, "the fault was not hit"
    versions = store.list_versions("net")
    assert versions, "the checkpoint was never registered"
    for info in versions:
        state = store.load_version(info)  # verifies the digest and loads with weights_only
        assert set(state.model_state) == set(kept), f"v{info.version} holds {sorted(state.model_state)}"
        for key, tensor in kept.items():
            assert torch.equal(state.model_state[key], tensor)


@pytest.mark.parametrize("payload", [{}, {"step": 3, "metrics": {}}], ids=["empty", "no-model-state"])
def test_a_payload_without_model_state_is_refused_before_any_byte_is_written(
    tmp_path: Path, payload: dict[str, Any]
) -> None:
    target = tmp_path / "ckpt"
    with pytest.raises(mp.PersistError, match="model_state"):
        write_checkpoint_dir(payload, target)
    assert not (target / "checkpoint.pt").exists()


def test_an_outbox_entry_whose_bytes_changed_is_never_registered(tmp_path: Path) -> None:
    """Same size, other bytes (bit rot on the local disk during an outage): quarantined, not registered."""
    store = MemoryStore(remote=True)
    config = mp.PersistConfig(outbox_dir=str(tmp_path / "outbox"), log_system_metrics=False)
    model = torch.nn.Linear(4, 2)
    store.fail("register", times=None)  # the server is down: the save waits in the outbox
    with mp.Persistence(config, store=store, install_signal_handlers=False) as persist:
        handle = persist.track("net", model)
        handle.save("periodic")
        persist.flush(timeout=5)
        files = list((tmp_path / "outbox").rglob("checkpoint.pt"))
        assert len(files) == 1
        data = bytearray(files[0].read_bytes())
        data[len(data) // 2] ^= 0xFF
        files[0].write_bytes(bytes(data))
        store.heal()
        assert persist.flush(timeout=30)
        persist.close(final_checkpoints=False)
    assert store.list_versions("net") == []
    quarantined = list((tmp_path / "outbox").rglob("_quarantine/**/checkpoint.pt"))
    assert len(quarantined) == 1 and quarantined[0].read_bytes() == bytes(data)  # kept for the operator
