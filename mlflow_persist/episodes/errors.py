"""Episode-specific errors; all are PersistError subclasses so the CLI prints one line and exits 1."""

from __future__ import annotations

from mlflow_persist.errors import PersistError

__all__ = ["EpisodeEncodingError", "EpisodeFormatError"]


class EpisodeEncodingError(PersistError, ValueError):
    """An episode holds something that cannot be stored bit-exactly; the message names it and the fix."""


class EpisodeFormatError(PersistError):
    """An episode file was written with a schema version this code cannot read."""
