"""Helpers for the embedded default store (`sqlite:///<dir>/mlflow.db`)."""

from __future__ import annotations

from pathlib import Path

__all__ = ["sqlite_dir", "sqlite_file"]


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
