"""`mlflow-persist export`: the weights of a version, read back with safetensors' own loader into a fresh
model, equal the weights the trainer held when it saved that version."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from test_cli import run_cli

import mlflow_persist as mp


class TiedNet(torch.nn.Module):
    """An embedding tied to the output layer, as language models tie them: two names, one tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(11, 4)
        self.hidden = torch.nn.Linear(4, 4)
        self.out = torch.nn.Linear(4, 11, bias=False)
        self.out.weight = self.embed.weight


@pytest.fixture
def trained(sqlite_uri: str) -> tuple[str, dict[int, dict[str, torch.Tensor]]]:
    """A store with versions of `tied`, and the weights the trainer held at each saved version."""
    config = mp.PersistConfig(tracking_uri=sqlite_uri, keep_best=10, min_free_disk_mb=0, min_free_disk_percent=0)
    torch.manual_seed(0)
    model = TiedNet()
    held: dict[int, dict[str, torch.Tensor]] = {}
    with mp.Persistence(config) as persist:
        handle = persist.track("tied", model)
        for step, loss in enumerate((3.0, 2.0, 2.5), start=1):
            with torch.no_grad():
                model.hidden.weight.add_(0.1)
                model.embed.weight.mul_(0.9)
            if handle.step(loss=loss).save:
                held[step] = {key: value.clone() for key, value in model.state_dict().items()}
            persist.flush(timeout=30)
    return sqlite_uri, held


def test_export_safetensors_of_best_loads_into_a_fresh_model(
    trained: tuple[str, dict[int, dict[str, torch.Tensor]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, held = trained
    out = tmp_path / "best"
    code, stdout, err = run_cli(capsys, "export", "tied", "--alias", "best", "--format", "safetensors", "--out", str(out), "--tracking-uri", uri, "--json")  # fmt: skip
    assert code == 0, err
    report = json.loads(stdout)
    assert report["step"] == 2 and report["files"] == [str(out / "model.safetensors")]  # loss 2.0 is the best
    fresh = TiedNet()
    fresh.load_state_dict(load_file(out / "model.safetensors"))
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, held[2][key]), key
    with safe_open(out / "model.safetensors", "pt") as weights:
        assert weights.metadata()["mlflow_persist.version"] == str(report["version"])

    code, stdout, _ = run_cli(capsys, "export", "tied", "--version", "1", "--format", "safetensors", "--out", str(tmp_path / "v1"), "--tracking-uri", uri)  # fmt: skip
    assert code == 0 and "exported tied v1 (step 1) as safetensors" in stdout
    assert torch.equal(load_file(tmp_path / "v1" / "model.safetensors")["hidden.weight"], held[1]["hidden.weight"])


def test_export_errors_are_one_line_and_write_nothing(
    trained: tuple[str, dict[int, dict[str, torch.Tensor]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri, _ = trained
    out = tmp_path / "hf"
    code, _, err = run_cli(capsys, "export", "tied", "--format", "hf", "--out", str(out), "--tracking-uri", uri)
    assert code == 1 and err.count("\n") == 1 and "holds no Hugging Face model config" in err
    assert not out.exists()
    code, _, err = run_cli(capsys, "export", "tied", "--format", "onnx", "--tracking-uri", uri)
    assert code == 1 and "Unknown --format 'onnx'" in err
    code, _, err = run_cli(
        capsys, "export", "tied", "--alias", "nope", "--format", "safetensors", "--tracking-uri", uri
    )
    assert code == 1 and "no version with the alias 'nope'" in err
    code, _, err = run_cli(
        capsys, "export", "tied", "--version", "99", "--format", "safetensors", "--tracking-uri", uri
    )
    assert code == 1 and err.count("\n") == 1 and "99" in err
