"""What `mlflow-persist status`, `history`, `verify` and `gc` compute, as library functions returning data
classes; the CLI only formats them. Each works on any store with the `InspectableStore` methods (the MLflow
store and `testing.MemoryStore`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from mlflow_persist._format.timestamps import format_age
from mlflow_persist._observe.system_metrics import HELD_BACK_METRIC, OVERHEAD_METRIC, disk_space
from mlflow_persist._policy.policy import Mode, retention_deletions
from mlflow_persist._policy.versions import HEALTH_TAG, RunSummary, VersionInfo
from mlflow_persist._store.best import mark_corrupt, reconcile_best_or_clear
from mlflow_persist._store.protocol import CheckpointStore
from mlflow_persist._store.prune import prune
from mlflow_persist.config import PersistConfig
from mlflow_persist.errors import CheckpointCorruptError, NotFoundError

__all__ = [
    "AliasEvent",
    "DiskStatus",
    "GcItem",
    "GcReport",
    "HistoryReport",
    "InspectableStore",
    "ModelStatus",
    "StatusReport",
    "VerifyReport",
    "VerifyResult",
    "VersionRow",
    "gc",
    "history",
    "require_versions",
    "status",
    "verify",
]


class InspectableStore(CheckpointStore, Protocol):
    def run_summary(self, run_id: str) -> RunSummary | None: ...
    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float, int]]: ...
    def alias_moves(self, name: str) -> list[Any]: ...


@dataclass(frozen=True)
class VersionRow:
    version: int
    category: str
    step: int | None
    monitor: str | None
    value: float | None
    created_at: str | None
    digest: str | None  # "<algorithm>:<hex>"
    corrupt: bool
    aliases: list[str]

    @classmethod
    def of(cls, v: VersionInfo) -> VersionRow:
        return cls(
            v.version,
            v.category,
            v.step,
            v.monitor,
            v.value,
            v.created_at,
            str(v.digest) if v.digest else None,
            v.corrupt,
            list(v.aliases),
        )


@dataclass(frozen=True)
class ModelStatus:
    model: str
    best: VersionRow | None
    latest: VersionRow
    versions: dict[str, int]
    corrupt: int
    saves: float | None
    health: str
    run_id: str | None
    run_status: str | None
    best_age: str | None
    latest_age: str
    overhead: float | None = None  # share of wall time checkpoint writing cost training (the run's last tick)
    held_back: float | None = None  # performance saves the overhead budget held back so far


@dataclass(frozen=True)
class DiskStatus:
    path: str
    free_mb: float
    free_percent: float


@dataclass(frozen=True)
class StatusReport:
    tracking_uri: str
    models: list[ModelStatus]
    disk: DiskStatus | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def status(store: InspectableStore, prefix: str = "") -> StatusReport:
    """Per model: best and newest version (value, step, age), counts per category, health, free disk."""
    rows = []
    for name in store.managed_models(prefix):
        versions = store.list_versions(name)
        if not versions:
            continue
        best = store.alias_version(name)
        newest = versions[-1]
        counts: dict[str, int] = {}
        for v in versions:
            counts[v.category] = counts.get(v.category, 0) + 1
        run = store.run_summary(newest.run_id) if newest.run_id else None
        rows.append(
            ModelStatus(
                model=name,
                best=VersionRow.of(best) if best else None,
                latest=VersionRow.of(newest),
                versions=counts,
                corrupt=sum(1 for v in versions if v.corrupt),
                saves=run.metrics.get("checkpoint/saves") if run else None,
                health=run.tags.get(HEALTH_TAG, "ok") if run else "unknown",
                run_id=newest.run_id,
                run_status=run.status if run else None,
                best_age=format_age(best.created_at) if best else None,
                latest_age=format_age(newest.created_at),
                overhead=run.metrics.get(OVERHEAD_METRIC) if run else None,
                held_back=run.metrics.get(HELD_BACK_METRIC) if run else None,
            )
        )
    disk = None
    path = store.checkpoint_disk_path(rows[0].run_id if rows else None)
    if path is not None:
        space = disk_space(Path(path))
        disk = DiskStatus(str(path), round(space.free_mb, 1), round(space.free_percent, 2))
    return StatusReport(store.description, rows, disk)


@dataclass(frozen=True)
class AliasEvent:
    at: str
    alias: str
    from_version: int | None
    to_version: int
    by: str
    reason: str


@dataclass(frozen=True)
class HistoryReport:
    model: str
    versions: list[VersionRow]
    alias_moves: list[AliasEvent]

    @property
    def values(self) -> list[float]:
        return [v.value for v in self.versions if v.value is not None]


def require_versions(store: CheckpointStore, name: str) -> list[VersionInfo]:
    versions = store.list_versions(name)
    if not versions:
        raise NotFoundError(
            f"Model {name!r} has no checkpoints in {store.description}; run `mlflow-persist "
            "status` to list the models there."
        )
    return versions


def history(store: InspectableStore, name: str) -> HistoryReport:
    """The versions of `name` and the alias moves: operator moves (recorded as registered-model tags) plus
    the `best` moves seen at each save (the run metric checkpoint/best_version)."""
    versions = require_versions(store, name)
    events = [AliasEvent(m.at, m.alias, m.from_version, m.to_version, m.by, m.reason) for m in store.alias_moves(name)]
    for run_id in sorted({v.run_id for v in versions if v.run_id}):
        try:
            points = store.metric_history(run_id, "checkpoint/best_version")
        except Exception:  # noqa: BLE001 - a deleted run leaves the versions readable
            continue
        previous = None
        for step, value, timestamp in sorted(points, key=lambda p: (p[2], p[0])):
            current = int(value)
            if current != previous:
                at = datetime.fromtimestamp(timestamp / 1000, UTC).isoformat(timespec="seconds")
                events.append(AliasEvent(at, "best", previous, current, "training", f"better value at step {step}"))
                previous = current
    return HistoryReport(name, [VersionRow.of(v) for v in versions], sorted(events, key=lambda e: str(e.at)))


@dataclass(frozen=True)
class VerifyResult:
    model: str
    version: int
    ok: bool
    reason: str | None
    was_tagged_corrupt: bool = False  # it verified although tagged corrupt (a false alarm of an older release)
    cleared: bool = False  # ... and its tag was cleared (--clear-false-corrupt)


@dataclass(frozen=True)
class VerifyReport:
    results: list[VerifyResult]
    models: int

    @property
    def corrupt(self) -> list[VerifyResult]:
        return [r for r in self.results if not r.ok]

    @property
    def false_corrupt(self) -> list[VerifyResult]:
        return [r for r in self.results if r.ok and r.was_tagged_corrupt]


def verify(
    store: CheckpointStore,
    model: str | None = None,
    prefix: str = "",
    clear_false_corrupt: bool = False,
    fallback_mode: Mode = "min",
) -> VerifyReport:
    """Check every version (checksum, safe load). Damaged ones are tagged corrupt=true and `best` moves off
    them. A version tagged corrupt whose bytes verify is reported; with `clear_false_corrupt` its tag is
    removed and `best` reconciled. A store error (unreachable) is raised: nothing is tagged on a guess."""
    names = [model] if model else store.managed_models(prefix)
    if model:
        require_versions(store, model)
    results = []
    for name in names:
        retagged = False
        for info in store.list_versions(name):
            try:
                store.load_version(info)
            except CheckpointCorruptError as exc:
                if not info.corrupt:
                    mark_corrupt(store, info, str(exc), fallback_mode, info.monitor)
                results.append(VerifyResult(name, info.version, False, str(exc)))
                continue
            cleared = info.corrupt and clear_false_corrupt
            if cleared:
                store.clear_corrupt(name, info.version)
                retagged = True
            results.append(VerifyResult(name, info.version, True, None, info.corrupt, cleared))
        if retagged:
            with store.lock(f"model-{name}"):
                versions = store.list_versions(name)
                reconcile_best_or_clear(store, name, fallback_mode, versions[-1].monitor if versions else None)
    return VerifyReport(results, len(names))


@dataclass(frozen=True)
class GcItem:
    model: str
    version: int
    category: str


@dataclass(frozen=True)
class GcReport:
    dry_run: bool
    deleted: list[GcItem] = field(default_factory=list)


def gc(store: CheckpointStore, config: PersistConfig, dry_run: bool = False) -> GcReport:
    """Apply the retention windows now (keep_best, keep_periodic, keep_final; never `best` or the newest)."""
    prefix = config.registered_model_prefix
    report = GcReport(dry_run)
    for name in store.managed_models(prefix):
        settings = config.for_model(name[len(prefix) :])
        with store.lock(f"model-{name}"):
            result = prune(
                store,
                name,
                lambda versions, best: retention_deletions(
                    versions,
                    settings.mode,  # noqa: B023
                    settings.keep_best,  # noqa: B023
                    settings.keep_periodic,  # noqa: B023
                    settings.keep_final,  # noqa: B023
                    best,
                    settings.keep_episode,  # noqa: B023
                ),
                dry_run=dry_run,
                reason="gc",
            )
        report.deleted.extend(
            GcItem(name, v.version, v.category) for v in (result.planned if dry_run else result.deleted)
        )
    return report
