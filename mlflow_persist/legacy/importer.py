"""Execute an import plan: each legacy file becomes a registered `legacy` version of its model."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any, Literal, Protocol

from mlflow_persist._observe.logs import package_logger
from mlflow_persist._store.alias_log import move_alias
from mlflow_persist._store.mlflow_store import BEST_ALIAS, MlflowStore, VersionInfo, tag
from mlflow_persist.errors import PersistError
from mlflow_persist.legacy.convert import METRICS_LOGGED_TAG, to_current_payload, version_tags
from mlflow_persist.legacy.plan import LEGACY_SHA_TAG, ExistingModel, ImportPlan, PlanItem, build_plan
from mlflow_persist.legacy.scan import LegacyFile, load_legacy_payload, scan_legacy_dir

__all__ = [
    "ImportReport",
    "ItemResult",
    "Progress",
    "Status",
    "execute_plan",
    "existing_models",
    "import_file",
    "model_run",
    "plan_import",
]

log = package_logger("mlflow_persist.legacy")

Status = Literal["imported", "skipped", "refused", "failed", "planned"]


class Progress(Protocol):
    def start(self, phase: str, total: int) -> None: ...
    def advance(self, label: str) -> None: ...


class _NoProgress:
    def start(self, phase: str, total: int) -> None:
        pass

    def advance(self, label: str) -> None:
        pass


@dataclass
class ItemResult:
    item: PlanItem
    status: Status
    reason: str
    version: int | None = None

    def to_json(self) -> dict[str, Any]:
        file = self.item.file
        return {
            "path": self.item.label,
            "model": self.item.model,
            "status": self.status,
            "reason": self.reason,
            "version": self.version,
            "best": self.item.becomes_best,
            "sha256": file.sha256 if file else None,
            "checkpoint_id": file.checkpoint_id
            if file
            else (self.item.stale.entry.checkpoint_id if self.item.stale else None),
            "created_at": file.created_at.isoformat() if file else None,
            "metrics": dict(file.metrics) if file else {},
        }


@dataclass
class ImportReport:
    plan: ImportPlan
    results: list[ItemResult] = field(default_factory=list)
    best: dict[str, int] = field(default_factory=dict)
    dry_run: bool = False

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def failed(self) -> bool:
        return self.count("failed") > 0

    def to_json(self) -> dict[str, Any]:
        return {
            "base_dir": self.plan.base_dir,
            "dry_run": self.dry_run,
            "metric": self.plan.metric,
            "mode": self.plan.mode,
            "metadata_problem": self.plan.metadata_problem,
            "counts": {s: self.count(s) for s in ("planned", "imported", "skipped", "refused", "failed")},
            "best": self.best,
            "items": [r.to_json() for r in self.results],
        }


def existing_models(store: MlflowStore, names: Iterable[str]) -> dict[str, ExistingModel]:
    """For each model: the legacy files it already holds (by sha256 -> version) and whether it has `best`."""
    out: dict[str, ExistingModel] = {}
    for name in sorted(set(names)):
        versions = store.list_versions(name)
        hashes = {v.tags[LEGACY_SHA_TAG]: v.version for v in versions if LEGACY_SHA_TAG in v.tags}
        out[name] = ExistingModel(hashes, store.alias_version(name, BEST_ALIAS) is not None if versions else False)
    return out


def plan_import(
    store: MlflowStore,
    base_dir: str | os.PathLike[str],
    *,
    trusted: Iterable[str] = (),
    metric: str = "performance_score",
    mode: str = "max",
    renames: Mapping[str, str] | None = None,
    prefix: str = "",
    assume_tz: tzinfo | None = None,
    progress: Progress | None = None,
) -> ImportPlan:
    """Scan the directory read-only and plan the import against what the store already holds."""
    progress = progress or _NoProgress()
    from mlflow_persist.legacy.scan import find_checkpoint_files

    base = Path(base_dir)
    total = len(find_checkpoint_files(base.resolve())) if base.is_dir() else 0
    progress.start("scanning", total)
    scan = scan_legacy_dir(base, trusted=trusted, assume_tz=assume_tz, progress=lambda p: progress.advance(p.name))
    renames = renames or {}
    names = {prefix + renames.get(f.model_name, f.model_name) for f in scan.files}
    names |= {prefix + renames.get(s.entry.model_name, s.entry.model_name) for s in scan.stale}
    valid = {n for n in names if _valid(n)}
    return build_plan(scan, existing_models(store, valid), metric, mode, renames, prefix)


def execute_plan(
    store: MlflowStore, plan: ImportPlan, dry_run: bool = False, progress: Progress | None = None
) -> ImportReport:
    """Register every planned file (oldest first), log its metrics at their original time, set `best`."""
    progress = progress or _NoProgress()
    report = ImportReport(plan, dry_run=dry_run)
    versions: dict[int, int] = {}
    progress.start("importing" if not dry_run else "planning", len(plan.items))
    for item in plan.items:
        progress.advance(item.label)
        if item.action == "refuse":
            report.results.append(ItemResult(item, "refused", item.reason))
        elif item.action == "skip":
            if not dry_run and item.existing_version is not None and item.file is not None:
                _finish_metrics(store, item.model, item.existing_version, item.file)
            report.results.append(ItemResult(item, "skipped", item.reason, item.existing_version))
        elif dry_run:
            report.results.append(ItemResult(item, "planned", item.reason))
        else:
            try:
                info = import_file(store, item, plan.metric)
            except (PersistError, OSError, RuntimeError, ValueError, TypeError) as exc:
                log.error("import of %s failed: %s", item.label, exc)
                report.results.append(ItemResult(item, "failed", f"{type(exc).__name__}: {exc}"))
                continue
            except Exception as exc:  # MlflowException and friends: report, keep going  # noqa: BLE001
                log.error("import of %s failed: %s", item.label, exc)
                report.results.append(ItemResult(item, "failed", f"{type(exc).__name__}: {str(exc)[:300]}"))
                continue
            versions[id(item)] = info.version
            report.results.append(ItemResult(item, "imported", item.reason, info.version))
    for item in plan.items:
        if not item.becomes_best:
            continue
        if dry_run:
            report.best[item.model] = -1
            continue
        version = versions.get(id(item))
        if version is None:
            continue
        with store.lock(f"model-{item.model}"):
            if store.alias_version(item.model, BEST_ALIAS) is None:
                move_alias(
                    store.client,
                    item.model,
                    BEST_ALIAS,
                    version,
                    f"best legacy checkpoint by {plan.metric} ({plan.mode})",
                    "import-legacy",
                )
                report.best[item.model] = version
    if dry_run:
        report.best = {i.model: -1 for i in plan.items if i.becomes_best}
    return report


def import_file(store: MlflowStore, item: PlanItem, metric: str) -> VersionInfo:
    """Convert one legacy file, store it as a run artifact directory, register it, log its metrics."""
    file = item.file
    assert file is not None
    payload = load_legacy_payload(file)
    run_id = model_run(store, item.model)
    current = to_current_payload(file, payload, item.model)
    source, written = store.write_checkpoint(run_id, item.model, file.step, current)
    tags = version_tags(file, written.digest, written.size_bytes, metric)
    with store.lock(f"model-{item.model}"):
        already = [v for v in store.list_versions(item.model) if v.tags.get(LEGACY_SHA_TAG) == file.sha256]
        if already:  # another import registered it meanwhile; the unused directory is swept later
            info = already[0]
        else:
            info = store.register_version(item.model, source, run_id, tags)
    _finish_metrics(store, item.model, info.version, file, run_id)
    return info


def model_run(store: MlflowStore, model: str) -> str:
    """The model's one run (the same key the runtime uses), created FINISHED if it does not exist yet."""
    run_id = store.find_run(model)
    if run_id is not None:
        return run_id
    run_id = store.ensure_run(model, tags={tag("registered_model"): model})
    store.finish_run(run_id)
    return run_id


def _finish_metrics(store: MlflowStore, model: str, version: int, file: LegacyFile, run_id: str | None = None) -> None:
    """Log the legacy metrics to the model's run under their own names at their original time (so the run's
    charts continue the legacy history), once per version."""
    info = store.get_version(model, version)
    if info.tags.get(METRICS_LOGGED_TAG) == "true":
        return
    run_id = run_id or info.run_id or model_run(store, model)
    timestamp_ms = int(file.created_at.timestamp() * 1000)
    rows = [(key, value, timestamp_ms, file.step) for key, value in sorted(file.metrics.items())]
    if rows:
        store.log_metrics(run_id, rows)
    store.client.set_model_version_tag(model, str(version), METRICS_LOGGED_TAG, "true")


def _valid(name: str) -> bool:
    from mlflow_persist._format.naming import validate_model_name
    from mlflow_persist.errors import ConfigError

    try:
        validate_model_name(name)
        return True
    except ConfigError:
        return False
