"""The MLflow store's connection: clients, the experiment, cross-process locks and the registry's change counter."""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path
from typing import Any

from filelock import FileLock
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlflow_persist._format.atomic import user_cache_dir
from mlflow_persist._observe.logs import package_logger
from mlflow_persist._policy.versions import VersionInfo
from mlflow_persist._store.artifact_root import (
    ARTIFACT_ROOT_TAG,
    BESIDE_STORE,
    DEFAULT_ROOT_NAME,
    ArtifactRoot,
    artifact_root,
)
from mlflow_persist._store.mlflow_env import make_sqlite_commits_durable
from mlflow_persist._store.sqlite import create_store_file, sqlite_dir, sqlite_file
from mlflow_persist._store.translate import local_path
from mlflow_persist.errors import StoreUnavailableError, describe_store_error, redact_credentials

__all__ = ["EXPERIMENT_KIND_TAG", "MlflowConnection"]

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"

log = package_logger("mlflow_persist.store")


#: Database URIs MLflow opens itself: it retries a refused connection 10 times over about 100 s first.
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql")
DATABASE_PROBE_ATTEMPTS = 3
DATABASE_CONNECT_TIMEOUT_SECONDS = 5


def probe_database(tracking_uri: str, description: str) -> None:
    """For a database tracking URI, connect once (3 tries within seconds) before MLflow does, so a database
    that is down, refuses the login or does not exist is reported in seconds instead of after MLflow's own
    ~100 s of engine retries. Other URIs are left to MLflow."""
    scheme = tracking_uri.split(":", 1)[0].split("+", 1)[0].lower()
    if scheme not in DATABASE_SCHEMES:
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool
    from tenacity import Retrying, stop_after_attempt, wait_exponential

    connect_args = {"connect_timeout": DATABASE_CONNECT_TIMEOUT_SECONDS} if scheme in ("postgresql", "mysql") else {}
    try:
        engine = sqlalchemy.create_engine(tracking_uri, connect_args=connect_args, poolclass=NullPool)
    except Exception as exc:  # noqa: BLE001 - a missing driver or a malformed URI
        raise StoreUnavailableError(
            f"The MLflow store at {description} cannot be used ({describe_store_error(exc)}); check the tracking "
            "URI and that its database driver is installed."
        ) from None
    try:
        for attempt in Retrying(
            stop=stop_after_attempt(DATABASE_PROBE_ATTEMPTS),
            wait=wait_exponential(multiplier=0.2, max=1.0),
            reraise=True,
        ):
            with attempt, engine.connect():
                pass
    except Exception as exc:  # noqa: BLE001 - refused, timed out, login or database missing alike
        raise StoreUnavailableError(
            f"The MLflow store at {description} cannot be used ({describe_store_error(exc)}); check the tracking "
            "URI and that the database server is running and accepts this login."
        ) from None
    finally:
        engine.dispose()


