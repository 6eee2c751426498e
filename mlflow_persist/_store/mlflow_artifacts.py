"""The MLflow store's checkpoint files: write (atomically, locally) or upload, sweep leftovers, delete, load."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from mlflow_persist._format.atomic import STAGING_PREFIX, atomic_directory, copy_directory_atomically
from mlflow_persist._format.payload import (
    CHECKPOINT_FILE,
    MANIFEST_FILE,
    CheckpointState,
    WrittenCheckpoint,
    read_checkpoint_dir,
    write_checkpoint_dir,
)
from mlflow_persist._observe.logs import package_logger
from mlflow_persist._policy.versions import CHECKPOINTS_DIR, VersionInfo, checkpoint_dirname, written_for
from mlflow_persist._store.mlflow_aliases import MlflowAliases
from mlflow_persist._store.translate import local_path, translate, translated
from mlflow_persist.errors import (
    CheckpointCorruptError,
    CheckpointUnavailableError,
    StoreError,
    describe_store_error,
    is_unreachable,
)

__all__ = ["UNREGISTERED_SWEEP_AGE_SECONDS", "MlflowArtifacts", "unavailable_message"]

log = package_logger("mlflow_persist.store")

UNREGISTERED_SWEEP_AGE_SECONDS = 600.0


class MlflowArtifacts(MlflowAliases):
    """Checkpoint directories as run artifacts."""

    checkpoint_dirname = staticmethod(checkpoint_dirname)

    @translated("store the checkpoint")
    def write_checkpoint(
        self, run_id: str, model_name: str, step: int, payload: Mapping[str, Any]
    ) -> tuple[str, WrittenCheckpoint]:
        """Store the payload as a run artifact directory; returns (source URI, what was written).

        Local stores: written once, straight into the run's artifact directory under a temporary name,
        fsynced, then renamed into place, so a crash never leaves a half-written directory under a real name.
        Remote stores: written to a local staging directory and uploaded with `log_artifacts`.
        """
        dirname = checkpoint_dirname(model_name, step)
        relative = f"{CHECKPOINTS_DIR}/{dirname}"
        local_root = self.local_artifact_dir(run_id)
        if local_root is not None:
            with atomic_directory(local_root / CHECKPOINTS_DIR, dirname) as staging:
                written = write_checkpoint_dir(payload, staging)
            return f"{self.artifact_uri(run_id)}/{relative}", WrittenCheckpoint(
                local_root / relative, written.digest, written.size_bytes
            )
        with tempfile.TemporaryDirectory(prefix="mlflow-persist-") as tmp:
            staging = Path(tmp) / dirname
            written = write_checkpoint_dir(payload, staging)
            self.client.log_artifacts(run_id, str(staging), artifact_path=relative)
        return f"{self.artifact_uri(run_id)}/{relative}", written

    @translated("upload the checkpoint")
    def upload_checkpoint_files(self, run_id: str, directory: Path, dirname: str) -> str:
        """Upload checkpoint.pt and manifest.json of a local directory (an outbox entry); returns the source URI.
        Uploading the same entry twice writes the same artifact path again, so a retry is harmless."""
        relative = f"{CHECKPOINTS_DIR}/{dirname}"
        local_root = self.local_artifact_dir(run_id)
        if local_root is not None:
            copy_directory_atomically(
                directory, local_root / CHECKPOINTS_DIR, dirname, (CHECKPOINT_FILE, MANIFEST_FILE)
            )
        else:
            for name in (CHECKPOINT_FILE, MANIFEST_FILE):
                self.client.log_artifact(run_id, str(directory / name), artifact_path=relative)
        return f"{self.artifact_uri(run_id)}/{relative}"

    @translated("sweep leftovers of interrupted saves")
    def sweep_partial_checkpoints(
        self, run_id: str, max_age_seconds: float = 60.0, owner: str | None = None
    ) -> list[str]:
        """Delete leftovers of `owner`'s interrupted saves in the run: its temporary directories, and its
        directories no registered version of any model points to.

        A directory goes only when its name proves `owner`'s pipeline wrote it (`written_for`): a run shared by
        two configurations (another prefix) or a folder someone else put there is left alone, and so is every
        directory any version of any registered model uses. Temporary directories go once untouched (neither
        they nor their files modified) for `max_age_seconds`, so a save another process is writing right now is
        left alone; complete directories no version uses wait at least UNREGISTERED_SWEEP_AGE_SECONDS, as
        another process may be about to register them. Without an `owner`, nothing is swept.
        """
        local_root = self.local_artifact_dir(run_id)
        if owner is None or local_root is None or not (local_root / CHECKPOINTS_DIR).is_dir():
            return []
        used = {path.name for path in self._sources_in_run(run_id)}
        removed = []
        now = time.time()
        for entry in (local_root / CHECKPOINTS_DIR).iterdir():
            if not written_for(entry.name, owner, STAGING_PREFIX):
                continue
            limit = (
                max_age_seconds
                if entry.name.startswith(STAGING_PREFIX)
                else max(max_age_seconds, UNREGISTERED_SWEEP_AGE_SECONDS)
            )
            if entry.name in used or now - _newest_mtime(entry) < limit:
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
        if removed:
            log.info("swept %d leftover checkpoint directories of interrupted saves in run %s", len(removed), run_id)
        return removed

    def _sources_in_run(self, run_id: str) -> list[Path]:
        """The local directories that registered versions of any model, created from this run, point to."""
        sources: list[Path] = []
        token = None
        while True:
            page = self.registry.search_model_versions(f"run_id = '{run_id}'", max_results=1000, page_token=token)
            for mv in page:
                path = local_path(self.relocate_uri(mv.source))
                if path is not None:
                    sources.append(path)
            token = page.token
            if not token:
                return sources

    @translated("delete the checkpoint's artifacts")
    def delete_artifacts(self, info: VersionInfo) -> None:
        """Delete a version's artifact directory. Only a directory under the checkpoints folder of the
        version's own run is ever removed; any other source is refused and left alone."""
        if not info.run_id:
            raise StoreError(
                f"{info.name} v{info.version} names no run, so its artifacts {info.source} are not "
                "ours to delete; remove them by hand if they are unused."
            )
        root = self.artifact_uri(info.run_id)
        if not info.source.startswith(f"{root}/{CHECKPOINTS_DIR}/") or ".." in info.source[len(root) :].split("/"):
            raise StoreError(
                f"{info.name} v{info.version} has its artifacts at {info.source}, outside the "
                f"checkpoints of run {info.run_id}; they are left alone."
            )
        relative = info.source[len(root) + 1 :]
        if relative.rstrip("/").split("/")[-1] in ("", ".", CHECKPOINTS_DIR):  # the checkpoints folder itself
            raise StoreError(
                f"{info.name} v{info.version} names {info.source}, not one checkpoint directory; it is left alone."
            )
        local_root = local_path(root)
        if local_root is not None:
            shutil.rmtree(local_root / relative, ignore_errors=True)
            return
        repository = get_artifact_repository(root, tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        repository.delete_artifacts(relative)

    @contextlib.contextmanager
    def checkpoint_dir(self, info: VersionInfo) -> Iterator[Path]:
        """A local directory with the version's files (the artifact directory itself for local stores)."""
        path = local_path(info.source)
        if path is not None:
            if not path.is_dir():
                if path.parent.is_dir():  # the run's checkpoints are there, this one is not: it was deleted
                    raise CheckpointCorruptError(
                        f"{path} of {info.name} v{info.version} is missing; the artifacts were deleted."
                    )
                raise CheckpointUnavailableError(unavailable_message(info, str(path), "the folder does not exist"))
            yield path
            return
        try:
            tmp = tempfile.TemporaryDirectory(prefix="mlflow-persist-dl-")
        except OSError as exc:  # a full or unwritable temporary directory: the bytes were never looked at
            raise CheckpointUnavailableError(
                unavailable_message(info, info.source, f"no temporary directory to download into: {exc}")
            ) from None
        with tmp:
            try:
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=info.source, dst_path=tmp.name, tracking_uri=self.tracking_uri
                )
            except Exception as exc:  # noqa: BLE001 - classified: only a missing object is a damaged version
                if is_unreachable(exc):  # transient: the bytes may be fine, so nothing is tagged
                    raise translate(exc, f"download {info.name} v{info.version}") from None
                if _is_missing(exc):
                    raise CheckpointCorruptError(
                        f"The artifacts of {info.name} v{info.version} are missing from {info.source} "
                        f"({describe_store_error(exc)}); they were deleted."
                    ) from None
                raise CheckpointUnavailableError(
                    unavailable_message(info, info.source, describe_store_error(exc))
                ) from None
            yield Path(local)

    @translated("load the checkpoint")
    def load_version(self, info: VersionInfo) -> CheckpointState:
        """Download, verify against the checksum recorded at registration, and load with weights_only=True."""
        with self.checkpoint_dir(info) as directory:
            try:
                state = read_checkpoint_dir(directory, expected=info.digest)
            except OSError as exc:  # present but not readable (permission, I/O): nothing is known of the bytes
                raise CheckpointUnavailableError(
                    unavailable_message(info, str(directory), f"{exc.strerror or exc} reading {exc.filename}")
                ) from None
        state.name, state.version = info.name, info.version
        state.category = info.category if info.category != "unknown" else state.category
        return state


