"""The weights that made decisions, kept in the episode run once per (model, fingerprint).

Retention deletes old registered versions by design, yet episodes decided by them must stay
replayable. So the recorder also stores each deciding state_dict as `episodes/weights/<model>/<sha>.pt`
(sha: `state_fingerprint`), and replay falls back to that copy when the registered version is gone.
Loaded with `torch.load(weights_only=True)` and checked against the fingerprint.
"""

from __future__ import annotations

import os
import tempfile

import mlflow
import torch

from mlflow_persist.episodes import layout
from mlflow_persist.episodes.tensors import state_fingerprint
from mlflow_persist.errors import CheckpointCorruptError

__all__ = ["StateDict", "read_weights", "upload_weights", "weights_dir", "weights_path"]

StateDict = dict[str, torch.Tensor]


def weights_dir(name: str) -> str:
    return f"{layout.ROOT}/weights/{name}"


def weights_path(name: str, fingerprint: str) -> str:
    return f"{weights_dir(name)}/{fingerprint}.pt"


def upload_weights(client: mlflow.MlflowClient, run_id: str, name: str, fingerprint: str, state: StateDict) -> int:
    """Store `state` under its fingerprint in the run; returns the bytes written (same path: same bytes)."""
    with tempfile.TemporaryDirectory(prefix="mlflow-persist-episode-weights-") as tmp:
        local = os.path.join(tmp, f"{fingerprint}.pt")
        torch.save(state, local)
        client.log_artifact(run_id, local, artifact_path=weights_dir(name))
        return os.path.getsize(local)


def read_weights(local: str, name: str, fingerprint: str) -> StateDict:
    """Load a downloaded weights file and prove it holds the weights of `fingerprint`."""
    try:
        state = torch.load(local, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for damaged files
        raise CheckpointCorruptError(
            f"episode weights {weights_path(name, fingerprint)} cannot be read ({exc}); "
            "the file is damaged, delete or restore it."
        ) from exc
    if not isinstance(state, dict) or state_fingerprint(state) != fingerprint:
        raise CheckpointCorruptError(
            f"episode weights {weights_path(name, fingerprint)} do not match their "
            "fingerprint; the file is damaged, delete or restore it."
        )
    return state
