"""What opens the same MLflow store in another process (the persistence worker), without importing MLflow."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["StoreAddress"]


class StoreAddress(NamedTuple):
    tracking_uri: str
    experiment_name: str
    artifact_location: str | None