def _newest_mtime(path: Path) -> float:
    """The latest modification time of a directory and the files directly in it (0 when it vanished)."""
    try:
        times = [path.stat().st_mtime]
        if path.is_dir():
            times += [child.stat().st_mtime for child in path.iterdir()]
    except OSError:
        return 0.0
    return max(times)


def unavailable_message(info: VersionInfo, where: str, reason: str) -> str:
    return (
        f"The files of {info.name} v{info.version} at {where} cannot be reached ({reason}); nothing was tagged or "
        "deleted. If the project folder was moved or copied, open the store at its new place (its mlruns/ must be "
        "beside mlflow.db); otherwise restore access to that location and retry."
    )


def _is_missing(exc: BaseException) -> bool:
    """The store answered that the object does not exist (as opposed to refusing or failing). MLflow gathers
    the per-file errors of a directory download into one message, so the whole text is read."""
    code = str(getattr(exc, "error_code", "") or "")
    text = str(exc)
    lowered = text.lower()
    if any(word in text for word in ("401", "403")) or "forbidden" in lowered or "denied" in lowered:
        return False  # refused, not missing: the bytes may be fine
    return (
        isinstance(exc, FileNotFoundError)
        or code == "RESOURCE_DOES_NOT_EXIST"
        or "NoSuchKey" in text
        or "404" in text
        or "no such file" in lowered
        or "not found" in lowered
        or "does not exist" in lowered
    )
