"""mlflow-persist: durable, observable, reversible checkpoints for continuously-trained PyTorch models.

`import mlflow_persist` does not import MLflow: the MLflow store is opened (and imported) when a `Persistence`
without a `store=` is created, `load_checkpoint` is called, or `mlflow_persist.MlflowStore` is first used.
"""

from __future__ import annotations

from typing import Any

import mlflow_persist._store  # noqa: F401 - first: it sets MLflow's environment defaults (mlflow_env)
from mlflow_persist._format.payload import FORMAT_VERSION, CheckpointState
from mlflow_persist._observe.alerts import Alert, AlertSink
from mlflow_persist._policy.policy import SaveDecision
from mlflow_persist._policy.versions import VersionInfo
from mlflow_persist._runtime.handle import ModelHandle, RestoreInfo
from mlflow_persist._runtime.persistence import Persistence
from mlflow_persist._runtime.process_effects import GracefulExit, ProcessEffects
from mlflow_persist._store.protocol import CheckpointStore
from mlflow_persist.config import ModelSettings, PersistConfig, resolve_tracking_uri
from mlflow_persist.errors import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    CheckpointUnavailableError,
    ConfigError,
    DiskFullError,
    NotFoundError,
    PersistError,
    StoreError,
    StoreUnavailableError,
)
from mlflow_persist.loading import load_checkpoint

__all__ = [
    "FORMAT_VERSION",
    "Alert",
    "AlertSink",
    "CheckpointCorruptError",
    "CheckpointMismatchError",
    "CheckpointState",
    "CheckpointStore",
    "CheckpointUnavailableError",
    "ConfigError",
    "DiskFullError",
    "GracefulExit",
    "MlflowStore",
    "ModelHandle",
    "ModelSettings",
    "NotFoundError",
    "PersistConfig",
    "PersistError",
    "Persistence",
    "ProcessEffects",
    "RestoreInfo",
    "SaveDecision",
    "StoreError",
    "StoreUnavailableError",
    "VersionInfo",
    "load_checkpoint",
    "resolve_tracking_uri",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name == "MlflowStore":  # imported on first use, so that `import mlflow_persist` does not import MLflow
        from mlflow_persist._store.mlflow_store import MlflowStore

        return MlflowStore
    raise AttributeError(f"module 'mlflow_persist' has no attribute {name!r}")
