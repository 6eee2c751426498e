"""The MLflow adapter of the `CheckpointStore` seam: runs, artifacts, registered versions, tags, aliases, metrics.

Works the same against the embedded default (`sqlite:///mlflow.db` + local artifacts) and against an
`mlflow server` over HTTP (proxied artifacts). Every public method translates MLflow's exceptions into the
package's own (`mlflow_persist.errors`), so nothing of MLflow reaches the runtime or a user.
"""

from __future__ import annotations

from mlflow_persist._policy.versions import (
    BEST_ALIAS,
    CHECKPOINTS_DIR,
    HEALTH_TAG,
    RUN_KEY_TAG,
    TAG_PREFIX,
    RunSummary,
    VersionInfo,
    checkpoint_dirname,
    tag,
)
from mlflow_persist._store.mlflow_artifacts import UNREGISTERED_SWEEP_AGE_SECONDS, MlflowArtifacts
from mlflow_persist._store.mlflow_connection import EXPERIMENT_KIND_TAG
from mlflow_persist._store.translate import translate

__all__ = [
    "BEST_ALIAS",
    "CHECKPOINTS_DIR",
    "EXPERIMENT_KIND_TAG",
    "HEALTH_TAG",
    "RUN_KEY_TAG",
    "TAG_PREFIX",
    "UNREGISTERED_SWEEP_AGE_SECONDS",
    "MlflowStore",
    "RunSummary",
    "VersionInfo",
    "checkpoint_dirname",
    "tag",
    "translate",
]


class MlflowStore(MlflowArtifacts):
    """MLflow access for one tracking URI and experiment, assembled from its parts, each a job of its own:
    `MlflowConnection` (clients, experiment, locks), `MlflowRuns` (runs, metrics), `MlflowRegistry` (versions),
    `MlflowAliases` (aliases, tags) and `MlflowArtifacts` (checkpoint files)."""
