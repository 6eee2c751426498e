"""The MLflow UI served by a real `mlflow server`, opened in headless chromium: the registered
model page shows the versions and the `@ best` alias, the run page draws the loss chart.
Screenshots stay in the test's tmp_path.

Both tests use the module's server and browser (a server costs 6-13 s to start); the first one deletes the model
it registered, so the second sees only what its trading run registers."""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient
from ops_support import check_model_page, check_run_chart, populate_plain
from servers import Chromium, MlflowServer, available, subprocess_env
from zygote import Zygote


@pytest.fixture(scope="module")
def ui_server(tmp_path_factory: pytest.TempPathFactory, template_db: Path) -> Iterator[MlflowServer]:
    """The module's `mlflow server` on sqlite (from the session's pre-migrated template), proxied artifacts."""
    home = tmp_path_factory.mktemp("ui-server")
    shutil.copy(template_db, home / "mlflow.db")
    server = MlflowServer(f"sqlite:///{home / 'mlflow.db'}", home / "artifacts", log_path=home / "mlflow-server.log")
    server.artifacts_dir = home / "artifacts"  # type: ignore[attr-defined]
    with server:
        try:
            yield server
        finally:
            print(f"--- mlflow server log tail ({server.log_path}):\n{server.log_tail()}")


@pytest.fixture(scope="module")
def ui_browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    browser = available(lambda: Chromium(log_path=tmp_path_factory.mktemp("chromium") / "chromium.log"))
    with browser:
        yield browser


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.browser
def test_ui_shows_versions_best_alias_and_loss_chart(
    ui_server: MlflowServer, ui_browser: Chromium, tmp_path: Path
) -> None:
    sqlite_server, chromium = ui_server, ui_browser
    model = f"plain-{uuid.uuid4().hex[:8]}"
    client = MlflowClient(sqlite_server.uri)
    try:
        _check_plain_ui(sqlite_server, chromium, client, model, tmp_path)
    finally:
        client.delete_registered_model(model)  # the module's next test counts the registered models


def _check_plain_ui(sqlite_server: MlflowServer, chromium: Chromium, client: MlflowClient, model: str,
                    tmp_path: Path) -> None:  # fmt: skip
    data = populate_plain(client, tmp_path / "work", model=model, n_versions=3)

    text = check_model_page(chromium, sqlite_server.uri, model, data.versions, tmp_path / "model-page.png")
    assert "Aliases" in text
    # The alias sits on the row of the best version: its line comes before the next version's.
    best_row = text.index("@ best")
    rows = sorted((text.index(f"Version {v}"), v) for v in data.versions)
    owner = max((pos, v) for pos, v in rows if pos < best_row)[1]
    assert owner == data.best_version

    points = check_run_chart(chromium, sqlite_server.uri, data.experiment_id, data.run_id, "loss",
                             tmp_path / "run-chart.png", min_points=10)  # fmt: skip
    assert points >= 10
    for shot in ("model-page.png", "run-chart.png"):
        png = (tmp_path / shot).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 10_000


TRADING_MODELS = ("dqn", "cnn", "cob_rl", "extrema")
TRADING_STEPS = 200


def _tradingavailable() -> bool:
    try:
        import mlflow_persist
        import mlflow_persist.trading.app  # noqa: F401

        return hasattr(mlflow_persist, "Persistence")
    except ImportError:
        return False


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.browser
@pytest.mark.skipif(not _tradingavailable(), reason="the core and the trading system are not built yet")
def test_ui_after_trading_run(ui_server: MlflowServer, ui_browser: Chromium, tmp_path: Path, zygote: Zygote) -> None:
    """`mlflow-persist run --steps 200` against the server (forked from a pre-imported Python, tests/zygote.py);
    then the UI shows the four registered models, each model page the versions and `@ best`, and the dqn run page
    its loss chart."""
    sqlite_server, chromium = ui_server, ui_browser
    work = tmp_path / "trading"
    work.mkdir()
    cli = Path(sys.executable).with_name("mlflow-persist")
    proc = zygote.run(
        [str(cli), "run", "--steps", str(TRADING_STEPS), "--tracking-uri", sqlite_server.uri, "--no-progress"],
        capture_output=True, text=True, cwd=work, timeout=480, env=subprocess_env(),
    )  # fmt: skip
    (tmp_path / "trading.log").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stderr[-4000:]

    client = MlflowClient(sqlite_server.uri)
    chromium.navigate(f"{sqlite_server.uri}/#/models")
    chromium.wait_for_text("Registered Models", *TRADING_MODELS, timeout_s=90)
    chromium.screenshot(tmp_path / "models.png")
    for model in TRADING_MODELS:
        versions = [v.version for v in client.search_model_versions(f"name = '{model}'")]
        best = client.get_model_version_by_alias(model, "best")
        assert versions and best.version in versions, model
        # The descriptions, checked against the tags the versions carry (what training reported).
        assert best.description.startswith(
            f"performance \u00b7 step {best.tags['mlflow_persist.step']} \u00b7 {best.tags['mlflow_persist.monitor']} "
        ), best.description
        assert "written by mlflow-persist" in client.get_registered_model(model).description
        # The versions table shows the start of each description (the UI cuts it at 29 characters)...
        check_model_page(
            chromium,
            sqlite_server.uri,
            model,
            versions,
            tmp_path / f"model-{model}.png",
            texts=("written by mlflow-persist", best.description[:29]),
        )
        # ...and the version's own page all of it.
        chromium.navigate(f"{sqlite_server.uri}/#/models/{model}/versions/{best.version}")
        chromium.wait_for_text(best.description, timeout_s=60)
        chromium.screenshot(tmp_path / f"version-{model}.png")

    experiment = client.get_experiment_by_name("mlflow-persist")
    assert experiment is not None
    assert experiment.tags.get("mlflow.experimentKind") == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id], filter_string="tags.`mlflow_persist.run_key` = 'dqn'")
    assert len(runs) == 1
    history = client.get_metric_history(runs[0].info.run_id, "loss")
    assert len(history) >= 10
    points = check_run_chart(chromium, sqlite_server.uri, experiment.experiment_id, runs[0].info.run_id, "loss",
                             tmp_path / "dqn-loss-chart.png", min_points=10)  # fmt: skip
    assert points >= 10

    # Retention deleted versions over HTTP: their artifact directories must be gone from the server's disk too.
    registered = [m.name for m in client.search_registered_models()]  # the four models and the system state
    assert set(TRADING_MODELS) | {"system"} == set(registered)
    sources = {v.source.rsplit("/", 1)[-1] for m in registered for v in client.search_model_versions(f"name = '{m}'")}
    artifacts = sqlite_server.artifacts_dir / experiment.experiment_id  # type: ignore[attr-defined]
    on_disk = {p.name for p in artifacts.glob("*/artifacts/checkpoints/*") if p.is_dir()}
    assert on_disk - sources == set(), f"artifacts of deleted versions left on the server: {sorted(on_disk - sources)}"
