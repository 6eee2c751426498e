"""Helpers shared by the episode tests: a toy replay target, toy checkpoints and sample episodes."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from mlflow_persist.episodes import Episode
from mlflow_persist.episodes.tensors import state_fingerprint


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class ToyTarget:
    """features = last 2 rows of bars as float32 (+ a draw frame); decide = argmax with epsilon draw."""

    def __init__(self, perturb: bool = False) -> None:
        self.perturb = perturb

    def features_from_frames(self, frames: dict[str, pd.DataFrame]) -> dict[str, torch.Tensor]:
        bars = frames["bars"]
        x = torch.from_numpy(bars[["open", "high", "low", "close"]].to_numpy(np.float32)[-2:].copy())
        return {"toy.state": x, "toy.u": torch.tensor([float(frames["draws"]["u"].iloc[0])], dtype=torch.float64)}

    def build_model(self, name: str, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return Toy().eval()

    def decide(self, models: dict[str, nn.Module], tensors: dict[str, torch.Tensor]) -> tuple[int, dict]:
        q = models["toy"](tensors["toy.state"])
        if self.perturb:
            q = q + 1e-7
        noise = torch.rand(1)  # uses the global RNG: replay seeds it from episode.rng["seed"]
        action = int(q.sum(0).argmax()) if float(tensors["toy.u"]) > 0.1 else 0
        return action, {"toy.q": q, "toy.noise": noise}


def register_toy_version(client: Any, run_id: str, model: nn.Module, tmp_path: Path, step: int) -> int:
    """Register a checkpoint directory (checkpoint.pt + manifest.json) with plain MLflow calls."""
    d = tmp_path / f"ckpt-{step}" / f"toy-{step}-abcd1234"
    d.mkdir(parents=True)
    torch.save(
        {"format_version": 1, "model_state": model.state_dict(), "step": step, "metrics": {}}, d / "checkpoint.pt"
    )
    sha = hashlib.sha256((d / "checkpoint.pt").read_bytes()).hexdigest()
    (d / "manifest.json").write_text(
        json.dumps(
            {
                "sha256": sha,
                "format_version": 1,
                "step": step,
                "category": "periodic",
                "metrics": {},
                "created_at": "2024-01-01T00:00:00Z",
            }
        )
    )
    client.log_artifacts(run_id, str(d), artifact_path=f"checkpoints/{d.name}")
    try:
        client.create_registered_model("toy")
    except Exception:  # noqa: BLE001 - already registered
        pass
    source = f"{client.get_run(run_id).info.artifact_uri}/checkpoints/{d.name}"
    mv = client.create_model_version(
        "toy",
        source,
        run_id=run_id,
        tags={
            "mlflow_persist.sha256": sha,
            "mlflow_persist.step": str(step),
            "mlflow_persist.category": "periodic",
            "mlflow_persist.format_version": "1",
        },
    )
    return int(mv.version)


def bars_frame(i: int) -> pd.DataFrame:
    idx = pd.date_range(
        pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(hours=i), periods=5, freq="h", name="bar_time"
    )
    rng = np.random.default_rng(i)
    base = 1.1 + rng.normal(0, 0.001, size=5).cumsum()
    return pd.DataFrame(
        {
            "open": base,
            "high": base + 0.0005,
            "low": base - 0.0005,
            "close": base + 0.0001,
            "rsi": np.where(np.arange(5) < 2, np.nan, 50.0 + i),
            "regime": pd.Categorical(["calm"] * 5, categories=["calm", "volatile"]),
        },
        index=idx,
    )


def make_episode(i: int, target: ToyTarget, models: dict[str, nn.Module], versions: dict[str, int | None]) -> Episode:
    frames = {"bars": bars_frame(i), "draws": pd.DataFrame({"u": [random.Random(i).random()]})}
    tensors = target.features_from_frames(frames)
    seed = 1000 + i
    torch.manual_seed(seed)
    action, outputs = target.decide(models, tensors)
    return Episode(
        episode_id=f"ep-{i:04d}",
        bar_time=frames["bars"].index[-1],
        wall_time=1_700_000_000.0 + i,
        frames=frames,
        tensors=tensors,
        outputs=outputs,
        action=action,
        reward=0.001 * i,
        checkpoint_versions=versions,
        market={"volatility_regime": "calm", "spread": 0.0001, "trend": 0.2},
        rng={"seed": seed},
        model_fingerprints={k: state_fingerprint(m) for k, m in models.items()},
        extra={"step": i},
    )


def simple_episode(i: int) -> Episode:
    """An episode without any model (storage tests)."""
    frames = {
        "bars": bars_frame(i),
        "cob": pd.DataFrame(
            {"price": [1.1, 1.2], "size": [3.0, -0.0]},
            index=pd.MultiIndex.from_tuples([("bid", 0), ("ask", 0)], names=["side", "level"]),
        ),
    }
    return Episode(
        episode_id=f"s-{i:04d}",
        bar_time=frames["bars"].index[-1],
        wall_time=1_700_000_000.0 + i,
        frames=frames,
        tensors={"m.state": torch.arange(6, dtype=torch.float32).reshape(2, 3) * i},
        outputs={"m.q": torch.tensor([float(i), -0.0])},
        action=i % 3,
        reward=None if i % 2 else 0.5,
        checkpoint_versions={"m": None},
        market={"spread": 1e-4},
        rng={"seed": i},
    )
