"""The only layer that talks to MLflow: runs, artifacts, registered versions, tags, aliases, metrics.

Works the same against the embedded default (`sqlite:///mlflow.db` + local artifacts) and against an
`mlflow server` over HTTP (proxied artifacts).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import unquote, urlparse

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
from filelock import FileLock  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, RunStatus, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository  # noqa: E402

from mlflow_persist.errors import CheckpointCorruptError, NotFoundError, StoreUnavailableError  # noqa: E402
from mlflow_persist.naming import validate_model_name  # noqa: E402
from mlflow_persist.payload import CheckpointState, WrittenCheckpoint, fsync_directory, read_checkpoint_dir, \
    write_checkpoint_dir  # noqa: E402
from mlflow_persist.policy import VersionSummary, select_best  # noqa: E402

log = logging.getLogger("mlflow_persist.store")

TAG_PREFIX = "mlflow_persist."
RUN_KEY_TAG = TAG_PREFIX + "run_key"
HEALTH_TAG = TAG_PREFIX + "health"
BEST_ALIAS = "best"
CHECKPOINTS_DIR = "checkpoints"
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
UNREGISTERED_SWEEP_AGE_SECONDS = 600.0
_URI_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:@/\s]*):[^@/\s]+@")
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<ref>[^/]+))$")


def redact_credentials(text: str) -> str:
    """`text` with the password of every `scheme://user:password@host` URI in it replaced by `***`."""
    return _URI_PASSWORD.sub(r"\g<head>:***@", text)


def tag(name: str) -> str:
    return TAG_PREFIX + name


@dataclass
class VersionInfo:
    """A registered checkpoint version as recorded by its tags."""

    name: str
    version: int
    source: str
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    creation_timestamp_ms: int | None = None

    @property
    def category(self) -> str:
        return self.tags.get(tag("category"), "unknown")

    @property
    def step(self) -> int | None:
        raw = self.tags.get(tag("step"))
        return int(raw) if raw not in (None, "") else None

    @property
    def value(self) -> float | None:
        raw = self.tags.get(tag("value"))
        try:
            return float(raw) if raw not in (None, "", "None") else None
        except ValueError:
            return None

    @property
    def monitor(self) -> str | None:
        return self.tags.get(tag("monitor"))

    @property
    def sha256(self) -> str | None:
        return self.tags.get(tag("sha256"))

    @property
    def created_at(self) -> str | None:
        return self.tags.get(tag("created_at"))

    @property
    def format_version(self) -> int | None:
        raw = self.tags.get(tag("format_version"))
        return int(raw) if raw else None

    @property
    def corrupt(self) -> bool:
        return self.tags.get(tag("corrupt"), "").lower() == "true"

    @property
    def superseded(self) -> bool:
        return bool(self.tags.get(tag("migrated_to")))

    def summary(self) -> VersionSummary:
        return VersionSummary(self.version, self.category, self.value, self.step, self.corrupt, self.monitor,
                              self.superseded)


def _local_path(uri: str) -> Path | None:
    """The filesystem path of a local artifact URI, None for remote ones."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    if len(parsed.scheme) == 1:  # a Windows drive letter
        return Path(uri)
    return None


def _sqlite_dir(tracking_uri: str) -> Path | None:
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri[len("sqlite:///"):]).resolve().parent
    return None


