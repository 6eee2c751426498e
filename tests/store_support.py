"""Test support shared by every test folder (a plain module: `conftest` names clash across folders)."""

from __future__ import annotations

import shutil
from pathlib import Path


def copy_template_store(template_db: Path, directory: Path) -> str:
    """A fresh, already-migrated sqlite MLflow store in `directory`; returns its tracking URI."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(template_db, directory / "mlflow.db")
    return f"sqlite:///{directory / 'mlflow.db'}"
