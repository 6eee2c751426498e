"""Checkpoints with `weights_format="safetensors"`: the weights go to model.safetensors, which the safetensors
package itself reads back equal to the tensors the test built; damage to it is refused; the rest of the state
stays in checkpoint.pt."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mlflow_persist._format.payload import (
    CHECKPOINT_FILE,
    build_payload,
    read_checkpoint_bytes,
    read_checkpoint_dir,
    write_checkpoint_dir,
)
from mlflow_persist._format.safetensors_weights import WEIGHTS_FILE
from mlflow_persist.errors import CheckpointCorruptError


def _state() -> dict[str, object]:
    torch.manual_seed(0)
    return {
        "linear.weight": torch.randn(6, 4).t(),  # not contiguous
        "embedding": torch.randn(3, 2).bfloat16(),
        "half": torch.randn(5).half(),
        "mask": torch.tensor([True, False, True]),
        "count": torch.tensor(7, dtype=torch.int64),
        "bytes": torch.arange(4, dtype=torch.uint8),
        "empty": torch.zeros(0, 3),
        "float8": torch.randn(4).to(torch.float8_e4m3fn),
        "_extra_state": {"note": "not a tensor", "n": 3},
    }


def _bytes(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor's bytes (float8 has no equality of its own)."""
    return tensor.contiguous().reshape(-1).view(torch.uint8)


def _write(tmp_path: Path, state: dict[str, object]) -> Path:
    optimizer = {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    payload = build_payload(
        model_name="net",
        model_state=state,
        optimizer_state=optimizer,
        step=5,
        metrics={"loss": 0.5},
        category="periodic",
        weights_format="safetensors",
    )
    directory = tmp_path / "checkpoint"
    write_checkpoint_dir(payload, directory)
    return directory


def test_the_weights_are_a_safetensors_file_that_the_safetensors_package_reads(tmp_path: Path) -> None:
    state = _state()
    directory = _write(tmp_path, state)
    outside = load_file(str(directory / WEIGHTS_FILE))  # the package's own reader, not ours
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    assert set(outside) == set(tensors)
    for key, tensor in tensors.items():
        assert outside[key].dtype == tensor.dtype and outside[key].shape == tensor.shape
        assert torch.equal(_bytes(outside[key]), _bytes(tensor)), key
    raw = torch.load(directory / CHECKPOINT_FILE, weights_only=True)
    assert not any(isinstance(v, torch.Tensor) for v in raw["model_state"].values())  # no weights in checkpoint.pt


def test_a_restore_gets_every_entry_back_in_order_with_the_rest_of_the_state(tmp_path: Path) -> None:
    state = _state()
    loaded = read_checkpoint_dir(_write(tmp_path, state))
    assert list(loaded.model_state) == list(state)
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(_bytes(loaded.model_state[key]), _bytes(value)), key
        else:
            assert loaded.model_state[key] == value
    assert torch.equal(loaded.optimizer_state["state"][0]["exp_avg"], torch.ones(2))
    assert loaded.step == 5 and loaded.metrics == {"loss": 0.5}


@pytest.mark.parametrize("damage", ["flipped", "truncated", "missing"])
def test_a_damaged_weights_file_is_refused(tmp_path: Path, damage: str) -> None:
    directory = _write(tmp_path, _state())
    weights = directory / WEIGHTS_FILE
    if damage == "missing":
        weights.unlink()
    else:
        data = bytearray(weights.read_bytes())
        if damage == "flipped":
            data[-3] ^= 0x10  # inside the tensor bytes, past the header
        else:
            del data[-1]
        weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointCorruptError, match="model.safetensors"):
        read_checkpoint_dir(directory)


def test_checkpoint_pt_alone_is_refused_with_a_reason(tmp_path: Path) -> None:
    directory = _write(tmp_path, _state())
    with pytest.raises(CheckpointCorruptError, match="weights in files beside it"):
        read_checkpoint_bytes((directory / CHECKPOINT_FILE).read_bytes(), None)
