"""The one deletion path: every version that is ever deleted (retention after a save, disk-pressure cleanup,
`mlflow-persist gc`, the legacy manager's rotation) is deleted here.

`prune` lists the versions once (or takes the listing its caller just made under the same lock), asks a pure
policy which ones go and deletes them in that order. A version's artifacts are deleted only when no remaining
version uses them (a periodic or rollback version may reuse another version's bytes). Where the caller's lock
is not shared by every writer (a server), the remaining versions come from a fresh listing taken after the
deletions, since another machine may have registered the same bytes again meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from mlflow_persist._observe.logs import package_logger
from mlflow_persist._policy.policy import VersionSummary
from mlflow_persist._policy.versions import VersionInfo
from mlflow_persist._store.protocol import CheckpointStore
from mlflow_persist.errors import describe_store_error

__all__ = ["PrunePolicy", "PruneResult", "prune"]

log = package_logger("mlflow_persist.prune")

#: (versions, the version `best` points at) -> version numbers to delete, in deletion order.
PrunePolicy = Callable[[Sequence[VersionSummary], "int | None"], list[int]]


@dataclass
class PruneResult:
    deleted: list[VersionInfo] = field(default_factory=list)
    planned: list[VersionInfo] = field(default_factory=list)  # what the policy chose (all of it on a dry run)
    artifacts_kept: list[VersionInfo] = field(default_factory=list)  # shared with a remaining version


def prune(
    store: CheckpointStore,
    name: str,
    policy: PrunePolicy,
    *,
    versions: list[VersionInfo] | None = None,
    best_version: int | None = None,
    enough: Callable[[], bool] | None = None,
    dry_run: bool = False,
    reason: str = "retention",
    listing_is_current: bool = False,
    summarize: Callable[[VersionInfo], VersionSummary] = VersionInfo.summary,
) -> PruneResult:
    """Delete what `policy` chooses among the versions of `name`.

    `versions`/`best_version`: a listing the caller made under the same lock (else listed here).
    `enough`: checked before each deletion; once it returns True the rest are kept (disk-pressure cleanup).
    With it, each version's files go right after the version, so `enough` sees the space each one freed.
    Callers hold `store.lock(f"model-{name}")` so no registration interleaves with the listing.
    `listing_is_current`: that lock is one every writer shares (`store.lock_is_shared`), so `versions` minus
    the deletions is what the store holds afterwards and no second listing is needed.
    `summarize`: what the policy sees of each version (a caller that remembers summaries passes its cache).
    """
    if versions is None:
        versions = store.list_versions(name)
        best = store.alias_version(name)
        best_version = best.version if best is not None else None
    by_number = {v.version: v for v in versions}
    chosen = [by_number[n] for n in policy([summarize(v) for v in versions], best_version) if n in by_number]
    result = PruneResult(planned=chosen)
    if dry_run:
        return result
    if enough is not None:
        remaining = list(versions)
        for info in chosen:
            if enough():
                break
            store.delete_version(info)
            result.deleted.append(info)
            log.debug("%s: %s removed v%d (%s)", name, reason, info.version, info.category)
            remaining = (
                [v for v in remaining if v.version != info.version] if listing_is_current else store.list_versions(name)
            )
            _delete_unused_artifacts(store, name, [info], remaining, result)
        return result
    for info in chosen:
        store.delete_version(info)
        result.deleted.append(info)
        log.debug("%s: %s removed v%d (%s)", name, reason, info.version, info.category)
    if not result.deleted:
        return result
    # A fresh listing, not the one the policy saw: a rollback or another trainer may have registered a new
    # version of the same bytes meanwhile (on a server no lock is shared between machines).
    remaining = [v for v in versions if v not in result.deleted] if listing_is_current else store.list_versions(name)
    _delete_unused_artifacts(store, name, result.deleted, remaining, result)
    return result


def _delete_unused_artifacts(
    store: CheckpointStore,
    name: str,
    deleted: list[VersionInfo],
    remaining: list[VersionInfo],
    result: PruneResult,
) -> None:
    """Delete the files of deleted versions that no remaining version shares."""
    in_use = {v.source for v in remaining}
    for info in deleted:
        if info.source in in_use:
            result.artifacts_kept.append(info)
            continue
        try:
            store.delete_artifacts(info)
        except Exception as exc:  # noqa: BLE001 - the version is gone; a leftover directory is swept later
            log.warning("deleted %s v%s but not its artifacts: %s", name, info.version, describe_store_error(exc))