class MlflowStore:
    """MLflow access for one tracking URI and experiment."""

    def __init__(self, tracking_uri: str, experiment_name: str = "mlflow-persist",
                 artifact_location: str | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.is_remote = self.is_remote_uri(tracking_uri)
        # Only an embedded sqlite store is reached by one machine, so only there does our file lock serialize
        # every writer; elsewhere registration and `best` use the lock-free convergent strategy.
        self.lock_is_shared = tracking_uri.startswith("sqlite:")
        self._lock_dir = self._choose_lock_dir()
        self._artifact_uris: dict[str, str] = {}
        self._known_models: set[str] = set()
        self.experiment_id = self._ensure_experiment(experiment_name, artifact_location)

    @staticmethod
    def is_remote_uri(tracking_uri: str) -> bool:
        return tracking_uri.startswith(("http://", "https://"))

    # ------------------------------------------------------------------------------------- experiment & runs

    def _ensure_experiment(self, name: str, artifact_location: str | None = None) -> str:
        try:
            experiment = self.client.get_experiment_by_name(name)
        except MlflowException as exc:
            raise StoreUnavailableError(
                f"The MLflow store at {redact_credentials(self.tracking_uri)} cannot be used ({_first_line(exc)}); "
                "check the tracking URI and that the server is running."
            ) from None
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                self.client.restore_experiment(experiment.experiment_id)
            return experiment.experiment_id
        db_dir = _sqlite_dir(self.tracking_uri)
        if artifact_location is None and db_dir is not None:
            artifact_location = (db_dir / "mlruns").as_uri()
        try:
            return self.client.create_experiment(
                name, artifact_location=artifact_location,
                tags={EXPERIMENT_KIND_TAG: "custom_model_development"},
            )
        except MlflowException:
            # Another process created it between our lookup and our create.
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def _runs_for_key(self, key: str) -> list[Any]:
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'",
            order_by=["attributes.start_time ASC"], max_results=50,
        )
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    def find_run(self, key: str) -> str | None:
        runs = self._runs_for_key(key)
        return runs[0].info.run_id if runs else None

    def ensure_run(self, key: str, run_name: str | None = None, tags: Mapping[str, str] | None = None) -> str:
        """The one run for `key`, resumed (status RUNNING again) if it exists, created otherwise.

        Processes on other machines do not share our file lock, so two of them may both create a run for a
        new key. After creating one, each settles on the oldest run with the key and deletes its own if it
        lost, so every process ends up logging to the same run."""
        with self.lock(f"run-{key}"):
            run_id = self.find_run(key)
            if run_id is None:
                run = self.client.create_run(
                    self.experiment_id, run_name=run_name or key,
                    tags={RUN_KEY_TAG: key, "mlflow.runName": run_name or key, **(tags or {})},
                )
                run_id = run.info.run_id
                oldest = self.find_run(key)
                if oldest is not None and oldest != run_id:
                    self.client.delete_run(run_id)
                    run_id = oldest
                    self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
            else:
                self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        return run_id

    def finish_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def artifact_uri(self, run_id: str) -> str:
        if run_id not in self._artifact_uris:
            self._artifact_uris[run_id] = self.client.get_run(run_id).info.artifact_uri
        return self._artifact_uris[run_id]

    def local_artifact_dir(self, run_id: str) -> Path | None:
        return _local_path(self.artifact_uri(run_id))

    def log_metrics(self, run_id: str, rows: Sequence[tuple[str, float, int, int]]) -> None:
        """rows: (key, value, timestamp_ms, step); sent in batches MLflow accepts (1000 metrics a call)."""
        metrics = [Metric(key, float(value), int(ts), int(step)) for key, value, ts, step in rows]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[start:start + 1000], synchronous=True)

    def set_run_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)

    # ------------------------------------------------------------------------------------- checkpoints

    @staticmethod
    def checkpoint_dirname(model_name: str, step: int) -> str:
        return f"{model_name}-{step:010d}-{uuid.uuid4().hex[:8]}"

    def write_checkpoint(self, run_id: str, model_name: str, step: int, payload: Mapping[str, Any]
                         ) -> tuple[str, WrittenCheckpoint]:
        """Store the payload as a run artifact directory; returns (source URI, what was written).

        Local stores: written once, straight into the run's artifact directory under a temporary name,
        fsynced, then renamed into place, so a crash never leaves a half-written directory under a real name.
        Remote stores: written to a local staging directory and uploaded with `log_artifacts`.
        """
        dirname = self.checkpoint_dirname(model_name, step)
        relative = f"{CHECKPOINTS_DIR}/{dirname}"
        local_root = self.local_artifact_dir(run_id)
        if local_root is not None:
            parent = local_root / CHECKPOINTS_DIR
            parent.mkdir(parents=True, exist_ok=True)
            staging = parent / f".tmp-{dirname}"
            try:
                written = write_checkpoint_dir(payload, staging)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)  # a failed write must not keep eating a full disk
                raise
            final = parent / dirname
            os.rename(staging, final)
            fsync_directory(parent)
            return f"{self.artifact_uri(run_id)}/{relative}", WrittenCheckpoint(final, written.sha256,
                                                                                written.size_bytes)
        with tempfile.TemporaryDirectory(prefix="mlflow-persist-") as tmp:
            staging = Path(tmp) / dirname
            written = write_checkpoint_dir(payload, staging)
            self.client.log_artifacts(run_id, str(staging), artifact_path=relative)
        return f"{self.artifact_uri(run_id)}/{relative}", written

    def upload_checkpoint_files(self, run_id: str, directory: Path, dirname: str) -> str:
        """Upload checkpoint.pt and manifest.json of a local directory (an outbox entry); returns the source URI.
        Uploading the same entry twice writes the same artifact path again, so a retry is harmless."""
        from mlflow_persist.payload import CHECKPOINT_FILE, MANIFEST_FILE

        relative = f"{CHECKPOINTS_DIR}/{dirname}"
        local_root = self.local_artifact_dir(run_id)
        if local_root is not None:
            target = local_root / relative
            if not target.exists():
                staging = local_root / CHECKPOINTS_DIR / f".tmp-{dirname}"
                staging.mkdir(parents=True, exist_ok=True)
                for name in (CHECKPOINT_FILE, MANIFEST_FILE):
                    shutil.copy2(directory / name, staging / name)
                os.rename(staging, target)
        else:
            for name in (CHECKPOINT_FILE, MANIFEST_FILE):
                self.client.log_artifact(run_id, str(directory / name), artifact_path=relative)
        return f"{self.artifact_uri(run_id)}/{relative}"

    def sweep_partial_checkpoints(self, run_id: str, max_age_seconds: float = 60.0) -> list[str]:
        """Delete leftovers of interrupted saves: temporary directories, and directories no version uses.

        Only temporary directories untouched (neither they nor their files modified) for `max_age_seconds` go,
        so a save another process is writing right now is left alone; complete directories no version uses
        wait at least UNREGISTERED_SWEEP_AGE_SECONDS, as another process may be about to register them.
        """
        local_root = self.local_artifact_dir(run_id)
        if local_root is None or not (local_root / CHECKPOINTS_DIR).is_dir():
            return []
        used = set()
        for name in self.registered_models_for_run(run_id):
            for info in self.list_versions(name):
                path = _local_path(info.source)
                if path is not None:
                    used.add(path.name)
        removed = []
        now = time.time()
        for entry in (local_root / CHECKPOINTS_DIR).iterdir():
            limit = max_age_seconds if entry.name.startswith(".tmp-") else max(max_age_seconds,
                                                                                UNREGISTERED_SWEEP_AGE_SECONDS)
            if entry.name in used or now - _newest_mtime(entry) < limit:
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry.name)
        if removed:
            log.info("swept %d leftover checkpoint directories of interrupted saves in run %s", len(removed), run_id)
        return removed

    def registered_models_for_run(self, run_id: str) -> list[str]:
        run = self.client.get_run(run_id)
        name = run.data.tags.get(tag("registered_model"))
        return [name] if name else []

    # ------------------------------------------------------------------------------------- registry

    def ensure_registered_model(self, name: str) -> None:
        validate_model_name(name)
        if name in self._known_models:
            return
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            try:
                self.client.create_registered_model(name, tags={tag("managed"): "true"})
            except MlflowException:
                self.client.get_registered_model(name)  # created concurrently: fine if it exists now
        self._known_models.add(name)

    def register_version(self, name: str, source: str, run_id: str | None, tags: Mapping[str, Any],
                         retried: bool = True) -> VersionInfo:
        """Register `source` as a new version with all its tags in the creating call.

        Idempotent per (source, category): a source already registered under that category (a retried call, a
        POST the HTTP client sent twice) returns the existing version, and duplicates of a retried POST are
        removed. One source may carry several categories (a periodic version sharing a performance checkpoint).
        """
        self.ensure_registered_model(name)
        category = str(tags.get(tag("category"), ""))

        def same(v: VersionInfo) -> bool:
            return v.source == source and v.category == (category or "unknown")

        if retried or not self.lock_is_shared:
            existing = [v for v in self.list_versions(name) if same(v)]
            if existing:
                return min(existing, key=lambda v: v.version)
        created = self.client.create_model_version(
            name, source=source, run_id=run_id, tags={k: str(v) for k, v in tags.items()}, await_creation_for=0,
        )
        if self.lock_is_shared:
            return self._to_info(created)  # no HTTP retries locally, so no duplicate POSTs
        duplicates = sorted((v for v in self.list_versions(name) if same(v)), key=lambda v: v.version)
        for extra in duplicates[1:]:
            log.warning("removing duplicate registration v%s of %s (same source as v%s)", extra.version, name,
                        duplicates[0].version)
            self.client.delete_model_version(name, str(extra.version))
        return duplicates[0] if duplicates else self._to_info(created)

    def list_versions(self, name: str) -> list[VersionInfo]:
        """Every version of a registered model, oldest first (empty when the model does not exist)."""
        versions: list[VersionInfo] = []
        token = None
        while True:
            page = self.client.search_model_versions(f"name = '{name}'", max_results=1000, page_token=token)
            versions.extend(self._to_info(mv) for mv in page)
            token = page.token
            if not token:
                break
        return sorted(versions, key=lambda v: v.version)

    def get_version(self, name: str, version: int | str) -> VersionInfo:
        try:
            return self._to_info(self.client.get_model_version(name, str(version)))
        except MlflowException:
            raise NotFoundError(
                f"Model {name!r} has no version {version}; run `mlflow-persist history {name}` to see its versions."
            ) from None

    def alias_version(self, name: str, alias: str = BEST_ALIAS) -> VersionInfo | None:
        try:
            return self._to_info(self.client.get_model_version_by_alias(name, alias))
        except MlflowException:
            return None

    def resolve(self, uri: str) -> VersionInfo:
        """A version from `models:/name@alias`, `models:/name/latest` or `models:/name/<version>`."""
        match = _MODEL_URI.match(uri)
        if not match:
            raise NotFoundError(
                f"{uri!r} is not a model URI; use models:/<name>@best, models:/<name>/latest or models:/<name>/<n>."
            )
        name, alias, ref = match["name"], match["alias"], match["ref"]
        if alias:
            info = self.alias_version(name, alias)
            if info is None:
                raise NotFoundError(f"Model {name!r} has no alias {alias!r}; check the name or save a checkpoint first.")
            return info
        if ref.lower() == "latest":
            versions = self.list_versions(name)
            if not versions:
                raise NotFoundError(f"Model {name!r} has no versions; train and save a checkpoint first.")
            return versions[-1]
        if not ref.isdigit():
            raise NotFoundError(f"{ref!r} is not a version number; use a number, `latest` or @<alias>.")
        return self.get_version(name, int(ref))

    def set_best(self, name: str, version: int) -> None:
        self.client.set_registered_model_alias(name, BEST_ALIAS, str(version))

    def reconcile_best(self, name: str, mode: str, versions: list[VersionInfo] | None = None,
                       converge: bool = True, monitor: str | None = None) -> VersionInfo | None:
        """Point `best` at the best valid version without compare-and-set support from MLflow.

        Versions are append-only. Each writer lists all versions, sets `best` to the best of them, then lists
        again; if a version appeared meanwhile it repeats. The last writer to set the alias therefore computed
        it from a listing that contained every version registered before its set, so `best` ends right even
        when processes race (and against an `mlflow server`, where no file lock is shared). With
        `converge=False` (callers that hold the store's file lock) one pass over `versions` suffices.
        """
        for _ in range(20):
            versions = versions if versions is not None else self.list_versions(name)
            chosen = select_best([v.summary() for v in versions], mode, monitor)  # type: ignore[arg-type]
            current = self.alias_version(name)
            if chosen is None:
                return current
            if current is None or current.version != chosen.version:
                self.set_best(name, chosen.version)
                log.info("%s: best -> v%d (%s)", name, chosen.version, chosen.value)
            if not converge:
                return chosen_info(versions, chosen.version)
            after = self.list_versions(name)
            if [v.version for v in after] == [v.version for v in versions]:
                return chosen_info(versions, chosen.version)
            versions = after
        return self.alias_version(name)

    def mark_corrupt(self, name: str, version: int, reason: str) -> None:
        try:
            self.client.set_model_version_tag(name, str(version), tag("corrupt"), "true")
            self.client.set_model_version_tag(name, str(version), tag("corrupt_reason"), reason[:4000])
        except MlflowException as exc:
            log.warning("could not tag %s v%s as corrupt: %s", name, version, _first_line(exc))

    def delete_version(self, info: VersionInfo, delete_artifacts: bool = True,
                       sources_in_use: set[str] | None = None) -> None:
        """Delete a version and (when no other version shares it) its artifact directory.

        `sources_in_use`: the sources of the versions that stay, when the caller has just listed them (saves a
        listing per deletion). A version another process deleted first counts as deleted."""
        try:
            self.client.delete_model_version(info.name, str(info.version))
        except MlflowException as exc:
            if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                raise
        if not delete_artifacts:
            return
        if sources_in_use is None:
            sources_in_use = {v.source for v in self.list_versions(info.name)}
        if info.source in sources_in_use:
            return  # a rollback or periodic version reuses the same artifacts
        try:
            self._delete_artifact_dir(info)
        except Exception as exc:  # the version is gone; a leftover directory is swept later
            log.warning("deleted %s v%s but not its artifacts: %s", info.name, info.version, _first_line(exc))

    def _delete_artifact_dir(self, info: VersionInfo) -> None:
        path = _local_path(info.source)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
            return
        if info.run_id:
            root = self.artifact_uri(info.run_id)
            if info.source.startswith(root + "/"):
                relative = info.source[len(root) + 1:]
                repository = get_artifact_repository(root, tracking_uri=self.tracking_uri,
                                                     registry_uri=self.tracking_uri)
                repository.delete_artifacts(relative)

    # ------------------------------------------------------------------------------------- loading

    @contextlib.contextmanager
    def checkpoint_dir(self, info: VersionInfo) -> Iterator[Path]:
        """A local directory with the version's files (the artifact directory itself for local stores)."""
        path = _local_path(info.source)
        if path is not None:
            if not path.is_dir():
                raise CheckpointCorruptError(f"{path} of {info.name} v{info.version} is missing; the artifacts were deleted.")
            yield path
            return
        with tempfile.TemporaryDirectory(prefix="mlflow-persist-dl-") as tmp:
            try:
                local = mlflow.artifacts.download_artifacts(artifact_uri=info.source, dst_path=tmp,
                                                            tracking_uri=self.tracking_uri)
            except Exception as exc:
                raise CheckpointCorruptError(
                    f"The artifacts of {info.name} v{info.version} cannot be downloaded ({_first_line(exc)})."
                ) from None
            yield Path(local)

    def load_version(self, info: VersionInfo) -> CheckpointState:
        """Download, verify against the sha256 recorded at registration, and load with weights_only=True."""
        with self.checkpoint_dir(info) as directory:
            state = read_checkpoint_dir(directory, expected_sha256=info.sha256)
        state.name, state.version = info.name, info.version
        state.category = info.category if info.category != "unknown" else state.category
        return state

    # ------------------------------------------------------------------------------------- misc

    def _choose_lock_dir(self) -> Path:
        db_dir = _sqlite_dir(self.tracking_uri)
        base = db_dir if db_dir is not None else Path(tempfile.gettempdir())
        return base / ".mlflow_persist_locks"

    def lock(self, key: str, timeout: float = 120.0) -> FileLock:
        """A cross-process lock for `key` (a file lock next to a local store; machine-local for a server)."""
        self._lock_dir.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
        return FileLock(str(self._lock_dir / f"{safe}.lock"), timeout=timeout)

    def checkpoint_disk_path(self, run_id: str | None = None) -> Path:
        """A path on the disk that receives checkpoints (for free-space checks)."""
        if run_id is not None:
            local = self.local_artifact_dir(run_id)
            if local is not None:
                local.mkdir(parents=True, exist_ok=True)
                return local
        return self._lock_dir.parent if self._lock_dir.parent.exists() else Path(tempfile.gettempdir())

    @staticmethod
    def _to_info(mv: Any) -> VersionInfo:
        return VersionInfo(
            name=mv.name, version=int(mv.version), source=mv.source, run_id=mv.run_id,
            tags=dict(mv.tags or {}), aliases=list(getattr(mv, "aliases", []) or []),
            creation_timestamp_ms=mv.creation_timestamp,
        )


def _newest_mtime(path: Path) -> float:
    """The latest modification time of a directory and the files directly in it (0 when it vanished)."""
    try:
        times = [path.stat().st_mtime]
        if path.is_dir():
            times += [child.stat().st_mtime for child in path.iterdir()]
    except OSError:
        return 0.0
    return max(times)


def chosen_info(versions: list[VersionInfo], number: int) -> VersionInfo:
    return next(v for v in versions if v.version == number)


def _first_line(exc: BaseException) -> str:
    raw = redact_credentials(str(exc))
    if "Max retries exceeded" in raw or "Connection refused" in raw or "NewConnectionError" in raw:
        return "connection refused or timed out"
    if "error code 403" in raw or "PERMISSION_DENIED" in raw:
        return ("the tracking server denied permission (HTTP 403): ask its administrator for EDIT permission on "
                "the experiment and the registered models")
    if "error code 401" in raw or "UNAUTHENTICATED" in raw:
        return "the tracking server wants a login (HTTP 401): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    text = raw.strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
