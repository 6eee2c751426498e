"""mlflow-persist: durable, observable, reversible checkpoints for continuously-trained PyTorch models.

`import mlflow_persist` does not import MLflow: the MLflow store is opened (and imported) when a `Persistence`
without a `store=` is created, or `load_checkpoint` is called.
"""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow_persist._observe.alerts import Alert, AlertSink  # noqa: E402
from mlflow_persist._store.protocol import CheckpointStore  # noqa: E402
from mlflow_persist.config import ModelSettings, PersistConfig, resolve_tracking_uri  # noqa: E402
from mlflow_persist.errors import (  # noqa: E402
    CheckpointCorruptError,
    CheckpointMismatchError,
    ConfigError,
    DiskFullError,
    NotFoundError,
    PersistError,
    StoreError,
    StoreUnavailableError,
)
from mlflow_persist._runtime.handle import ModelHandle, RestoreInfo  # noqa: E402
from mlflow_persist.loading import load_checkpoint  # noqa: E402
from mlflow_persist._format.payload import FORMAT_VERSION, CheckpointState  # noqa: E402
from mlflow_persist._runtime.persistence import Persistence  # noqa: E402
from mlflow_persist._policy.policy import SaveDecision  # noqa: E402
from mlflow_persist._runtime.process_effects import GracefulExit, ProcessEffects  # noqa: E402
from mlflow_persist._policy.versions import VersionInfo  # noqa: E402

__all__ = [
    "FORMAT_VERSION", "Alert", "AlertSink", "CheckpointCorruptError", "CheckpointMismatchError", "CheckpointState",
    "CheckpointStore", "ConfigError", "DiskFullError", "GracefulExit", "ModelHandle", "ModelSettings",
    "NotFoundError", "PersistConfig", "PersistError", "Persistence", "ProcessEffects", "RestoreInfo",
    "SaveDecision", "StoreError", "StoreUnavailableError", "VersionInfo", "load_checkpoint", "resolve_tracking_uri",
]
__version__ = "0.1.0"
