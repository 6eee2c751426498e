"""Shared fixtures: a pre-migrated MLflow sqlite store copied per test (creating one costs ~9 s), a real
`mlflow server` on a free loopback port for the server variants (one per test session, that is per xdist
worker), pre-imported Pythons to fork test subprocesses from (`zygote`), and `soak_count`, the trial counts of
the long trials (`make soak` multiplies them)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
os.environ.pop("MLFLOW_TRACKING_URI", None)
# The persistence worker process (worker_process="auto" for an MLflow store on two or more cores) costs its own
# interpreter start, seconds of CPU, per Persistence; the suite makes hundreds. Tests of it and of the user's
# paths that must include it (the trading CLI end to end, the main-job benchmark) ask for it themselves.
os.environ.setdefault("MLFLOW_PERSIST_WORKER_PROCESS", "off")

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from store_support import copy_template_store, reset_server_store  # noqa: E402
from zygote import Zygote, Zygotes  # noqa: E402

SOAK_FACTOR = int(os.environ.get("MLFLOW_PERSIST_SOAK_FACTOR", "1"))


def soak_count(knob: str, default: int) -> int:
    """A long trial's count: environment variable `knob` (else `default`, the count CI runs) times
    MLFLOW_PERSIST_SOAK_FACTOR (default 1; `make soak` sets 10)."""
    return int(os.environ.get(knob, default)) * SOAK_FACTOR


@pytest.fixture(name="soak_count", scope="session")
def soak_count_fixture() -> Callable[[str, int], int]:
    """`soak_count(knob, default)` for the tests marked `soak` (see the function of that name)."""
    return soak_count


@pytest.fixture(scope="session")
def zygotes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zygotes]:
    found = Zygotes(tmp_path_factory.mktemp("zygotes"))
    try:
        yield found
    finally:
        found.stop()


@pytest.fixture(scope="session")
def zygote(zygotes: Zygotes) -> Zygote:
    """A pre-imported Python (torch, MLflow, pandas, pyarrow) to fork test subprocesses from: `zygote.popen()`
    / `zygote.run()` in place of `subprocess.Popen()` / `run()` for a `python ...` command line."""
    return zygotes.get()


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
    """An empty, migrated MLflow sqlite store (the migrations take seconds): tests copy it. Under xdist the workers
    of one run share it (made once, in the run's own temp directory, under a file lock); it is never written to."""
    from filelock import FileLock
    from mlflow import MlflowClient

    if os.environ.get("PYTEST_XDIST_WORKER"):
        directory = tmp_path_factory.getbasetemp().parent / "template"  # this run's, shared by its workers
        directory.mkdir(exist_ok=True)
    else:
        directory = tmp_path_factory.mktemp("template")
    path = directory / "mlflow.db"
    with FileLock(str(directory / "mlflow.db.lock")):
        if not path.exists():
            staging = directory / "staging.db"
            staging.unlink(missing_ok=True)
            MlflowClient(tracking_uri=f"sqlite:///{staging}").search_experiments()
            staging.rename(path)
    return path


@pytest.fixture
def sqlite_uri(tmp_path: Path, template_db: Path) -> str:
    """A fresh, empty, already-migrated embedded store in this test's temp dir."""
    target = tmp_path / "store" / "mlflow.db"
    target.parent.mkdir()
    shutil.copy(template_db, target)
    return f"sqlite:///{target}"


@pytest.fixture
def quick_marker_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cut whose completion marker cannot be written is retried every 0.05 s instead of every second (the
    number of tries and what happens after them stay as they are): for tests of what the retries lead to."""
    from mlflow_persist._runtime import cut_keeper

    monkeypatch.setattr(cut_keeper, "MARK_RETRY_SECONDS", 0.05)


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


# Roughly how long each long module takes under `make test` (seconds, measured on 2 cores): a scheduling hint
# only, so that the longest modules start first. A module missing here is guessed from its marks.
MODULE_SECONDS = {
    "powerloss/test_power_loss.py": 65,
    "reliability/test_concurrent_writers.py": 50,
    "ops/test_ops_browser.py": 80,
    "ops/test_s3.py": 80,
    "integrations/test_transformers.py": 65,
    "reliability/test_fault_matrix.py": 90,
    "ops/test_ops_servers.py": 55,
    "trading/test_e2e_cli.py": 55,
    "integrations/test_ddp.py": 90,
    "reliability/test_server_outage.py": 45,
    "trading/test_exact_resume.py": 45,
    "integrations/test_sb3.py": 95,
    "integrations/test_sharded.py": 35,
    "reliability/test_kill_during_save.py": 45,
    "ops/test_workers.py": 43,
    "runtime/test_crash.py": 42,
    "episodes/test_e2e_trading.py": 42,
    "store/test_store_behaviour.py": 40,
    "runtime/test_persistence.py": 36,
    "integrations/test_lightning.py": 33,
    "ops/test_ops_shared_server.py": 28,
    "runtime/test_exit_paths.py": 28,
    "store/test_memory_store.py": 27,
    "trading/test_console.py": 26,
    "legacy/test_legacy_cli.py": 25,
    "ops/test_wheel.py": 45,
    "ops/test_bench_main_job.py": 15,
    "cli/test_cli_contract.py": 14,
    "runtime/test_truthful_close.py": 11,
    "trading/test_models_learn.py": 11,
    "reliability/test_retention_race.py": 10,
    "trading/test_learning_evidence.py": 10,
    "cli/test_cli.py": 9,
    "runtime/test_process_effects.py": 9,
    "trading/test_orchestrator.py": 9,
}


def _guess_seconds(item: pytest.Item) -> float:
    if item.get_closest_marker("soak"):
        return 40
    if item.get_closest_marker("slow"):
        return 20 if any(item.get_closest_marker(m) for m in ("server", "postgres", "browser")) else 10
    return 1


def _longest_first(items: list[pytest.Item]) -> None:
    """Order the modules longest first, keeping the order inside a module: under xdist (`--dist loadscope`
    without reordering) a module runs on one worker, the long ones start first and the short ones fill the end,
    so both workers finish together. Every xdist worker computes the same order."""
    seconds: dict[object, float] = {}
    for item in items:
        module = item.path.relative_to(TESTS_DIR).as_posix() if item.path.is_relative_to(TESTS_DIR) else ""
        guess = MODULE_SECONDS.get(module, _guess_seconds(item))
        seconds[item.path] = max(seconds.get(item.path, 0.0), guess)
    position = {id(item): index for index, item in enumerate(items)}
    items.sort(key=lambda item: (-seconds[item.path], position[id(item)]))


_ALL_SLOW = re.compile(r"^pytestmark = .*\bpytest\.mark\.slow\b", re.MULTILINE)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """`make test-fast` (`-m "not slow"`) does not even import a module whose every test is slow (its
    `pytestmark` says so): importing the frameworks some of them need takes seconds per worker."""
    if config.getoption("markexpr", "") != "not slow" or collection_path.suffix != ".py":
        return None
    if not collection_path.name.startswith("test_"):
        return None
    try:
        return bool(_ALL_SLOW.search(collection_path.read_text(encoding="utf-8"))) or None
    except OSError:
        return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests need hardware no CI machine here has: without CUDA they are deselected, and the summary
    line counts them, rather than skipped (which CI would rightly fail). A soak test's time limit grows with
    MLFLOW_PERSIST_SOAK_FACTOR like its trial counts."""
    import torch

    _longest_first(items)
    if SOAK_FACTOR != 1:
        for item in items:
            if item.get_closest_marker("soak"):
                limit = item.get_closest_marker("timeout")
                base = limit.args[0] if limit is not None and limit.args else config.getoption("timeout", 600)
                item.add_marker(pytest.mark.timeout(float(base or 600) * SOAK_FACTOR), append=False)

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
