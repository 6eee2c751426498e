"""Legacy support: import of old CheckpointManager directories, the drop-in CheckpointManager API,
checkpoint format migration and rollback. CLI commands: `mlflow_persist.legacy.cli.register(app)`."""

from __future__ import annotations

from mlflow_persist.legacy.manager import (
    CheckpointManager,
    CheckpointMetadata,
    get_checkpoint_manager,
    load_best_checkpoint,
    save_checkpoint,
)

__all__ = [
    "CheckpointManager",
    "CheckpointMetadata",
    "get_checkpoint_manager",
    "load_best_checkpoint",
    "save_checkpoint",
]
