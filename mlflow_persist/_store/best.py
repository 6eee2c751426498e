"""Keeping the `best` alias right on any `CheckpointStore`, without compare-and-set support from the store."""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

from mlflow_persist._observe.logs import package_logger
from mlflow_persist._policy.policy import Mode, VersionSummary, select_best
from mlflow_persist._policy.versions import BEST_ALIAS, VersionInfo, find_version
from mlflow_persist._store.protocol import CheckpointStore

__all__ = ["mark_corrupt", "reconcile_best", "reconcile_best_or_clear"]

log = package_logger("mlflow_persist.best")


_UNKNOWN: object = object()


def reconcile_best(
    store: CheckpointStore,
    name: str,
    mode: Mode,
    versions: list[VersionInfo] | None = None,
    converge: bool = True,
    monitor: str | None = None,
    current: VersionInfo | None | object = _UNKNOWN,
    summarize: Callable[[VersionInfo], VersionSummary] = VersionInfo.summary,
) -> VersionInfo | None:
    """Point `best` at the best valid version; returns that version (or the alias as it stands when no
    version qualifies).

    Versions are append-only. Each writer lists all versions, sets `best` to the best of them, then lists
    again; if a version appeared meanwhile it repeats. The last writer to set the alias therefore computed it
    from a listing that contained every version registered before its set, so `best` ends right even when
    processes race (and against an `mlflow server`, where no file lock is shared). With `converge=False`
    (callers that hold a lock every writer shares) one pass over `versions` suffices. `current` (where `best`
    points, when the caller just read it or knows it) spares the first pass reading the alias. `summarize`: what
    the choice sees of each version (a caller that remembers summaries passes its cache).
    """
    known = current
    for _ in range(20):
        versions = versions if versions is not None else store.list_versions(name)
        chosen = select_best([summarize(v) for v in versions], mode, monitor)
        current = store.alias_version(name) if known is _UNKNOWN else cast("VersionInfo | None", known)
        known = _UNKNOWN  # a later pass reads the alias again
        if chosen is None:
            return current
        if current is None or current.version != chosen.version:
            store.set_alias(name, BEST_ALIAS, chosen.version)
            log.info("%s: best -> v%d (%s)", name, chosen.version, chosen.value)
        if not converge:
            return find_version(versions, chosen.version)
        after = store.list_versions(name)
        if [v.version for v in after] == [v.version for v in versions]:
            return find_version(versions, chosen.version)
        versions = after
    return store.alias_version(name)


def mark_corrupt(
    store: CheckpointStore, info: VersionInfo, reason: str, fallback_mode: Mode = "min", monitor: str | None = None
) -> VersionInfo | None:
    """Tag a version whose bytes are damaged `corrupt=true` and move `best` off it (to the best valid
    version, or nowhere) in the same breath, so `best` never points at a corrupt version."""
    with store.lock(f"model-{info.name}"):
        store.mark_corrupt(info.name, info.version, reason)
        return reconcile_best_or_clear(store, info.name, fallback_mode, monitor)


def reconcile_best_or_clear(
    store: CheckpointStore, name: str, fallback_mode: Mode = "min", monitor: str | None = None
) -> VersionInfo | None:
    """`reconcile_best`, and when no valid version qualifies, remove a `best` that points at a corrupt one."""
    best = reconcile_best(store, name, fallback_mode, monitor=monitor)
    if best is not None and best.corrupt:
        store.delete_alias(name, BEST_ALIAS)
        log.warning(
            "%s: `best` pointed at v%d, which is corrupt, and no valid version can take it; removed", name, best.version
        )
        return None
    return best
