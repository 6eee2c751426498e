"""The import plan: what happens to each legacy file, in which order, and which version becomes `best`.

Pure: it works on a scan result and on what the store already holds, and does no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from mlflow_persist._format.naming import validate_model_name
from mlflow_persist.errors import ConfigError
from mlflow_persist.legacy.scan import LegacyFile, ScanResult, StaleEntry

__all__ = ["LEGACY_SHA_TAG", "Action", "ExistingModel", "ImportPlan", "PlanItem", "build_plan", "parse_renames"]

Action = Literal["import", "skip", "refuse"]
LEGACY_SHA_TAG = "mlflow_persist.legacy_sha256"


@dataclass(frozen=True)
class ExistingModel:
    """What the registry already holds for one model: legacy hashes (to version number) and whether it has `best`."""

    legacy_versions: Mapping[str, int] = field(default_factory=dict)
    has_best: bool = False


@dataclass
class PlanItem:
    model: str
    action: Action
    reason: str
    file: LegacyFile | None = None
    stale: StaleEntry | None = None
    existing_version: int | None = None
    becomes_best: bool = False

    @property
    def label(self) -> str:
        if self.file is not None:
            return self.file.rel
        assert self.stale is not None
        return self.stale.entry.file_path or self.stale.entry.checkpoint_id or "?"


@dataclass
class ImportPlan:
    base_dir: str
    metric: str
    mode: str
    items: list[PlanItem]
    metadata_problem: str | None = None

    def by_action(self, action: Action) -> list[PlanItem]:
        return [i for i in self.items if i.action == action]

    @property
    def imports(self) -> list[PlanItem]:
        """Files to import, oldest first (by created_at), so the newest legacy checkpoint is registered last."""
        return self.by_action("import")


def parse_renames(pairs: list[str] | tuple[str, ...]) -> dict[str, str]:
    """`OLD=NEW` pairs (e.g. dqn_agent=dqn) as a mapping from legacy model name to registry model name."""
    out: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise ConfigError(f"--rename {pair!r} is not OLD=NEW; write it like dqn_agent=dqn.")
        out[old.strip()] = new.strip()
    return out


def _metric_value(file: LegacyFile, metric: str) -> float | None:
    value = file.metrics.get(metric)
    return value if value is not None and not math.isnan(value) else None


def build_plan(
    scan: ScanResult,
    existing: Mapping[str, ExistingModel],
    metric: str = "performance_score",
    mode: str = "max",
    renames: Mapping[str, str] | None = None,
    prefix: str = "",
) -> ImportPlan:
    """Decide, for every file and stale metadata entry, import / skip / refuse with a reason."""
    if mode not in ("min", "max"):
        raise ConfigError(f"--mode {mode!r} is not allowed; use min or max.")
    renames = renames or {}
    items: list[PlanItem] = []
    seen: dict[tuple[str, str], str] = {}
    files = sorted(scan.files, key=lambda f: (f.created_at, f.rel))
    for file in files:
        model = prefix + renames.get(file.model_name, file.model_name)
        items.append(_decide(file, model, existing.get(model, ExistingModel()), seen))
    for stale in scan.stale:
        model = prefix + renames.get(stale.entry.model_name, stale.entry.model_name)
        items.append(PlanItem(model, "skip", stale.reason, stale=stale))
    _choose_best(items, existing, metric, mode)
    return ImportPlan(str(scan.base_dir), metric, mode, items, scan.metadata.problem)


def _decide(file: LegacyFile, model: str, existing: ExistingModel, seen: dict[tuple[str, str], str]) -> PlanItem:
    try:
        validate_model_name(model)
    except ConfigError:
        return PlanItem(
            model,
            "refuse",
            f"model name {model!r} is not a valid registry name; map it with --rename OLD=NEW",
            file=file,
        )
    if file.sha256 in existing.legacy_versions:
        version = existing.legacy_versions[file.sha256]
        return PlanItem(model, "skip", f"already imported as {model} v{version}", file=file, existing_version=version)
    if file.shape is None:
        return PlanItem(model, "refuse", file.problem or "unreadable", file=file)
    key = (model, file.sha256)
    if key in seen:
        return PlanItem(model, "skip", f"same content as {seen[key]}", file=file)
    seen[key] = file.rel
    return PlanItem(model, "import", _import_reason(file), file=file)


def _import_reason(file: LegacyFile) -> str:
    shape = file.shape or "?"
    where = "metadata" if file.entry is not None else ("loose file" if file.loose else "no metadata entry")
    trusted = ", trusted" if file.trusted else ""
    return f"{shape.replace('_', ' ')} ({where}, created_at from {file.created_at_source}{trusted})"


def _choose_best(items: list[PlanItem], existing: Mapping[str, ExistingModel], metric: str, mode: str) -> None:
    candidates: dict[str, list[PlanItem]] = {}
    for item in items:
        if item.action == "import" and item.file is not None and _metric_value(item.file, metric) is not None:
            candidates.setdefault(item.model, []).append(item)
    for model, group in candidates.items():
        if existing.get(model, ExistingModel()).has_best:
            continue
        sign = -1.0 if mode == "max" else 1.0
        # Ties go to the newest checkpoint (the later item, since items are oldest first).
        best = min(reversed(group), key=lambda i: sign * _metric_value(i.file, metric))  # type: ignore[arg-type, operator]
        best.becomes_best = True
