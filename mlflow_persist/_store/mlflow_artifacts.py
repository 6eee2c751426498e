"""The MLflow store's checkpoint files: write (atomically, locally) or upload, sweep leftovers, delete, load."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from mlflow_persist._format.atomic import STAGING_PREFIX, atomic_directory, copy_directory_atomically
from mlflow_persist._format.digest import Digest, digest_file
from mlflow_persist._format.payload import (
    CHECKPOINT_FILE,
    CheckpointState,
    WrittenCheckpoint,
    checkpoint_files,
    manifest_digest,
    read_checkpoint_dir,
    read_manifest,
    write_checkpoint_dir,
)
from mlflow_persist._observe.logs import package_logger
from mlflow_persist._policy.versions import CHECKPOINTS_DIR, VersionInfo, checkpoint_dirname, written_for
from mlflow_persist._store.mlflow_aliases import MlflowAliases
from mlflow_persist._store.registered_marker import is_marked, mark_registered
from mlflow_persist._store.translate import local_path, translate, translated
from mlflow_persist.errors import (
    CheckpointCorruptError,
    CheckpointUnavailableError,
    StoreError,
    describe_store_error,
    is_unreachable,
    redact_credentials,
)

__all__ = ["UNREGISTERED_SWEEP_AGE_SECONDS", "MlflowArtifacts", "unavailable_message"]

log = package_logger("mlflow_persist.store")

UNREGISTERED_SWEEP_AGE_SECONDS = 600.0
#: Run tag (one per owner: `<tag>.<registered name>`) noting when a remote sweep first found a directory unused.
UNUSED_SEEN_TAG = "mlflow_persist.unused_seen"
UNUSED_SEEN_KEPT = 100


class MlflowArtifacts(MlflowAliases):
    """Checkpoint directories as run artifacts."""

    checkpoint_dirname = staticmethod(checkpoint_dirname)
    #: Read every upload back (sizes listed, checkpoint.pt's digest recomputed) before it is registered.
    verify_uploads = True

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
            self._upload_verified(run_id, staging, relative, written.digest)
        return f"{self.artifact_uri(run_id)}/{relative}", written

    @translated("upload the checkpoint")
    def upload_checkpoint_files(self, run_id: str, directory: Path, dirname: str) -> str:
        """Upload the checkpoint files of a local directory (an outbox entry); returns the source URI.
        Uploading the same entry twice writes the same artifact path again, so a retry is harmless."""
        relative = f"{CHECKPOINTS_DIR}/{dirname}"
        local_root = self.local_artifact_dir(run_id)
        if local_root is not None:
            copy_directory_atomically(directory, local_root / CHECKPOINTS_DIR, dirname, checkpoint_files(directory))
        else:
            manifest = read_manifest(directory)
            self._upload_verified(run_id, directory, relative, manifest_digest(manifest))
        return f"{self.artifact_uri(run_id)}/{relative}"

    def _upload_verified(self, run_id: str, directory: Path, relative: str, digest: Digest | None) -> None:
        """Upload manifest.json, then checkpoint.pt (and model.safetensors), and read them back: all present with
        their local sizes, and checkpoint.pt's bytes matching `digest`. What does not verify is deleted and the save fails (the
        writer or the outbox retries it), so a truncated or altered upload never becomes a version.

        The manifest goes first, so every checkpoint folder that exists remotely says when it was written
        (`sweep_partial_checkpoints` ages remote leftovers by it)."""
        for name in checkpoint_files(directory):
            self.client.log_artifact(run_id, str(directory / name), artifact_path=relative)
        if not self.verify_uploads:
            return
        try:
            problem = self._upload_problem(run_id, directory, relative, digest)
        except Exception as exc:  # noqa: BLE001 - unreadable right after the upload: not verified either
            problem = f"reading it back failed ({describe_store_error(exc)})"
        if problem is None:
            return
        with contextlib.suppress(Exception):  # the sweep removes it later if this fails too
            self._delete_relative(self.artifact_uri(run_id), relative)
        raise StoreError(
            f"The upload of {relative} to run {run_id} did not verify: {problem}; it was deleted and the "
            "save is retried. If this repeats, check the artifact store (a proxy or gateway altering uploads)."
        )

    def _upload_problem(self, run_id: str, directory: Path, relative: str, digest: Digest | None) -> str | None:
        remote = {Path(info.path).name: info.file_size for info in self.client.list_artifacts(run_id, relative)}
        for name in checkpoint_files(directory):  # model.safetensors: its digest is in checkpoint.pt's record
            local_size = (directory / name).stat().st_size
            if name not in remote:
                return f"{name} is missing"
            remote_size = remote[name]
            if remote_size is not None and int(remote_size) != local_size:
                return f"{name} has {remote_size} bytes, {local_size} were sent"
        if digest is None:
            return None
        with tempfile.TemporaryDirectory(prefix="mlflow-persist-verify-") as tmp:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{self.artifact_uri(run_id)}/{relative}/{CHECKPOINT_FILE}",
                dst_path=tmp,
                tracking_uri=self.tracking_uri,
            )
            actual = digest_file(local, digest.algorithm)
        if actual != digest:
            return f"{CHECKPOINT_FILE} reads back as {actual.hexdigest}, {digest.hexdigest} was written"
        return None

    @translated("sweep leftovers of interrupted saves")
    def sweep_partial_checkpoints(
        self, run_id: str, max_age_seconds: float = 60.0, owner: str | None = None, trust_markers: bool = True
    ) -> list[str]:
        """Delete leftovers of `owner`'s interrupted saves in the run: its temporary directories, and its
        directories no registered version of any model points to.

        A directory goes only when its name proves `owner`'s pipeline wrote it (`written_for`): a run shared by
        two configurations (another prefix) or a folder someone else put there is left alone, and so is every
        directory any version of any registered model uses. Temporary directories go once untouched (neither
        they nor their files modified) for `max_age_seconds`, so a save another process is writing right now is
        left alone; complete directories no version uses wait at least UNREGISTERED_SWEEP_AGE_SECONDS, as
        another process may be about to register them. A remote store tells no modification times, so there a
        directory goes once two sweeps UNREGISTERED_SWEEP_AGE_SECONDS apart both found it unused (the first
        one notes it in a run tag). Without an `owner`, nothing is swept. Locally, the registry is asked only
        about directories without a registered marker, unless `trust_markers` is False (registered_marker.py).
        """
        if owner is None:
            return []
        local_root = self.local_artifact_dir(run_id)
        if local_root is None:
            return self._sweep_remote(run_id, owner)
        if not (local_root / CHECKPOINTS_DIR).is_dir():
            return []
        now = time.time()
        candidates = []
        with os.scandir(local_root / CHECKPOINTS_DIR) as entries:  # thousands at start-up: no `Path` per entry
            for item in entries:
                staging = item.name.startswith(STAGING_PREFIX)
                if not written_for(item.name, owner, STAGING_PREFIX) or (
                    trust_markers and not staging and is_marked(item.path)
                ):
                    continue
                limit = max_age_seconds if staging else max(max_age_seconds, UNREGISTERED_SWEEP_AGE_SECONDS)
                if now - _newest_mtime(Path(item.path)) >= limit:
                    candidates.append(Path(item.path))
        used = self._used_dirnames(run_id) if candidates else set()
        removed = []
        for entry in candidates:
            if entry.name in used:
                mark_registered(entry)  # the listing showed it in use: the next sweep need not ask again
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
        if removed:
            log.info("swept %d leftover checkpoint directories of interrupted saves in run %s", len(removed), run_id)
        return removed

    def _sweep_remote(self, run_id: str, owner: str) -> list[str]:
        owned = [
            Path(info.path).name
            for info in self.client.list_artifacts(run_id, CHECKPOINTS_DIR)
            if info.is_dir and written_for(Path(info.path).name, owner)
        ]
        tag_key = f"{UNUSED_SEEN_TAG}.{owner}"
        noted = _read_unused_seen(self.client.get_run(run_id).data.tags.get(tag_key, ""))
        if not owned and not noted:
            return []
        used = self._used_dirnames(run_id)
        now = time.time()
        unused = [name for name in owned if name not in used]
        removed, still_noted = [], {}
        root = self.artifact_uri(run_id)
        for name in unused:
            first_seen = noted.get(name, now)
            if now - first_seen >= UNREGISTERED_SWEEP_AGE_SECONDS:
                self._delete_relative(root, f"{CHECKPOINTS_DIR}/{name}")
                removed.append(name)
            else:
                still_noted[name] = first_seen
        newest = dict(sorted(still_noted.items(), key=lambda item: item[1])[-UNUSED_SEEN_KEPT:])
        if newest != noted:
            self.client.set_tag(run_id, tag_key, json.dumps(newest, separators=(",", ":")) if newest else "{}")
        if removed:
            log.info("swept %d unregistered checkpoint directories of %s in run %s", len(removed), owner, run_id)
        return removed

    def _used_dirnames(self, run_id: str) -> set[str]:
        """The checkpoint directory names that registered versions of any model, created from this run, use."""
        names: set[str] = set()
        token = None
        while True:
            page = self.registry.search_model_versions(f"run_id = '{run_id}'", max_results=1000, page_token=token)
            names.update(str(mv.source).rstrip("/").rsplit("/", 1)[-1] for mv in page)
            token = page.token
            if not token:
                return names

    @translated("delete an unregistered checkpoint")
    def discard_unregistered(self, run_id: str, source: str) -> bool:
        """Delete the checkpoint directory `source` of the run unless a registered version of any model uses
        it; returns whether it was deleted."""
        root = self.artifact_uri(run_id)
        relative = _checkpoint_relative(root, source, f"the unregistered checkpoint of run {run_id}")
        if relative.rsplit("/", 1)[-1] in self._used_dirnames(run_id):
            return False
        self._delete_relative(root, relative)
        return True

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
        self._delete_relative(root, _checkpoint_relative(root, info.source, f"{info.name} v{info.version}"))

    def _delete_relative(self, root: str, relative: str) -> None:
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
                if _is_missing(exc) or self._listed_as_gone(info):
                    raise CheckpointCorruptError(
                        f"The artifacts of {info.name} v{info.version} are missing from {info.source} "
                        f"({describe_store_error(exc)}); they were deleted."
                    ) from None
                raise CheckpointUnavailableError(unavailable_message(info, info.source, _whole_failure(exc))) from None
            yield Path(local)

    def _listed_as_gone(self, info: VersionInfo) -> bool:
        """Whether the store, asked directly, lists the version's run checkpoints without its folder (it was
        deleted); False when it cannot tell (no run, a source elsewhere, or the listing fails too)."""
        if not info.run_id:
            return False
        try:
            root = self.artifact_uri(info.run_id)
            relative = _checkpoint_relative(root, info.source, f"{info.name} v{info.version}")
            parent, _, name = relative.rstrip("/").rpartition("/")
            listed = self.client.list_artifacts(info.run_id, parent)
        except Exception:  # noqa: BLE001 - nothing is known: the caller reports it unavailable
            return False
        return bool(listed) and name not in {Path(entry.path).name for entry in listed}

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


def _checkpoint_relative(root: str, source: str, label: str) -> str:
    """`source` relative to the run's artifact root `root`, when it names one checkpoint directory of the run;
    anything else is refused (StoreError) and left alone."""
    if not source.startswith(f"{root}/{CHECKPOINTS_DIR}/") or ".." in source[len(root) :].split("/"):
        raise StoreError(
            f"{label} has its artifacts at {source}, outside the checkpoints of its run; they are left alone."
        )
    relative = source[len(root) + 1 :]
    if relative.rstrip("/").split("/")[-1] in ("", ".", CHECKPOINTS_DIR):  # the checkpoints folder itself
        raise StoreError(f"{label} names {source}, not one checkpoint directory; it is left alone.")
    return relative


def _read_unused_seen(text: str) -> dict[str, float]:
    try:
        data = json.loads(text) if text else {}
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): float(v) for k, v in data.items() if isinstance(v, (int, float))}


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


def _whole_failure(exc: BaseException) -> str:
    """`describe_store_error`, plus the per-file failures MLflow lists below a directory download's first line
    (what the server answered for each file), folded into one line."""
    first = describe_store_error(exc)
    rest = " ".join(line.strip() for line in redact_credentials(str(exc)).splitlines()[1:] if line.strip())
    return f"{first} {rest[:400]}".strip() if rest else first


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
