"""Helpers for the embedded default store (`sqlite:///<dir>/mlflow.db`)."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

from mlflow_persist._format.atomic import durable_directory, fsync_path

__all__ = ["create_store_file", "sqlite_dir", "sqlite_file"]


def sqlite_dir(tracking_uri: str) -> Path | None:
    """The directory of an embedded sqlite store's database file, None for any other tracking URI."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///") :]).resolve().parent
    return None


def sqlite_file(tracking_uri: str) -> Path | None:
    """The database file of an embedded sqlite store (resolved), None for any other tracking URI."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///") :]).resolve()
    return None


def create_store_file(db_file: Path) -> bool:
    """Create a new embedded store's database whole or not at all; returns whether this call created it.

    MLflow creates and migrates a new database in many steps that are not one transaction, so a process killed
    during its first start (a second or two) leaves a file MLflow can never open again ("table ... already
    exists"). Here the database is created and migrated under a staging name, fsynced, and only then linked to
    its real name; a second process doing the same at the same moment keeps the first file that got there."""
    if db_file.exists():
        return False
    from mlflow import MlflowClient

    durable_directory(db_file.parent)
    _remove_abandoned_staging(db_file)
    staging = db_file.with_name(f".{db_file.name}.init-{uuid.uuid4().hex[:12]}")
    try:
        MlflowClient(tracking_uri=f"sqlite:///{staging}").search_experiments(max_results=1)
        fsync_path(staging)
        try:
            os.link(staging, db_file)
        except FileExistsError:
            return False
        fsync_path(db_file.parent)
        return True
    finally:
        staging.unlink(missing_ok=True)


#: A staging database untouched this long was left by a process killed during its first start.
ABANDONED_STAGING_SECONDS = 600.0


def _remove_abandoned_staging(db_file: Path) -> None:
    now = time.time()
    for path in db_file.parent.glob(f".{db_file.name}.init-*"):
        try:
            if now - path.stat().st_mtime > ABANDONED_STAGING_SECONDS:
                path.unlink()
        except OSError:
            continue
