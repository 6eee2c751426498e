"""`migrate`: rewrite versions stored in an older checkpoint format as new versions of the current format.

Each old version is loaded (verified, upgraded by `mlflow_persist._format.payload`), written again in the current
layout into the same run, and registered as a new version with the old one's category and tags plus
`migrated_from`; the old version is kept, tagged `migrated_to`, until the operator removes it. Old versions are
migrated oldest first, so the newest stays the newest; every alias on an old version moves to its copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlflow_persist._format.payload import FORMAT_VERSION, build_payload
from mlflow_persist._policy.versions import digest_tags
from mlflow_persist._store.alias_log import move_alias
from mlflow_persist._store.mlflow_store import MlflowStore, VersionInfo, tag
from mlflow_persist.legacy.formats import needs_migration

__all__ = [
    "MIGRATED_FROM",
    "MIGRATED_TO",
    "MigrationReport",
    "MigrationStep",
    "migrate",
    "migrate_version",
    "plan_migration",
]

MIGRATED_FROM = tag("migrated_from")
MIGRATED_TO = tag("migrated_to")


@dataclass
class MigrationStep:
    name: str
    old_version: int
    old_format: int | None
    new_version: int | None = None
    aliases: list[str] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "old_version": self.old_version,
            "old_format": self.old_format,
            "new_version": self.new_version,
            "aliases": self.aliases,
            "error": self.error,
        }


@dataclass
class MigrationReport:
    dry_run: bool
    target_format: int = FORMAT_VERSION
    steps: list[MigrationStep] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return any(s.error for s in self.steps)

    def to_json(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "target_format": self.target_format,
            "steps": [s.to_json() for s in self.steps],
        }


def plan_migration(store: MlflowStore, models: list[str] | None = None) -> list[MigrationStep]:
    steps: list[MigrationStep] = []
    for name in models or store.managed_models():
        for info in store.list_versions(name):
            if needs_migration(info) and not info.corrupt:
                steps.append(MigrationStep(name, info.version, info.format_version, aliases=list(info.aliases)))
    return steps


def migrate(store: MlflowStore, dry_run: bool = False, models: list[str] | None = None) -> MigrationReport:
    report = MigrationReport(dry_run, steps=plan_migration(store, models))
    if dry_run:
        return report
    for step in report.steps:
        try:
            step.new_version = migrate_version(store, store.get_version(step.name, step.old_version))
        except Exception as exc:  # report every failure, keep migrating the rest  # noqa: BLE001
            step.error = f"{type(exc).__name__}: {str(exc)[:300]}"
    return report


def migrate_version(store: MlflowStore, old: VersionInfo) -> int:
    """Copy one old-format version to a new current-format version; idempotent (finds an earlier copy)."""
    with store.lock(f"model-{old.name}"):
        copies = [v for v in store.list_versions(old.name) if v.tags.get(MIGRATED_FROM) == str(old.version)]
    if copies:
        new = copies[0]
    else:
        state = store.load_version(old)
        payload = build_payload(
            model_name=old.name,
            model_state=state.model_state,
            optimizer_state=state.optimizer_state,
            scheduler_state=state.scheduler_state,
            extra_state=state.extra_state,
            step=state.step,
            metrics=state.metrics,
            category=old.category,
            rng_state=state.rng_state or {},
        )
        payload["created_at"] = old.created_at or state.created_at or payload["created_at"]
        run_id = old.run_id or store.ensure_run(old.name)
        source, written = store.write_checkpoint(run_id, old.name, state.step, payload)
        tags = {
            k: v
            for k, v in old.tags.items()
            if k.startswith("mlflow_persist.")
            and k not in (tag("corrupt"), tag("corrupt_reason"), tag("sha256"), MIGRATED_TO)
        }
        tags.update(
            {
                **digest_tags(written.digest),
                tag("format_version"): str(FORMAT_VERSION),
                tag("size_bytes"): str(written.size_bytes),
                MIGRATED_FROM: str(old.version),
            }
        )
        with store.lock(f"model-{old.name}"):
            new = store.register_version(old.name, source, run_id, tags)
    for alias in store.get_version(old.name, old.version).aliases:
        move_alias(
            store.client,
            old.name,
            alias,
            new.version,
            f"migrated v{old.version} (format {old.format_version}) to format {FORMAT_VERSION}",
            "migrate",
        )
    store.client.set_model_version_tag(old.name, str(old.version), MIGRATED_TO, str(new.version))
    return new.version
