"""System metrics (psutil) and free-disk checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = ["HELD_BACK_METRIC", "OVERHEAD_METRIC", "DiskSpace", "disk_space", "system_metrics"]

#: The share of wall time checkpoint writing cost the training process (see `_policy/overhead.py`).
OVERHEAD_METRIC = "system/persistence_overhead"
#: How many performance saves the overhead budget has held back so far.
HELD_BACK_METRIC = "system/performance_saves_held_back"

_process = psutil.Process()


@dataclass(frozen=True)
class DiskSpace:
    free_mb: float
    total_mb: float

    @property
    def free_percent(self) -> float:
        return 100.0 * self.free_mb / self.total_mb if self.total_mb else 0.0

    def is_short(self, min_free_mb: float, min_free_percent: float) -> bool:
        return self.free_mb < min_free_mb or self.free_percent < min_free_percent


def disk_space(path: Path) -> DiskSpace:
    usage = psutil.disk_usage(str(path))
    return DiskSpace(usage.free / 2**20, usage.total / 2**20)


def system_metrics(path: Path | None) -> dict[str, float]:
    metrics = {
        "system/cpu_percent": psutil.cpu_percent(interval=None),
        "system/rss_mb": _process.memory_info().rss / 2**20,
    }
    if path is not None:
        space = disk_space(path)
        metrics["system/free_disk_mb"] = space.free_mb
        metrics["system/free_disk_percent"] = space.free_percent
    return metrics
