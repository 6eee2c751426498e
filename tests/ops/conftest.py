"""Fixtures for the operations tests: real mlflow servers, PostgreSQL, moto's S3 server and headless chromium.

A helper whose binary is missing skips its tests with the reason, unless
MLFLOW_PERSIST_REQUIRE_SERVICES=1 (set by .ci/run), where a missing service is a failure.
Every process a fixture starts is stopped at teardown, also when the test failed, and
its log tail is printed then (pytest shows it for failing tests).
"""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

_TESTS_DIR = str(Path(__file__).resolve().parents[1])
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

from servers import Chromium, MlflowServer, MotoServer, PostgresServer, TcpOutageProxy, available  # noqa: E402


@pytest.fixture(autouse=True)
def _ops_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Telemetry off, and a dead server fails a client call in seconds instead of ~4 minutes."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def _postgres() -> Iterator[PostgresServer]:
    pg = available(PostgresServer)
    with pg:
        try:
            yield pg
        finally:
            print(f"--- postgres log tail ({pg.log_path}):\n{pg.log_tail()}")


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresServer]:
    """One PostgreSQL cluster per test session (per xdist worker): an initdb and a start cost seconds."""
    yield from _postgres()


@pytest.fixture
def postgres(postgres_cluster: PostgresServer) -> PostgresServer:
    """A fresh, empty database of this test's own on the session's cluster (`uri` names it)."""
    return postgres_cluster.create_database(f"test_{uuid.uuid4().hex[:12]}")


def _server(backend_uri: str, tmp_path: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(backend_uri, tmp_path / "artifacts", log_path=tmp_path / "mlflow-server.log")
    with server:
        try:
            yield server
        finally:
            print(f"--- mlflow server log tail ({server.log_path}):\n{server.log_tail()}")


@pytest.fixture
def sqlite_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[MlflowServer]:
    """`mlflow server` on a fresh sqlite store with proxied artifacts under tmp_path.

    Starts from the session's pre-migrated template database (tests/conftest.py) when
    there is one: migrating a new sqlite store costs ~9 s of the server's start."""
    db = tmp_path / "mlflow.db"
    try:
        shutil.copy(request.getfixturevalue("template_db"), db)
    except pytest.FixtureLookupError:
        pass
    yield from _server(f"sqlite:///{db}", tmp_path)


@pytest.fixture
def postgres_server(postgres: PostgresServer, tmp_path: Path) -> Iterator[MlflowServer]:
    """`mlflow server` on a private PostgreSQL database with proxied artifacts under tmp_path."""
    yield from _server(postgres.uri, tmp_path)


@pytest.fixture
def chromium(tmp_path: Path) -> Iterator[Chromium]:
    browser = available(lambda: Chromium(log_path=tmp_path / "chromium.log"))
    with browser:
        yield browser


@pytest.fixture(scope="module")
def module_postgres(postgres_cluster: PostgresServer) -> PostgresServer:
    """The session's cluster, for a module that makes its own databases on it (`create_database`)."""
    return postgres_cluster


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    """moto's standalone S3 server on loopback (in memory, dummy credentials), one per test module; skips
    without `moto[server]` and `boto3`."""
    server = available(lambda: MotoServer(log_path=tmp_path_factory.mktemp("moto") / "moto.log"))
    with server:
        try:
            yield server
        finally:
            print(f"--- moto log tail ({server.log_path}):\n{server.log_tail(2000)}")


@pytest.fixture(scope="module")
def moto_proxy(moto: MotoServer) -> Iterator[TcpOutageProxy]:
    """A cuttable TCP proxy in front of `moto`: S3 clients pointed at `moto_proxy.uri` lose the object store
    while it is cut (moto loses its buckets when it stops, so the store is cut off instead of restarted)."""
    with TcpOutageProxy(moto.port) as proxy:
        yield proxy
