"""Test support shared by every test folder (a plain module: `conftest` names clash across folders)."""

from __future__ import annotations

import shutil
import subprocess
import time
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


def read_until(proc: subprocess.Popen[str], prefix: str, timeout: float = 120.0) -> str:
    """Read the process's stdout until a line starting with `prefix`; returns the rest of that line."""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            stderr = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"process ended (rc={proc.poll()}) before printing {prefix!r}: {stderr[-2000:]}")
        if line.startswith(prefix):
            return line[len(prefix) :].strip()
    raise AssertionError(f"no {prefix!r} line within {timeout}s")
