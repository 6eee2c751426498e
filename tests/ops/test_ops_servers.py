"""A real `mlflow server` on sqlite and on PostgreSQL: a client over HTTP creates a run,
logs a directory artifact, registers versions with the `best` alias, downloads through
`models:/<name>@best`, and everything survives a server restart on the same port."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from ops_support import populate_plain
from servers import MlflowServer


def _roundtrip(server: MlflowServer, tmp_path: Path) -> None:
    client = MlflowClient(server.uri)
    data = populate_plain(client, tmp_path / "work", model="dqn", n_versions=3)

    assert [v.version for v in client.search_model_versions("name='dqn'", order_by=["version_number ASC"])] == [
        "1",
        "2",
        "3",
    ]
    assert client.get_model_version_by_alias("dqn", "best").version == data.best_version == "3"
    run = client.get_run(data.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/"), "artifacts must be proxied by the server"
    listed = {f.path for f in client.list_artifacts(data.run_id, "checkpoints")}
    assert len(listed) == 3

    mlflow.set_tracking_uri(server.uri)
    try:
        best_dir = Path(mlflow.artifacts.download_artifacts("models:/dqn@best", dst_path=str(tmp_path / "dl-best")))
        latest_dir = Path(
            mlflow.artifacts.download_artifacts("models:/dqn/latest", dst_path=str(tmp_path / "dl-latest"))
        )
    finally:
        mlflow.set_tracking_uri(None)
    assert (best_dir / "checkpoint.pt").read_bytes() == bytes(range(256)) * 192
    assert sorted(p.name for p in latest_dir.iterdir()) == ["checkpoint.pt", "manifest.json"]
    # The artifact really lies under --artifacts-destination on the server's disk.
    assert len(list((tmp_path / "artifacts").rglob("checkpoint.pt"))) == 3

    server.restart()
    again = MlflowClient(server.uri)
    assert again.get_model_version_by_alias("dqn", "best").version == "3"
    assert [m.value for m in again.get_metric_history(data.run_id, "loss")][-1] == pytest.approx(1 / 6.9)


@pytest.mark.slow
@pytest.mark.server
def test_mlflow_server_on_sqlite(sqlite_server: MlflowServer, tmp_path: Path) -> None:
    _roundtrip(sqlite_server, tmp_path)


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.postgres
def test_mlflow_server_on_postgres(postgres_server: MlflowServer, tmp_path: Path) -> None:
    assert postgres_server.backend_store_uri.startswith("postgresql+psycopg2://")
    _roundtrip(postgres_server, tmp_path)


@pytest.mark.slow
@pytest.mark.server
def test_server_kill_and_outage_restart_keep_data(sqlite_server: MlflowServer, tmp_path: Path) -> None:
    """`kill()` is a crash; the client fails fast while the server is down; restart serves the same data."""
    client = MlflowClient(sqlite_server.uri)
    data = populate_plain(client, tmp_path / "work", model="cnn", n_versions=1)
    sqlite_server.kill()
    assert not sqlite_server.running() and not sqlite_server.healthy()
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_registered_model("cnn")
    sqlite_server.restart(down_s=1)
    assert sqlite_server.healthy()
    assert client.get_model_version_by_alias("cnn", "best").version == data.best_version
