"""mlflow-persist: durable, observable, reversible checkpoints for continuously-trained PyTorch models."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow_persist.config import ModelSettings, PersistConfig, resolve_tracking_uri  # noqa: E402
from mlflow_persist.errors import (  # noqa: E402
    CheckpointCorruptError,
    ConfigError,
    NotFoundError,
    PersistError,
    StoreUnavailableError,
)
from mlflow_persist.loading import load_checkpoint  # noqa: E402
from mlflow_persist.payload import FORMAT_VERSION, CheckpointState  # noqa: E402
from mlflow_persist.policy import SaveDecision  # noqa: E402
from mlflow_persist.runtime import ModelHandle, Persistence, RestoreInfo  # noqa: E402

__all__ = [
    "FORMAT_VERSION", "CheckpointCorruptError", "CheckpointState", "ConfigError", "ModelHandle", "ModelSettings",
    "NotFoundError", "Persistence", "PersistConfig", "PersistError", "RestoreInfo", "SaveDecision",
    "StoreUnavailableError", "load_checkpoint", "resolve_tracking_uri",
]
__version__ = "0.1.0"
