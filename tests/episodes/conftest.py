"""Fixtures for the episode tests: a real sqlite MLflow store, a run, sample episodes, a toy target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def client(sqlite_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=sqlite_uri, registry_uri=sqlite_uri)


@pytest.fixture
def run_id(client: Any, tmp_path: Path) -> str:
    exp = client.create_experiment("mlflow-persist", artifact_location=(tmp_path / "artifacts").as_uri())
    run = client.create_run(exp, tags={"mlflow_persist.run_key": "trading-system"})
    return run.info.run_id
