"""`track(run_id=...)`: a run another tool opened (a framework logger's) is the model's run, through a real
embedded MLflow store: the checkpoints, versions and metrics land in it, no run of the model's own is created,
its status stays its owner's after close(), and a restart with another run resumes from the newest version.
Also how the framework callbacks tell that a logger writes to the checkpoint store (`same_store`)."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest
import torch
from mlflow import MlflowClient

import mlflow_persist as mp
from mlflow_persist.integrations.common import same_store, store_identity
from mlflow_persist.testing import MemoryStore

RUN_KEY = "mlflow_persist.run_key"
REGISTERED_MODEL = "mlflow_persist.registered_model"


def _config(uri: str) -> mp.PersistConfig:
    return mp.PersistConfig(
        tracking_uri=uri,
        monitor="loss",
        periodic_every_steps=2,
        keep_best=1,
        keep_periodic=1,
        keep_final=1,
        log_system_metrics=False,
        min_free_disk_mb=0,
        min_free_disk_percent=0,
    )


def _model(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Linear(4, 1)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def _train(handle: mp.ModelHandle, model: torch.nn.Module, opt: torch.optim.Optimizer, losses: list[float]) -> None:
    for loss in losses:
        opt.zero_grad()
        model(torch.randn(2, 4)).pow(2).mean().backward()
        opt.step()
        handle.step(loss=loss)


def _logger_run(client: MlflowClient, tmp_path: Path, name: str) -> str:
    """A run as a logger opens it: in an experiment of its own, with its own artifact location."""
    experiment = client.get_experiment_by_name("logger")
    experiment_id = (
        experiment.experiment_id
        if experiment is not None
        else client.create_experiment("logger", artifact_location=(tmp_path / "logger-artifacts").as_uri())
    )
    return str(client.create_run(experiment_id, run_name=name).info.run_id)


def _all_runs(client: MlflowClient) -> list[object]:
    experiments = [e.experiment_id for e in client.search_experiments()]
    return list(client.search_runs(experiments))


def _local(uri: str) -> Path:
    return Path(unquote(urlparse(uri).path))


def test_without_logging_reported_metrics_the_run_gets_only_the_packages_own_metrics(
    sqlite_uri: str, tmp_path: Path
) -> None:
    """A framework logger that shares the run logs the training metrics itself: `log_reported_metrics=False`
    keeps step()'s metrics deciding saves (and `best`) without a second copy of each point in the run."""
    client = MlflowClient(sqlite_uri)
    logger_run = _logger_run(client, tmp_path, "logger-run")
    client.log_metric(logger_run, "loss", 1.0, step=1)  # what the logger itself logged
    model, opt = _model(0)
    config = _config(sqlite_uri).model_copy(update={"monitor_smoothing": "ema", "monitor_ema_alpha": 1.0})
    with mp.Persistence(config) as persist:
        handle = persist.track("net", model, optimizer=opt, run_id=logger_run, log_reported_metrics=False)
        _train(handle, model, opt, [1.0, 0.8, 0.9, 0.5])
        assert persist.flush(timeout=60)
        assert handle.best_value == 0.5
    assert [m.step for m in client.get_metric_history(logger_run, "loss")] == [1]  # the logger's point only
    assert [m.step for m in client.get_metric_history(logger_run, "loss_smoothed")] == [1, 2, 3, 4]
    assert client.get_metric_history(logger_run, "checkpoint/saves")
    best = client.get_model_version_by_alias("net", "best")
    assert best.tags["mlflow_persist.value"] == "0.5"


def test_the_adopted_run_holds_checkpoints_versions_and_metrics_and_keeps_its_owners_status(
    sqlite_uri: str, tmp_path: Path
) -> None:
    client = MlflowClient(sqlite_uri)
    logger_run = _logger_run(client, tmp_path, "logger-run")
    model, opt = _model(0)
    own_model, own_opt = _model(1)
    with mp.Persistence(_config(sqlite_uri)) as persist:
        handle = persist.track("net", model, optimizer=opt, run_id=logger_run)
        own = persist.track("own", own_model, optimizer=own_opt)  # beside it, a model with its own run
        assert handle.run_id == logger_run and handle.restore() is None
        _train(handle, model, opt, [1.0, 0.8, 0.9, 0.5])
        _train(own, own_model, own_opt, [1.0, 0.8])
        assert persist.flush(timeout=60)
        own_run = own.run_id

    versions = client.search_model_versions("name='net'")
    assert {v.tags["mlflow_persist.category"] for v in versions} >= {"performance", "final"}
    artifacts = client.get_run(logger_run).info.artifact_uri
    assert {v.run_id for v in versions} == {logger_run}
    assert all(v.source.startswith(f"{artifacts}/checkpoints/net-") for v in versions)
    assert all((_local(v.source) / "checkpoint.pt").is_file() for v in versions)

    run = client.get_run(logger_run)
    assert run.info.status == "RUNNING"  # close() left it to its owner
    assert run.data.tags[REGISTERED_MODEL] == "net" and RUN_KEY not in run.data.tags
    assert {"loss", "checkpoint/version", "checkpoint/saves"} <= set(run.data.metrics)
    assert [m.step for m in client.get_metric_history(logger_run, "loss")] == [1, 2, 3, 4]

    runs = {r.info.run_id: r for r in _all_runs(client)}  # the logger's and the other model's own, no more
    assert set(runs) == {logger_run, own_run}
    assert runs[own_run].data.tags[RUN_KEY] == "own" and runs[own_run].info.status == "FINISHED"


