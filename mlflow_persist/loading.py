"""`load_checkpoint`: a verified checkpoint from any script, by registry URI."""

from __future__ import annotations

from mlflow_persist._format.payload import CheckpointState
from mlflow_persist.config import resolve_tracking_uri

__all__ = ["load_checkpoint"]


def load_checkpoint(
    uri: str, tracking_uri: str | None = None, experiment_name: str = "mlflow-persist"
) -> CheckpointState:
    """Load `models:/<name>@<alias>`, `models:/<name>/latest` or `models:/<name>/<version>`.

    The payload's digest (XXH3-128; sha256 for versions written before it) is verified against the one
    recorded at registration and it is loaded with `torch.load(weights_only=True)`; a damaged checkpoint
    raises CheckpointCorruptError. `tracking_uri` defaults to `MLFLOW_TRACKING_URI`, else the embedded
    store in the current directory.
    """
    from mlflow_persist._store.mlflow_store import MlflowStore  # imported here: `import mlflow` costs over a second

    store = MlflowStore(resolve_tracking_uri(tracking_uri), experiment_name)
    return store.load_version(store.resolve(uri))
