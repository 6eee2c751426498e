"""Exceptions with one actionable sentence each; the CLI prints `str(error)` and exits non-zero."""

from __future__ import annotations


class PersistError(Exception):
    """Base class: the message says what failed and what to do about it."""


class ConfigError(PersistError, ValueError):
    """A configuration value is wrong; the message names the field, the value and what is allowed."""


class CheckpointCorruptError(PersistError):
    """A stored checkpoint failed verification (checksum, format or shape)."""


class StoreUnavailableError(PersistError):
    """The MLflow tracking store could not be reached."""


class NotFoundError(PersistError):
    """A model, version or episode that was asked for does not exist."""
