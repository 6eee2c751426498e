"""MLflow's process environment, set in this one place: telemetry off (no machine here reaches the internet), the
HTTP client's retry defaults for a tracking server, and durable commits on an embedded sqlite store.

`mlflow_persist._store` applies `apply_mlflow_env_defaults()` when it is first imported, before any module of
the package imports MLflow; `ProcessEffects` (in `_runtime.process_effects`) decides about the others.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from mlflow_persist._observe.logs import package_logger

__all__ = [
    "HTTP_RETRY_DEFAULTS",
    "MLFLOW_ENV_DEFAULTS",
    "apply_http_retry_defaults",
    "apply_mlflow_env_defaults",
    "make_sqlite_commits_durable",
]

log = package_logger("mlflow_persist")

MLFLOW_ENV_DEFAULTS = {"MLFLOW_DISABLE_TELEMETRY": "true"}

# MLflow's own defaults retry an unreachable server for about 4 minutes per request. The outbox retries
# registration itself and operators want an answer, so both the library and the CLI use these shorter ones.
HTTP_RETRY_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}


def apply_mlflow_env_defaults() -> None:
    """Set MLflow's environment defaults of this package; a user's own settings win."""
    for key, value in MLFLOW_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


def apply_http_retry_defaults() -> None:
    for key, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)


_durable_sqlite_files: set[str] = set()
_listening = False
_listen_lock = threading.Lock()


def make_sqlite_commits_durable(db_file: Path) -> None:
    """Every SQLAlchemy connection this process opens to `db_file` runs with `synchronous=EXTRA`."""
    global _listening
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    with _listen_lock:
        _durable_sqlite_files.add(os.path.realpath(db_file))
        if not _listening:
            event.listen(Engine, "connect", _on_connect)
            _listening = True


def _on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    if type(dbapi_connection).__module__ != "sqlite3":
        return
    try:
        rows = dbapi_connection.execute("PRAGMA database_list").fetchall()
        main = next((row[2] for row in rows if row[1] == "main"), "")
        if main and os.path.realpath(main) in _durable_sqlite_files:
            dbapi_connection.execute("PRAGMA synchronous=EXTRA")
    except Exception as exc:  # noqa: BLE001 - never break a connection over durability tuning
        log.warning("could not set synchronous=EXTRA on the sqlite store: %s", exc)
