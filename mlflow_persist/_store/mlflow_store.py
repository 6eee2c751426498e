"""The MLflow adapter of the `CheckpointStore` seam: runs, artifacts, registered versions, tags, aliases, metrics.

Works the same against the embedded default (`sqlite:///mlflow.db` + local artifacts) and against an
`mlflow server` over HTTP (proxied artifacts). Every public method translates MLflow's exceptions into the
package's own (`mlflow_persist.errors`), so nothing of MLflow reaches the runtime or a user.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar
from urllib.parse import unquote, urlparse

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
from filelock import FileLock  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, RunStatus, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository  # noqa: E402

from mlflow_persist._format.atomic import STAGING_PREFIX, atomic_directory, copy_directory_atomically, durable_directory, \
    user_cache_dir  # noqa: E402
from mlflow_persist._store.descriptions import model_description
from mlflow_persist.errors import (  # noqa: E402
    CheckpointCorruptError,
    NotFoundError,
    PersistError,
    StoreError,
    StoreUnavailableError,
    describe_store_error,
    is_unreachable,
    redact_credentials,
    store_hint,
)
from mlflow_persist._format.naming import validate_model_name  # noqa: E402
from mlflow_persist._store.version_create import create_version_once, rest_store_of  # noqa: E402
from mlflow_persist._runtime.process_effects import make_sqlite_commits_durable  # noqa: E402
from mlflow_persist._format.payload import CHECKPOINT_FILE, MANIFEST_FILE, CheckpointState, WrittenCheckpoint, \
    read_checkpoint_dir, write_checkpoint_dir  # noqa: E402
from mlflow_persist._observe.logs import package_logger  # noqa: E402
from mlflow_persist._policy.versions import (  # noqa: E402,F401 - names re-exported for existing importers
    BEST_ALIAS,
    CHECKPOINTS_DIR,
    HEALTH_TAG,
    RUN_KEY_TAG,
    TAG_PREFIX,
    RunSummary,
    VersionInfo,
    checkpoint_dirname,
    tag,
)

log = package_logger("mlflow_persist.store")

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
UNREGISTERED_SWEEP_AGE_SECONDS = 600.0
_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<ref>[^/]+))$")
_F = TypeVar("_F", bound=Callable[..., Any])


def translate(exc: BaseException, doing: str) -> PersistError:
    """The package's error for an exception MLflow (or its HTTP client) raised while `doing` something."""
    if isinstance(exc, PersistError):
        return exc
    reason = describe_store_error(exc)
    if is_unreachable(exc) or "error code 401" in str(exc) or "error code 403" in str(exc):
        return StoreUnavailableError(f"Could not {doing}: {reason}; {store_hint(exc)}.")
    code = str(getattr(exc, "error_code", "") or "")
    if code == "RESOURCE_DOES_NOT_EXIST":
        return NotFoundError(f"Could not {doing}: {reason}.")
    return StoreError(f"Could not {doing}: {reason}; check the store, then retry.", code=code)


