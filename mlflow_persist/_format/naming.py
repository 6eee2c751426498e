"""Validation of names that become registry names and artifact paths."""

from __future__ import annotations

import re

from mlflow_persist.errors import ConfigError

__all__ = ["validate_model_name"]

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def validate_model_name(name: str) -> str:
    """Model names become registry names and artifact directory names: no separators, no `..`, no paths."""
    if not isinstance(name, str) or not _MODEL_NAME.match(name) or ".." in name:
        raise ConfigError(
            f"Model name {name!r} is not allowed; use 1-128 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit, without '..' or path separators."
        )
    return name
