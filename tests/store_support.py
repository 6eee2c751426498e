"""Test support shared by every test folder (a plain module: `conftest` names clash across folders)."""

from __future__ import annotations

import shutil
from pathlib import Path


def copy_template_store(template_db: Path, directory: Path) -> str:
    """A fresh, already-migrated sqlite MLflow store in `directory`; returns its tracking URI."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(template_db, directory / "mlflow.db")
    return f"sqlite:///{directory / 'mlflow.db'}"


def reset_server_store(uri: str) -> None:
    """Give each test an empty registry and experiment on the shared session server."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    for model in client.search_registered_models(max_results=1000):
        client.delete_registered_model(model.name)
    for experiment in client.search_experiments():
        for run in client.search_runs([experiment.experiment_id], max_results=5000):
            client.delete_run(run.info.run_id)
