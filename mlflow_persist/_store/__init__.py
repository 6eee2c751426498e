"""The only layer that talks to MLflow: the `CheckpointStore` protocol and its MLflow implementation."""

from mlflow_persist._store.mlflow_env import apply_mlflow_env_defaults

apply_mlflow_env_defaults()
