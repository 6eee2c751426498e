"""Rollback: register an earlier checkpoint again as the newest version (append-only, same artifacts)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mlflow_persist._store.alias_log import AliasMove, move_alias, operator
from mlflow_persist._store.mlflow_store import BEST_ALIAS, MlflowStore, VersionInfo, tag
from mlflow_persist.errors import CheckpointCorruptError, ConfigError, NotFoundError

__all__ = ["ROLLBACK", "RollbackResult", "choose_target", "rollback"]

ROLLBACK = "rollback"
# Tags of the chosen version that describe the checkpoint itself and carry over to the rollback version.
_CARRIED = (
    "step",
    "monitor",
    "value",
    "sha256",
    "digest",
    "digest_algorithm",
    "format_version",
    "created_at",
    "size_bytes",
    "legacy_path",
    "legacy_checkpoint_id",
)


@dataclass(frozen=True)
class RollbackResult:
    name: str
    target: int
    new_version: int
    best_move: AliasMove | None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "rollback_of": self.target,
            "new_version": self.new_version,
            "best_moved": self.best_move.to_json() if self.best_move else None,
        }


def choose_target(versions: list[VersionInfo], name: str, to: int | None, back: int | None) -> VersionInfo:
    """The version `--to V` names, or the one `--back N` versions before the newest."""
    if (to is None) == (back is None):
        raise ConfigError("Give exactly one of --to VERSION or --back N.")
    if not versions:
        raise NotFoundError(f"Model {name!r} has no versions; check the name with `mlflow-persist status`.")
    if to is not None:
        match = [v for v in versions if v.version == to]
        if not match:
            known = ", ".join(str(v.version) for v in versions[-10:])
            raise NotFoundError(f"Model {name!r} has no version {to}; recent versions are {known}.")
        return match[0]
    assert back is not None
    if back < 1:
        raise ConfigError(f"--back {back} is not allowed; use 1 or more (1 = the version before the newest).")
    if back >= len(versions):
        raise NotFoundError(f"Model {name!r} has only {len(versions)} versions; --back must be below that.")
    return versions[-1 - back]


def rollback(
    store: MlflowStore,
    name: str,
    to: int | None = None,
    back: int | None = None,
    move_best: bool = False,
    reason: str | None = None,
    verify: bool = True,
) -> RollbackResult:
    """Register the chosen version's artifact directory again as a new `rollback` version (no copy), tagged
    rollback_of / who / when / why; with `move_best`, point `best` at it too. The training system resumes
    from it at its next start because it is now the newest version."""
    versions = store.list_versions(name)
    chosen = choose_target(versions, name, to, back)
    rollback_id = uuid.uuid4().hex
    with store.lock(f"model-{name}"):
        # Read and verify the target under the lock retention takes too: between a check made outside it
        # and the registration, a trainer's retention could delete the very bytes the rollback points at.
        try:
            target = store.get_version(name, chosen.version)
        except NotFoundError:
            raise NotFoundError(
                f"{name} v{chosen.version} was deleted by retention just now; roll back to a version "
                "that is kept (see `mlflow-persist history`), or raise keep_best."
            ) from None
        if target.corrupt:
            raise CheckpointCorruptError(f"{name} v{target.version} is marked corrupt; roll back to another version.")
        if verify:
            store.load_version(target)  # sha256 + weights_only load: never roll back onto a damaged checkpoint
        return _register_rollback(store, name, target, rollback_id, move_best, reason)


def _register_rollback(
    store: MlflowStore, name: str, target: VersionInfo, rollback_id: str, move_best: bool, reason: str | None
) -> RollbackResult:
    tags = {tag(k): target.tags[tag(k)] for k in _CARRIED if tag(k) in target.tags}
    tags.update(
        {
            tag("category"): ROLLBACK,
            tag("rollback_of"): str(target.version),
            tag("rollback_id"): rollback_id,
            tag("rollback_by"): operator(),
            tag("rollback_at"): datetime.now(UTC).isoformat(timespec="milliseconds"),
            tag("rollback_reason"): reason or "",
        }
    )
    store.client.create_model_version(name, source=target.source, run_id=target.run_id, tags=tags, await_creation_for=0)
    mine = sorted(
        (v for v in store.list_versions(name) if v.tags.get(tag("rollback_id")) == rollback_id), key=lambda v: v.version
    )
    for duplicate in mine[1:]:  # a POST the HTTP client retried
        store.client.delete_model_version(name, str(duplicate.version))
    new_version = mine[0].version
    best_move = None
    if move_best:
        best_move = move_alias(
            store.client, name, BEST_ALIAS, new_version, reason or f"rollback to v{target.version}", "rollback"
        )
    return RollbackResult(name, target.version, new_version, best_move)
