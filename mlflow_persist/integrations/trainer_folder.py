"""A checkpoint as the folder the Hugging Face Trainer writes and reads itself, so that
`trainer.train(resume_from_checkpoint=folder)` resumes through the Trainer's own code: the weights, the optimizer
and scheduler, the random states (restored after the Trainer fast-forwards its dataloader) and `TrainerState`
(`global_step`, `epoch`, `log_history`, `best_metric`, ...), which decides where the data order continues.

The file names and layouts are the Trainer's (`transformers.trainer`): `pytorch_model.bin`, `optimizer.pt`,
`scheduler.pt`, `rng_state.pth` and `trainer_state.json`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mlflow_persist._format.payload import CheckpointState, decoded_rng_state
from mlflow_persist.errors import PersistError

__all__ = ["TRAINER_STATE_KEY", "write_trainer_folder"]

#: Where a checkpoint's `extra_state` keeps the Trainer's `TrainerState` (its JSON, as `trainer_state.json`).
TRAINER_STATE_KEY = "trainer_state_json"


def write_trainer_folder(state: CheckpointState, directory: Path, rank_files: int = 0) -> Path:
    """Write `state` into `directory/checkpoint-<step>` as the Trainer saves a checkpoint; returns that folder.

    `rank_files`: under torch.distributed, how many ranks take the checkpoint's (rank 0's) random state, each
    from `rng_state_<rank>.pth` as the Trainer reads it there: 1 (rank 0), or every rank when all are seeded
    alike; 0 without torch.distributed (`rng_state.pth`, written always)."""
    trainer_state = _trainer_state(state)
    folder = directory / f"checkpoint-{state.step}"
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(dict(state.model_state), folder / "pytorch_model.bin")
    if state.optimizer_state is not None:
        torch.save(state.optimizer_state, folder / "optimizer.pt")
    if state.scheduler_state is not None:
        torch.save(state.scheduler_state, folder / "scheduler.pt")
    if state.rng_state:
        rng = _trainer_rng_state(state.rng_state)
        torch.save(rng, folder / "rng_state.pth")
        for rank in range(rank_files):
            torch.save(rng, folder / f"rng_state_{rank}.pth")
    (folder / "trainer_state.json").write_text(json.dumps(trainer_state, indent=2, sort_keys=True) + "\n")
    return folder


def _trainer_state(state: CheckpointState) -> dict[str, Any]:
    extra = state.extra_state
    if not isinstance(extra, Mapping) or TRAINER_STATE_KEY not in extra:
        raise PersistError(
            f"Checkpoint v{state.version} of {state.name} holds no TrainerState (an older release saved it); "
            "call trainer.train() without resume_from_checkpoint and the callback restores it at train begin."
        )
    trainer_state: dict[str, Any] = json.loads(extra[TRAINER_STATE_KEY])
    trainer_state["global_step"] = state.step
    return trainer_state


def _trainer_rng_state(rng: Mapping[str, Any]) -> dict[str, Any]:
    """mlflow-persist's random states under the Trainer's keys (`Trainer._load_rng_state`)."""
    names = {"python": "python", "numpy": "numpy", "torch": "cpu", "cuda": "cuda"}
    return {names[key]: value for key, value in decoded_rng_state(rng).items() if key in names}