def test_a_restart_with_another_run_resumes_from_the_newest_version_and_retention_reaches_the_earlier_run(
    sqlite_uri: str, tmp_path: Path
) -> None:
    client = MlflowClient(sqlite_uri)
    first_run = _logger_run(client, tmp_path, "first launch")
    model, opt = _model(0)
    with mp.Persistence(_config(sqlite_uri)) as persist:
        handle = persist.track("net", model, optimizer=opt, run_id=first_run)
        _train(handle, model, opt, [1.0, 0.9, 0.8, 0.7])
    first_versions = {int(v.version): v for v in client.search_model_versions("name='net'")}
    newest = max(first_versions)
    assert first_versions[newest].tags["mlflow_persist.category"] == "final"
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    second_run = _logger_run(client, tmp_path, "second launch")  # a logger makes a new run per launch
    fresh, fresh_opt = _model(9)
    with mp.Persistence(_config(sqlite_uri)) as persist:
        handle = persist.track("net", fresh, optimizer=fresh_opt, run_id=second_run)
        restored = handle.restore()
        assert restored is not None and restored.version == newest and restored.step == 4
        assert all(torch.equal(fresh.state_dict()[k], v) for k, v in saved.items())
        _train(handle, fresh, fresh_opt, [0.6, 0.5, 0.4, 0.3])

    now = {int(v.version): v for v in client.search_model_versions("name='net'")}
    assert {v.run_id for n, v in now.items() if n > newest} == {second_run}
    deleted = [v for n, v in first_versions.items() if n not in now]
    assert deleted, "retention (keep 1 per category) should have deleted versions of the first launch"
    assert all(not _local(v.source).exists() for v in deleted)  # their bytes too, in the first launch's run
    assert all((_local(v.source) / "checkpoint.pt").is_file() for v in now.values())
    assert [r.info.run_id for r in _all_runs(client) if RUN_KEY in r.data.tags] == []
    assert {client.get_run(r).info.status for r in (first_run, second_run)} == {"RUNNING"}


def test_a_run_id_the_store_does_not_have_is_a_config_error_naming_it_and_the_store(
    sqlite_uri: str, tmp_path: Path
) -> None:
    client = MlflowClient(sqlite_uri)
    deleted = _logger_run(client, tmp_path, "deleted")
    client.delete_run(deleted)
    model, _ = _model(0)
    with mp.Persistence(_config(sqlite_uri)) as persist:
        for run_id in ("0123456789abcdef0123456789abcdef", deleted):
            with pytest.raises(
                mp.ConfigError, match=rf"track\(run_id='{run_id}'\) names no run of the store at"
            ) as exc:
                persist.track("net", model, run_id=run_id)
            assert sqlite_uri in str(exc.value)
        assert persist.handles == {}
    assert [r.info.run_id for r in _all_runs(client)] == []  # no run of the model's own was made instead


def test_a_memory_store_adopts_only_a_run_it_has() -> None:
    store = MemoryStore()
    logger_run = store.ensure_run("a logger's run")
    model, _ = _model(0)
    with mp.Persistence(mp.PersistConfig(log_system_metrics=False), store=store) as persist:
        assert persist.track("net", model, run_id=logger_run).run_id == logger_run
        with pytest.raises(mp.ConfigError, match="names no run of the store at memory://"):
            persist.track("other", model, run_id="run9999")
    assert store.run_summary(logger_run).tags[REGISTERED_MODEL] == "net"
    assert store.run_summary(logger_run).status == "RUNNING" and len(store.runs) == 1


def test_tracking_uris_of_one_store_compare_equal_however_they_are_spelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link").symlink_to(tmp_path, target_is_directory=True)
    here = os.path.realpath(tmp_path)
    assert same_store("sqlite:///mlflow.db", f"sqlite:///{here}/mlflow.db")
    assert same_store(f"sqlite:///{tmp_path}/link/mlflow.db", f"sqlite:///{here}/./mlflow.db")
    assert not same_store("sqlite:///mlflow.db", "sqlite:///other.db")
    assert same_store("file:./mlruns", f"{here}/mlruns") and same_store("./mlruns", f"file://{here}/mlruns")
    assert same_store("HTTP://Tracking.Example:80/", "http://tracking.example")
    assert same_store("https://user:secret@tracking.example/mlflow/", "https://tracking.example:443/mlflow")
    assert not same_store("http://tracking.example", "https://tracking.example")
    assert not same_store("http://tracking.example:5000", "http://tracking.example:5001")
    assert same_store("postgresql+psycopg2://u:p@db.example/mlflow", "postgresql://db.example:5432/mlflow")
    assert not same_store("sqlite:///mlflow.db", "http://localhost:5000")
    assert store_identity("databricks") == "databricks" and not same_store("databricks", "databricks://other")
