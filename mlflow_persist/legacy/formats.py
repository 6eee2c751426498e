"""Checkpoint format versions as far as migration is concerned.

The payload layouts themselves are defined (and read, old ones included) by `mlflow_persist._format.payload`:

- format 1: `checkpoint.pt` = {"format_version": 1, "model_state", "optimizer_state", "step", "metrics"};
  `manifest.json` = {"format_version": 1, "sha256", "size_bytes", "step", "category", "metrics"}.
- format 2 (current): adds model_name, scheduler_state, extra_state, rng_state, category, created_at.

`write_format1_payload` produces the format-1 layout (used for the committed format-1 store fixture).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from mlflow_persist._format.payload import FORMAT_VERSION, copy_to_cpu
from mlflow_persist._store.mlflow_store import VersionInfo

__all__ = ["FORMAT_1", "format1_payload", "needs_migration"]

FORMAT_1 = 1


def format1_payload(
    model_state: Mapping[str, Any], optimizer_state: Any, step: int, metrics: Mapping[str, float]
) -> dict[str, Any]:
    """A payload exactly as format 1 stored it."""
    return {
        "format_version": FORMAT_1,
        "model_state": copy_to_cpu(model_state),
        "optimizer_state": copy_to_cpu(optimizer_state),
        "step": int(step),
        "metrics": {k: float(v) for k, v in metrics.items()},
    }


def needs_migration(info: VersionInfo) -> bool:
    """An mlflow-persist version written in an older format and not migrated yet."""
    version = info.format_version
    return version is not None and version < FORMAT_VERSION and "mlflow_persist.migrated_to" not in info.tags