def _translated(doing: str) -> Callable[[_F], _F]:
    def wrap(method: _F) -> _F:
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except PersistError:
                raise
            except OSError as exc:
                if exc.errno is not None and not is_unreachable(exc):
                    raise  # the local disk's own error (ENOSPC, EACCES): callers react to its errno
                raise translate(exc, doing) from exc
            except Exception as exc:  # noqa: BLE001 - MLflow, requests and sqlalchemy errors alike
                raise translate(exc, doing) from exc
        return call  # type: ignore[return-value]
    return wrap


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
        self.description = redact_credentials(tracking_uri)
        db_dir = _sqlite_dir(tracking_uri)
        if db_dir is not None:
            make_sqlite_commits_durable(db_dir / Path(tracking_uri[len("sqlite:///"):]).name)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.is_remote = self.is_remote_uri(tracking_uri)
        # Only an embedded sqlite store is reached by one machine, so only there does our file lock serialize
        # every writer; elsewhere registration and `best` use the lock-free convergent strategy.
        self.lock_is_shared = tracking_uri.startswith("sqlite:")
        self._lock_dir = self._choose_lock_dir()
        self._artifact_uris: dict[str, str] = {}
        self._known_models: set[str] = set()
        self._generations: dict[str, int] = {}
        self.experiment_id = self._ensure_experiment(experiment_name, artifact_location)

    @functools.cached_property
    def registry(self) -> Any:
        """The registry client, made at the first registry call (as MLflow makes it), not at start-up."""
        return _registry_client(self.client)

    @staticmethod
    def is_remote_uri(tracking_uri: str) -> bool:
        return tracking_uri.startswith(("http://", "https://"))

    # ------------------------------------------------------------------------------------- experiment & runs

    def _ensure_experiment(self, name: str, artifact_location: str | None = None) -> str:
        try:
            experiment = self.client.get_experiment_by_name(name)
        except Exception as exc:  # noqa: BLE001 - MLflow, HTTP and database errors alike
            raise StoreUnavailableError(
                f"The MLflow store at {self.description} cannot be used ({describe_store_error(exc)}); "
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

    @_translated("open the model's run")
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

    @_translated("mark the run finished")
    def finish_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    @_translated("read the run's artifact location")
    def artifact_uri(self, run_id: str) -> str:
        if run_id not in self._artifact_uris:
            self._artifact_uris[run_id] = self.client.get_run(run_id).info.artifact_uri
        return self._artifact_uris[run_id]

    def local_artifact_dir(self, run_id: str) -> Path | None:
        return _local_path(self.artifact_uri(run_id))

    @_translated("log metrics")
    def log_metrics(self, run_id: str, rows: Sequence[tuple[str, float, int, int]]) -> None:
        """rows: (key, value, timestamp_ms, step); sent in batches MLflow accepts (1000 metrics a call)."""
        metrics = [Metric(key, float(value), int(ts), int(step)) for key, value, ts, step in rows]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[start:start + 1000], synchronous=True)

    @_translated("set run tags")
    def set_run_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)

    # ------------------------------------------------------------------------------------- checkpoints

    checkpoint_dirname = staticmethod(checkpoint_dirname)

    @_translated("store the checkpoint")
    def write_checkpoint(self, run_id: str, model_name: str, step: int, payload: Mapping[str, Any]
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
                local_root / relative, written.digest, written.size_bytes)
        with tempfile.TemporaryDirectory(prefix="mlflow-persist-") as tmp:
            staging = Path(tmp) / dirname
            written = write_checkpoint_dir(payload, staging)
            self.client.log_artifacts(run_id, str(staging), artifact_path=relative)
        return f"{self.artifact_uri(run_id)}/{relative}", written

    @_translated("upload the checkpoint")
    def upload_checkpoint_files(self, run_id: str, directory: Path, dirname: str) -> str:
        """Upload checkpoint.pt and manifest.json of a local directory (an outbox entry); returns the source URI.
        Uploading the same entry twice writes the same artifact path again, so a retry is harmless."""
        relative = f"{CHECKPOINTS_DIR}/{dirname}"
        local_root = self.local_artifact_dir(run_id)
        if local_root is not None:
            copy_directory_atomically(directory, local_root / CHECKPOINTS_DIR, dirname,
                                      (CHECKPOINT_FILE, MANIFEST_FILE))
        else:
            for name in (CHECKPOINT_FILE, MANIFEST_FILE):
                self.client.log_artifact(run_id, str(directory / name), artifact_path=relative)
        return f"{self.artifact_uri(run_id)}/{relative}"

    @_translated("sweep leftovers of interrupted saves")
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
            limit = max_age_seconds if entry.name.startswith(STAGING_PREFIX) else max(max_age_seconds,
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
            model = self.client.get_registered_model(name)
        except MlflowException:
            try:
                self.client.create_registered_model(name, tags={tag("managed"): "true"},
                                                    description=model_description(name))
            except MlflowException:
                self.client.get_registered_model(name)  # created concurrently: fine if it exists now
        else:
            if not model.description and model.tags.get(tag("managed")) == "true":  # made by an earlier version
                self.client.update_registered_model(name, description=model_description(name))
        self._known_models.add(name)

    @_translated("register the checkpoint version")
    def register_version(self, name: str, source: str, run_id: str | None, tags: Mapping[str, Any],
                         retried: bool = True, description: str | None = None) -> VersionInfo:
        """Register `source` as a new version with all its tags in the creating call.

        Idempotent per (source, category): a source already registered under that category (a retried call, a
        POST the HTTP client sent twice) returns the existing version, and duplicates of a retried POST are
        removed. One source may carry several categories (a periodic version sharing a performance checkpoint).
        """
        self._changed(name)
        self.ensure_registered_model(name)
        category = str(tags.get(tag("category"), ""))

        def same(v: VersionInfo) -> bool:
            return v.source == source and v.category == (category or "unknown")

        if retried:
            existing = [v for v in self.list_versions(name) if same(v)]
            if existing:
                return min(existing, key=lambda v: v.version)
        text_tags = {k: str(v) for k, v in tags.items()}
        rest = None if self.lock_is_shared else rest_store_of(self.registry)
        if rest is None:
            created = self.registry.create_model_version(name, source=source, run_id=run_id, tags=text_tags,
                                                         await_creation_for=0, description=description)
        else:  # a lost reply is looked for in the registry before the request goes out again
            created = create_version_once(
                rest, name, source, run_id, text_tags, description,
                find_existing=lambda: min((v for v in self.list_versions(name) if same(v)),
                                          key=lambda v: v.version, default=None))
            if isinstance(created, VersionInfo):
                log.info("%s: the server had registered %s as v%d before its reply was lost; kept that version",
                         name, source, created.version)
                return created
        if self.lock_is_shared:
            return self._to_info(created)  # no HTTP retries locally, so no duplicate POSTs
        duplicates = sorted((v for v in self.list_versions(name) if same(v)), key=lambda v: v.version)
        for extra in duplicates[1:]:
            log.warning("removing duplicate registration v%s of %s (same source as v%s)", extra.version, name,
                        duplicates[0].version)
            self.registry.delete_model_version(name, str(extra.version))
        return duplicates[0] if duplicates else self._to_info(created)

    def registry_generation(self, name: str) -> int:
        return self._generations.get(name, 0)

    def _changed(self, name: str) -> None:
        self._generations[name] = self._generations.get(name, 0) + 1

    @_translated("list the model's versions")
    def list_versions(self, name: str) -> list[VersionInfo]:
        """Every version of a registered model, oldest first (empty when the model does not exist)."""
        versions: list[VersionInfo] = []
        token = None
        while True:
            page = self.registry.search_model_versions(f"name = '{name}'", max_results=1000, page_token=token)
            versions.extend(self._to_info(mv) for mv in page)
            token = page.token
            if not token:
                break
        return sorted(versions, key=lambda v: v.version)

    def get_version(self, name: str, version: int | str) -> VersionInfo:
        try:
            return self._to_info(self.registry.get_model_version(name, str(version)))
        except MlflowException as exc:
            if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                raise translate(exc, f"read {name} v{version}") from exc
            raise NotFoundError(
                f"Model {name!r} has no version {version}; run `mlflow-persist history {name}` to see its versions."
            ) from None

    def alias_version(self, name: str, alias: str = BEST_ALIAS) -> VersionInfo | None:
        try:
            return self._to_info(self.registry.get_model_version_by_alias(name, alias))
        except MlflowException as exc:
            if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise translate(exc, f"read the alias {alias!r} of {name}") from exc
        except Exception as exc:  # noqa: BLE001 - connection errors
            raise translate(exc, f"read the alias {alias!r} of {name}") from exc

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

    @_translated("move the alias")
    def set_alias(self, name: str, alias: str, version: int) -> None:
        self._changed(name)
        self.registry.set_registered_model_alias(name, alias, str(version))

    @_translated("remove the alias")
    def delete_alias(self, name: str, alias: str) -> None:
        self._changed(name)
        try:
            self.registry.delete_registered_model_alias(name, alias)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise

    @_translated("clear the corrupt tag")
    def clear_corrupt(self, name: str, version: int) -> None:
        self._changed(name)
        for key in (tag("corrupt"), tag("corrupt_reason")):
            try:
                self.registry.delete_model_version_tag(name, str(version), key)
            except MlflowException as exc:
                if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                    raise

    @_translated("tag the version")
    def set_version_tag(self, name: str, version: int, key: str, value: str) -> None:
        self._changed(name)
        self.registry.set_model_version_tag(name, str(version), key, str(value))

    def set_best(self, name: str, version: int) -> None:
        self.set_alias(name, BEST_ALIAS, version)

    def mark_corrupt(self, name: str, version: int, reason: str) -> None:
        self._changed(name)
        try:
            self.registry.set_model_version_tag(name, str(version), tag("corrupt"), "true")
            self.registry.set_model_version_tag(name, str(version), tag("corrupt_reason"), reason[:4000])
        except Exception as exc:  # noqa: BLE001 - the caller goes on with the next version either way
            log.warning("could not tag %s v%s as corrupt: %s", name, version, describe_store_error(exc))

    @_translated("delete the version")
    def delete_version(self, info: VersionInfo) -> None:
        """Delete the registry entry of a version (its artifacts stay: see `delete_artifacts`). A version
        another process deleted first counts as deleted."""
        self._changed(info.name)
        try:
            self.registry.delete_model_version(info.name, str(info.version))
        except MlflowException as exc:
            if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                raise

    @_translated("delete the checkpoint's artifacts")
    def delete_artifacts(self, info: VersionInfo) -> None:
        """Delete a version's artifact directory. Only a directory under the checkpoints folder of the
        version's own run is ever removed; any other source is refused and left alone."""
        if not info.run_id:
            raise StoreError(f"{info.name} v{info.version} names no run, so its artifacts {info.source} are not "
                             "ours to delete; remove them by hand if they are unused.")
        root = self.artifact_uri(info.run_id)
        if not info.source.startswith(f"{root}/{CHECKPOINTS_DIR}/") or ".." in info.source[len(root):].split("/"):
            raise StoreError(f"{info.name} v{info.version} has its artifacts at {info.source}, outside the "
                             f"checkpoints of run {info.run_id}; they are left alone.")
        relative = info.source[len(root) + 1:]
        local_root = _local_path(root)
        if local_root is not None:
            shutil.rmtree(local_root / relative, ignore_errors=True)
            return
        repository = get_artifact_repository(root, tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        repository.delete_artifacts(relative)

    @_translated("read the run")
    def run_summary(self, run_id: str) -> RunSummary | None:
        """Status, tags and latest metrics of a run (None when it was deleted)."""
        try:
            run = self.client.get_run(run_id)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return RunSummary(run.info.status, dict(run.data.tags), dict(run.data.metrics))

    @_translated("read the metric history")
    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float, int]]:
        """(step, value, timestamp_ms) of every value of `key` logged to the run."""
        return [(m.step, m.value, m.timestamp) for m in self.client.get_metric_history(run_id, key)]

    @_translated("read the alias moves")
    def alias_moves(self, name: str) -> list[Any]:
        """Operator alias moves recorded as registered-model tags (legacy.alias_log), oldest first."""
        from mlflow_persist._store.alias_log import alias_moves

        return alias_moves(self.client, name)

    @_translated("list the registered models")
    def managed_models(self, prefix: str = "") -> list[str]:
        """Every registered model whose name starts with `prefix`, sorted (every page of the listing)."""
        names: list[str] = []
        token = None
        while True:
            page = self.client.search_registered_models(max_results=1000, page_token=token)
            names.extend(m.name for m in page if m.name.startswith(prefix))
            token = page.token
            if not token:
                break
        return sorted(names)

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
            except Exception as exc:  # noqa: BLE001
                if is_unreachable(exc):  # transient: the bytes may be fine, so nothing is tagged
                    raise translate(exc, f"download {info.name} v{info.version}") from None
                raise CheckpointCorruptError(
                    f"The artifacts of {info.name} v{info.version} cannot be downloaded ({describe_store_error(exc)})."
                ) from None
            yield Path(local)

    @_translated("load the checkpoint")
    def load_version(self, info: VersionInfo) -> CheckpointState:
        """Download, verify against the checksum recorded at registration, and load with weights_only=True."""
        with self.checkpoint_dir(info) as directory:
            state = read_checkpoint_dir(directory, expected=info.digest)
        state.name, state.version = info.name, info.version
        state.category = info.category if info.category != "unknown" else state.category
        return state

    # ------------------------------------------------------------------------------------- misc

    def _choose_lock_dir(self) -> Path:
        """Beside an sqlite store (every process using it shares the lock); for a server, a private per-user
        directory (machine-local: there `best` is kept by the convergent protocol, not by this lock)."""
        db_dir = _sqlite_dir(self.tracking_uri)
        if db_dir is not None:
            return db_dir / ".mlflow_persist_locks"
        digest = hashlib.sha256(self.tracking_uri.encode()).hexdigest()[:16]
        return user_cache_dir("locks", digest)

    def lock(self, key: str, timeout: float = 120.0) -> FileLock:
        """A cross-process lock for `key` (a file lock next to a local store; machine-local for a server)."""
        self._lock_dir.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
        return FileLock(str(self._lock_dir / f"{safe}.lock"), timeout=timeout)

    def checkpoint_disk_path(self, run_id: str | None = None) -> Path | None:
        """The local disk that receives checkpoints (for free-space checks): the run's artifact directory,
        else the directory of an sqlite store; None when checkpoints leave this machine."""
        if run_id is not None:
            local = self.local_artifact_dir(run_id)
            if local is not None:
                return durable_directory(local)
            return None
        db_dir = _sqlite_dir(self.tracking_uri)
        return db_dir if db_dir is not None and db_dir.exists() else None

    @staticmethod
    def _to_info(mv: Any) -> VersionInfo:
        return VersionInfo(
            name=mv.name, version=int(mv.version), source=mv.source, run_id=mv.run_id,
            tags=dict(mv.tags or {}), aliases=list(getattr(mv, "aliases", []) or []),
            creation_timestamp_ms=mv.creation_timestamp, description=getattr(mv, "description", None) or None,
        )


def _registry_client(client: MlflowClient) -> Any:
    """MLflow's model-registry client under `MlflowClient`. `MlflowClient` checks before every registry
    write that the model is not a prompt, one more round trip each time; the models written here are ours
    (created with the `managed` tag). Falls back to `MlflowClient` where this MLflow lacks the inner client."""
    try:
        return client._get_registry_client()
    except Exception:  # noqa: BLE001 - a private API: any change means the public client
        return client


def _newest_mtime(path: Path) -> float:
    """The latest modification time of a directory and the files directly in it (0 when it vanished)."""
    try:
        times = [path.stat().st_mtime]
        if path.is_dir():
            times += [child.stat().st_mtime for child in path.iterdir()]
    except OSError:
        return 0.0
    return max(times)
