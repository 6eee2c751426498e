"""The seam between the runtime and the system of record: the operations the runtime needs, nothing more.

`MlflowStore` (store.py) implements it against MLflow (embedded sqlite or an `mlflow server`);
`mlflow_persist.testing.MemoryStore` implements it in memory for fast, deterministic tests. Implementations
raise only the package's own errors (`mlflow_persist.errors`): `StoreUnavailableError` when the store cannot
be reached, `NotFoundError` for a missing model, version or run, `CheckpointCorruptError` for damaged bytes,
`StoreError` for any other refusal.

Every method may be called from the writer thread, the scheduler thread or the training thread at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ContextManager, Protocol, runtime_checkable  # noqa: UP035

from mlflow_persist._format.payload import CheckpointState, WrittenCheckpoint
from mlflow_persist._policy.versions import BEST_ALIAS, RunSummary, VersionInfo

MetricRow = tuple[str, float, int, int]  # (key, value, timestamp_ms, step)


@runtime_checkable
class CheckpointStore(Protocol):
    #: The store's address, credentials redacted, for messages.
    description: str
    #: True when checkpoints must wait in the durable local outbox before the store accepts them (a server
    #: that can be unreachable); False when a write is durable once `write_checkpoint` returns.
    is_remote: bool
    #: True when `lock()` serializes every process that writes to this store (one machine, one store);
    #: False when other machines may write concurrently, so `best` must be kept by a convergent protocol.
    lock_is_shared: bool

    # runs and metrics ---------------------------------------------------------------------------------
    def ensure_run(
        self,
        key: str,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        previous_key: str | None = None,
        run_id: str | None = None,
    ) -> str:
        """The one run for `key` (resumed if it exists, created otherwise); returns its id. A run keyed
        `previous_key` (by an older version) whose tags include all of `tags` is taken over instead of a new one.

        With `run_id`, that existing run instead (one another tool opened, such as a logger's): `NotFoundError`
        when the store has no such run or it was deleted; it gets `tags` (not the key: it is not the key's own
        run) and keeps its status, which is its owner's to set."""

    def finish_run(self, run_id: str, status: str = "FINISHED") -> None: ...

    def set_run_tags(self, run_id: str, tags: Mapping[str, str]) -> None: ...

    def run_summary(self, run_id: str) -> RunSummary | None:
        """Status, tags and latest metrics of a run (None when it was deleted)."""

    def log_metrics(self, run_id: str, rows: Sequence[MetricRow]) -> None:
        """Stage `metrics`: log a batch of (key, value, timestamp_ms, step) rows."""

    # checkpoint bytes ---------------------------------------------------------------------------------
    def write_checkpoint(
        self, run_id: str, model_name: str, step: int, payload: Mapping[str, Any]
    ) -> tuple[str, WrittenCheckpoint]:
        """Stage `write`: store the payload durably; returns (source URI, what was written)."""

    def upload_checkpoint_files(self, run_id: str, directory: Path, dirname: str) -> str:
        """Stage `write`: store an already written checkpoint directory (an outbox entry); returns its source.
        Uploading the same entry twice is harmless."""

    def load_version(self, info: VersionInfo) -> CheckpointState:
        """Stage `load`: fetch, verify against the recorded checksum, and load with weights_only=True."""

    def delete_artifacts(self, info: VersionInfo) -> None:
        """Stage `delete`: remove the bytes of a version (the caller knows no remaining version shares them)."""

    def sweep_partial_checkpoints(
        self, run_id: str, max_age_seconds: float = 60.0, owner: str | None = None, trust_markers: bool = True
    ) -> list[str]:
        """Remove leftovers of `owner`'s interrupted saves in a run (only what its own pipeline provably wrote
        and no registered version uses); returns what was removed. `trust_markers`: a store that marks the
        directories it registered may skip asking about those (False: ask about every one)."""

    def discard_unregistered(self, run_id: str, source: str) -> bool:
        """Stage `delete`: remove the checkpoint at `source` (written for a save that was then given up) unless a
        registered version of any model uses it; returns whether it was removed."""

    # registry -----------------------------------------------------------------------------------------
    def register_version(
        self,
        name: str,
        source: str,
        run_id: str | None,
        tags: Mapping[str, Any],
        retried: bool = True,
        description: str | None = None,
    ) -> VersionInfo:
        """Stage `register`: a new version of `source` with all its tags (and the one-line `description` the UI
        shows), idempotent per (source, category)."""

    def list_versions(self, name: str) -> list[VersionInfo]:
        """Every version of a registered model, oldest first (empty when the model does not exist)."""

    def newest_versions(self, name: str) -> Iterator[VersionInfo]:
        """The versions of a registered model, newest first, read a page at a time as the caller goes on (a
        restore stops at the first good one, whatever the history's length); a version may repeat when
        another writer registers one meanwhile."""

    def get_version(self, name: str, version: int | str) -> VersionInfo: ...

    def alias_version(self, name: str, alias: str = BEST_ALIAS) -> VersionInfo | None: ...

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Stage `alias`: point `alias` at `version` (last writer wins)."""

    def delete_alias(self, name: str, alias: str) -> None:
        """Stage `alias`: remove `alias` (a missing alias counts as removed)."""

    def mark_corrupt(self, name: str, version: int, reason: str) -> None: ...

    def clear_corrupt(self, name: str, version: int) -> None:
        """Remove the `corrupt` tag of a version whose bytes verified after all."""

    def set_version_tag(self, name: str, version: int, key: str, value: str) -> None:
        """Set one tag of an existing version (a cut's completion marker)."""

    def delete_version(self, info: VersionInfo) -> None:
        """Stage `delete`: remove the registry entry (not the bytes); a version already gone counts as deleted."""

    def registry_generation(self, name: str) -> int:
        """A counter of the changes made to model `name` through this store object (registrations, aliases,
        tags, deletions): a caller that remembers it can tell whether anything else in this process touched
        the model since its own last change."""

    def managed_models(self, prefix: str = "") -> list[str]:
        """Every registered model whose name starts with `prefix`, sorted (all pages)."""

    # coordination and disk ----------------------------------------------------------------------------
    def lock(self, key: str, timeout: float = 120.0) -> ContextManager[Any]:
        """A lock for `key`, shared with every process `lock_is_shared` covers."""

    def checkpoint_disk_path(self, run_id: str | None = None) -> Path | None:
        """A path on the local disk that receives checkpoints (for free-space checks); None when checkpoints
        do not land on a local disk."""


__all__ = ["CheckpointStore", "MetricRow"]
