"""Fixtures of the legacy tests: a store per test and a subprocess environment."""

from __future__ import annotations

import os

import pytest
from legacy_support import REPO_ROOT


@pytest.fixture
def store(sqlite_uri: str):
    from mlflow_persist._store.mlflow_store import MlflowStore

    return MlflowStore(sqlite_uri)


@pytest.fixture
def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    env.pop("MLFLOW_TRACKING_URI", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env
