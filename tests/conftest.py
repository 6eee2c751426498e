"""Shared fixtures: a pre-migrated MLflow sqlite store copied per test (creating one costs ~9 s),
and a real `mlflow server` on a free loopback port for the server variants."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from store_support import copy_template_store, reset_server_store  # noqa: E402


@pytest.fixture(autouse=True)
def restore_package_logger() -> Iterator[None]:
    """`cli.main()` run in-process installs a handler bound to the captured stderr and stops propagation;
    undo that after each test so later tests neither write to a closed stream nor lose their log records."""
    logger = logging.getLogger("mlflow_persist")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


@pytest.fixture(autouse=True)
def isolated_outbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own durable outbox (used with remote stores) instead of ~/.cache."""
    path = tmp_path / "outbox"
    monkeypatch.setenv("MLFLOW_PERSIST_OUTBOX_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def sqlite_uri(tmp_path: Path, template_db: Path) -> str:
    """A fresh, empty, already-migrated embedded store in this test's temp dir."""
    target = tmp_path / "store" / "mlflow.db"
    target.parent.mkdir()
    shutil.copy(template_db, target)
    return f"sqlite:///{target}"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory, template_db: Path) -> Iterator[object]:
    """A real `mlflow server` process (sqlite backend, proxied artifacts) on a free loopback port."""
    from servers import MlflowServer

    root = tmp_path_factory.mktemp("server")
    backend = copy_template_store(template_db, root / "backend")
    server = MlflowServer(backend_store_uri=backend, artifacts_destination=str(root / "artifacts"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["sqlite", pytest.param("server", marks=[pytest.mark.server, pytest.mark.slow])])
def tracking_uri(request: pytest.FixtureRequest, tmp_path: Path, template_db: Path) -> str:
    """Both deployments: the embedded store and a real `mlflow server` over HTTP."""
    if request.param == "sqlite":
        return copy_template_store(template_db, tmp_path / "store")
    server = request.getfixturevalue("mlflow_server")
    reset_server_store(server.uri)  # type: ignore[attr-defined]
    return server.uri  # type: ignore[attr-defined]


REQUIRE_SERVICES = os.environ.get("MLFLOW_PERSIST_REQUIRE_SERVICES") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests need hardware no CI machine here has: without CUDA they are deselected, and the summary
    line counts them, rather than skipped (which CI would rightly fail)."""
    import torch

    if torch.cuda.is_available():
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]


def _as_failure(report: pytest.CollectReport | pytest.TestReport) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (
        f"skipped, but MLFLOW_PERSIST_REQUIRE_SERVICES=1 (CI) allows no skip: {reason}; install "
        "what it needs (.ci/run does) or run without MLFLOW_PERSIST_REQUIRE_SERVICES"
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """In CI every skip is a failure: a missing server, an import error behind importorskip, a tmpfs that
    cannot be mounted. A test that did not run proves nothing."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if REQUIRE_SERVICES and report.skipped and not hasattr(report, "wasxfail"):
        _as_failure(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if REQUIRE_SERVICES and report.skipped:
        _as_failure(report)