class MlflowConnection:
    """MLflow access for one tracking URI and experiment: what every part of `MlflowStore` builds on."""

    def __init__(
        self, tracking_uri: str, experiment_name: str = "mlflow-persist", artifact_location: str | None = None
    ) -> None:
        self.tracking_uri = tracking_uri
        self.description = redact_credentials(tracking_uri)
        db_dir = sqlite_dir(tracking_uri)
        if db_dir is not None:
            db_file = db_dir / Path(tracking_uri[len("sqlite:///") :]).name
            make_sqlite_commits_durable(db_file)
            create_store_file(db_file)
        probe_database(tracking_uri, self.description)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        self.is_remote = self.is_remote_uri(tracking_uri)
        # Only an embedded sqlite store is reached by one machine, so only there does our file lock serialize
        # every writer; elsewhere registration and `best` use the lock-free convergent strategy.
        self.lock_is_shared = tracking_uri.startswith("sqlite:")
        self._lock_dir = self._choose_lock_dir()
        self._artifact_uris: dict[str, str] = {}
        self._known_models: set[str] = set()
        self._generations: dict[str, int] = {}
        self.artifact_root: ArtifactRoot | None = None  # the embedded store's artifacts where they are now
        self.experiment_id = self._ensure_experiment(experiment_name, artifact_location)

    @functools.cached_property
    def registry(self) -> Any:
        """The registry client, made at the first registry call (as MLflow makes it), not at start-up."""
        return _registry_client(self.client)

    @staticmethod
    def is_remote_uri(tracking_uri: str) -> bool:
        return tracking_uri.startswith(("http://", "https://"))

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
            self._locate_artifacts(experiment)
            return str(experiment.experiment_id)
        db_dir = sqlite_dir(self.tracking_uri)
        tags = {EXPERIMENT_KIND_TAG: "custom_model_development"}
        if artifact_location is None and db_dir is not None:
            artifact_location = (db_dir / DEFAULT_ROOT_NAME).as_uri()
            tags[ARTIFACT_ROOT_TAG] = BESIDE_STORE
        try:
            self.client.create_experiment(name, artifact_location=artifact_location, tags=tags)
        except MlflowException:
            pass  # another process created it between our lookup and our create
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            raise StoreUnavailableError(f"The experiment {name!r} could not be created in {self.description}.")
        self._locate_artifacts(experiment)
        return str(experiment.experiment_id)

    def _locate_artifacts(self, experiment: Any) -> None:
        db_file = sqlite_file(self.tracking_uri)
        if db_file is None:
            return
        recorded = local_path(experiment.artifact_location or "")
        tagged = (experiment.tags or {}).get(ARTIFACT_ROOT_TAG) == BESIDE_STORE
        self.artifact_root = artifact_root(db_file, recorded, tagged)
        if self.artifact_root.recorded is not None:
            log.info(
                "the store's folder moved: artifacts recorded under %s are read and written under %s",
                self.artifact_root.recorded,
                self.artifact_root.actual,
            )

    def relocate_uri(self, uri: str) -> str:
        """A recorded artifact URI as it is now (the embedded store's folder may have moved)."""
        path = local_path(uri) if self.artifact_root is not None else None
        if path is None or self.artifact_root is None:
            return uri
        moved = self.artifact_root.relocate(path)
        return uri if moved == path else moved.as_uri()

    def registry_generation(self, name: str) -> int:
        return self._generations.get(name, 0)

    def _changed(self, name: str) -> None:
        self._generations[name] = self._generations.get(name, 0) + 1

    def _choose_lock_dir(self) -> Path:
        """Beside an sqlite store (every process using it shares the lock); for a server, a private per-user
        directory (machine-local: there `best` is kept by the convergent protocol, not by this lock)."""
        db_dir = sqlite_dir(self.tracking_uri)
        if db_dir is not None:
            return db_dir / ".mlflow_persist_locks"
        digest = hashlib.sha256(self.tracking_uri.encode()).hexdigest()[:16]
        return user_cache_dir("locks", digest)

    def lock(self, key: str, timeout: float = 120.0) -> FileLock:
        """A cross-process lock for `key` (a file lock next to a local store; machine-local for a server)."""
        self._lock_dir.mkdir(parents=True, exist_ok=True)
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", key)
        return FileLock(str(self._lock_dir / f"{safe}.lock"), timeout=timeout)

    def _to_info(self, mv: Any) -> VersionInfo:
        return VersionInfo(
            name=mv.name,
            version=int(mv.version),
            source=self.relocate_uri(mv.source),
            run_id=mv.run_id,
            tags=dict(mv.tags or {}),
            aliases=list(getattr(mv, "aliases", []) or []),
            creation_timestamp_ms=mv.creation_timestamp,
            description=getattr(mv, "description", None) or None,
        )


def _registry_client(client: MlflowClient) -> Any:
    """MLflow's model-registry client under `MlflowClient`. `MlflowClient` checks before every registry
    write that the model is not a prompt, one more round trip each time; the models written here are ours
    (created with the `managed` tag). Falls back to `MlflowClient` where this MLflow lacks the inner client."""
    try:
        return client._get_registry_client()
    except Exception:  # noqa: BLE001 - a private API: any change means the public client
        return client
