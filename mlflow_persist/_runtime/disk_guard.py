"""The disk guard: before each save and on every scheduler tick, keep the checkpoint disk above the
configured free space, deleting checkpoints in disk-pressure order (through `prune`) when it runs short."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mlflow_persist._observe.logs import package_logger
from mlflow_persist._observe.system_metrics import disk_space
from mlflow_persist._policy.policy import Mode, VersionSummary, disk_pressure_order
from mlflow_persist._store.protocol import CheckpointStore
from mlflow_persist._store.prune import prune
from mlflow_persist.errors import DiskFullError

log = package_logger("mlflow_persist")


@dataclass(frozen=True)
class GuardedModel:
    """What the guard needs to know of a model to free space from it."""

    name: str
    registered_name: str
    run_id: str
    mode: Mode
    registry_lock: threading.RLock


class DiskGuard:
    def __init__(
        self,
        store: CheckpointStore,
        min_free_mb: float,
        min_free_percent: float,
        models: Callable[[], Iterable[GuardedModel]],
        keep: Callable[[str], Collection[int]] = lambda name: (),
    ) -> None:
        self._store = store
        self._min_free_mb = min_free_mb
        self._min_free_percent = min_free_percent
        self._models = models
        self._keep = keep  # registered name -> versions never deleted (its member of the newest complete cut)

    def path(self, run_id: str) -> Path | None:
        return self._store.checkpoint_disk_path(run_id)

    def short_at(self, path: Path, need_mb: float = 0.0) -> bool:
        """Whether the disk holding `path` is short of the reserve plus `need_mb`."""
        return disk_space(path).is_short(self._min_free_mb + need_mb, self._min_free_percent)

    def ensure_space(self, model: GuardedModel) -> None:
        """Clean up when short of space; raise DiskFullError when still short afterwards. A store whose
        checkpoints do not land on a local disk is never short."""
        path = self.path(model.run_id)
        if path is None or not self.short_at(path):
            return
        space = disk_space(path)
        self.free(model, reason=f"only {space.free_mb:.0f} MB ({space.free_percent:.1f}%) free")
        space = disk_space(path)
        if space.is_short(self._min_free_mb, self._min_free_percent):
            raise DiskFullError(
                f"Only {space.free_mb:.0f} MB free on {path} after cleanup (need {self._min_free_mb} MB "
                f"and {self._min_free_percent}%); free disk space or lower min_free_disk_mb."
            )

    def free(self, model: GuardedModel, reason: str, need_mb: float = 0.0) -> int:
        """Delete checkpoints in disk-pressure order (never `best`, never the newest), this model's first,
        until the configured reserve plus `need_mb` (a checkpoint that just failed for lack of space) is free."""
        path = self.path(model.run_id)
        if path is None:
            return 0
        deleted = 0
        others = [m for m in self._models() if m.name != model.name]
        if self._sweep_leftovers([model, *others], reason) and not self.short_at(path, need_mb):
            return 0
        for candidate in [model, *others]:
            with candidate.registry_lock, self._store.lock(f"model-{candidate.registered_name}"):
                result = prune(
                    self._store,
                    candidate.registered_name,
                    functools.partial(_pressure_order, mode=candidate.mode, keep=self._keep(candidate.registered_name)),
                    enough=lambda: not self.short_at(path, need_mb),
                    reason="disk-pressure cleanup",
                )
            for info in result.deleted:
                log.warning(
                    "%s: deleted v%d (%s) to free disk space: %s",
                    candidate.name,
                    info.version,
                    info.category,
                    reason,
                    extra={"model": candidate.name, "version": info.version, "outcome": "deleted"},
                )
            deleted += len(result.deleted)
            if not self.short_at(path, need_mb):
                break
        return deleted

    def _sweep_leftovers(self, models: Sequence[GuardedModel], reason: str) -> int:
        """Before any version goes: remove every model's leftovers (interrupted or given-up saves no version
        uses, old enough that no other process is still registering them). Returns how many went. Registered
        markers are not trusted here: a marked directory whose versions are all gone is freed too."""
        swept = 0
        for candidate in models:
            try:
                removed = self._store.sweep_partial_checkpoints(
                    candidate.run_id, owner=candidate.registered_name, trust_markers=False
                )
            except Exception as exc:  # noqa: BLE001 - the versions' cleanup below still runs
                log.warning("%s: could not sweep leftover checkpoint files (%s)", candidate.name, exc)
                continue
            if removed:
                log.warning(
                    "%s: deleted %d leftover checkpoint folder(s) no version uses, to free disk space: %s",
                    candidate.name,
                    len(removed),
                    reason,
                    extra={"model": candidate.name, "outcome": "swept"},
                )
            swept += len(removed)
        return swept


__all__ = ["DiskGuard", "GuardedModel"]


def _pressure_order(
    versions: Sequence[VersionSummary], best: int | None, *, mode: Mode, keep: Collection[int] = ()
) -> list[int]:
    """`disk_pressure_order` with the model's mode bound (the prune path calls it with versions and best)."""
    return disk_pressure_order(versions, mode, best, keep)
