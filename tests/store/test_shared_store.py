"""Nothing deletes what it does not own (issue "Trust, round 3", defect 2), on the real embedded store.

Two configurations (different `registered_model_prefix`) share one store and one experiment and run one after
the other, ten times, each start sweeping leftovers of interrupted saves. Between runs the checkpoint folders
are aged by a day, as on a machine that restarts tomorrow. The record checked: the other configuration's
version folders on disk, and every registered version of both loaded and verified with `load_checkpoint`.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient
from reliability.support import make_model, train_step

import mlflow_persist as mp

RUNS = 10


def _config(uri: str, prefix: str) -> mp.PersistConfig:
    return mp.PersistConfig(
        tracking_uri=uri,
        experiment_name="shared",
        registered_model_prefix=prefix,
        log_system_metrics=False,
        partial_sweep_age_seconds=0.0,
        keep_best=50,
        keep_periodic=50,
        keep_final=50,
    )


def _version_dirs(uri: str, registered: str) -> dict[int, Path]:
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return {
        int(v.version): Path(v.source.removeprefix("file://"))
        for v in client.search_model_versions(f"name = '{registered}'")
    }


def _age_everything(root: Path, seconds: float) -> None:
    past = time.time() - seconds
    for path in root.rglob("*"):
        os.utime(path, (past, past), follow_symlinks=False)


@pytest.mark.slow  # seconds of work: in `make test`, not in `make test-fast`
def test_two_configs_sharing_a_store_never_delete_each_others_checkpoints(tmp_path: Path, template_db: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(template_db, project / "mlflow.db")
    uri = f"sqlite:///{project / 'mlflow.db'}"
    prefixes = ("a_", "b_")
    models = {prefix: make_model(i) for i, prefix in enumerate(prefixes)}
    for run in range(RUNS):
        mine, other = prefixes[run % 2], prefixes[(run + 1) % 2]
        others_before = _version_dirs(uri, f"{other}net")
        if (project / "mlruns").exists():
            _age_everything(project / "mlruns", 24 * 3600)
        model, opt = models[mine]
        with mp.Persistence(_config(uri, mine), install_signal_handlers=False) as persist:
            handle = persist.track("net", model, optimizer=opt)
            handle.restore()
            for step in range(2):
                train_step(model, opt)
                handle.step(handle.current_step + 1, loss=10.0 - run - step * 0.5)
                assert persist.flush(timeout=60)
            persist.close()
        missing = {v: d for v, d in others_before.items() if not (d / "checkpoint.pt").is_file()}
        assert missing == {}, f"run {run} ({mine}) deleted files of {other}net's versions: {missing}"

    for prefix in prefixes:
        versions = _version_dirs(uri, f"{prefix}net")
        assert len(versions) >= RUNS  # at least one save per run of this config, none deleted by the other
        for version in versions:
            state = mp.load_checkpoint(f"models:/{prefix}net/{version}", tracking_uri=uri, experiment_name="shared")
            assert state.version == version


def test_the_sweep_removes_only_its_own_unused_leftovers(tmp_path: Path, sqlite_uri: str) -> None:
    from mlflow_persist._store.mlflow_store import MlflowStore

    store = MlflowStore(sqlite_uri, "sweep")
    run_id = store.ensure_run("net")
    root = store.local_artifact_dir(run_id)
    assert root is not None
    checkpoints = root / "checkpoints"
    planted = {
        "mine-staging": ".tmp-a_net-0000000003-0badc0de",
        "mine-orphan": "a_net-0000000004-deadbeef",
        "mine-registered-by-other": "a_net-0000000005-feedf00d",
        "other-prefix": "b_net-0000000004-deadbeef",
        "name-extension": "a_net-b-0000000004-deadbeef",
        "foreign": "notes",
    }
    for name in planted.values():
        (checkpoints / name).mkdir(parents=True)
        (checkpoints / name / "checkpoint.pt").write_bytes(b"x")
    # a version of another registered model uses one of the directories a_net's name would claim
    store.register_version(
        "someone_else", f"{store.artifact_uri(run_id)}/checkpoints/{planted['mine-registered-by-other']}", run_id, {}
    )
    _age_everything(checkpoints, 24 * 3600)

    removed = store.sweep_partial_checkpoints(run_id, 0.0, owner="a_net")

    assert sorted(removed) == sorted([planted["mine-staging"], planted["mine-orphan"]])
    left = {p.name for p in checkpoints.iterdir()}
    assert left == {planted[k] for k in ("mine-registered-by-other", "other-prefix", "name-extension", "foreign")}
    assert store.sweep_partial_checkpoints(run_id, 0.0) == []  # no owner: nothing is swept


@pytest.mark.slow  # seconds of work on a real store: in `make test`, not in `make test-fast`
def test_two_configs_tracking_the_same_name_log_to_two_runs(sqlite_uri: str) -> None:
    """`a_net` and `b_net` are two models: each has its own run, holding its own metrics only."""
    losses = {"a_": [3.0, 2.0], "b_": [30.0, 20.0]}
    run_ids = {}
    for prefix, values in losses.items():
        model, opt = make_model(7, width=8)
        with mp.Persistence(_config(sqlite_uri, prefix), install_signal_handlers=False) as persist:
            handle = persist.track("net", model, optimizer=opt)
            for step, loss in enumerate(values, start=1):
                handle.step(step, loss=loss)
            run_ids[prefix] = handle.run_id
            persist.close()
    assert run_ids["a_"] != run_ids["b_"]
    client = MlflowClient(tracking_uri=sqlite_uri)
    for prefix, values in losses.items():
        run = client.get_run(run_ids[prefix])
        assert run.data.tags["mlflow_persist.registered_model"] == f"{prefix}net"
        assert [m.value for m in client.get_metric_history(run_ids[prefix], "loss")] == values


@pytest.mark.slow  # seconds of work on a real store: in `make test`, not in `make test-fast`
def test_a_run_keyed_by_the_bare_name_by_an_earlier_version_is_taken_over_by_its_model_only(sqlite_uri: str) -> None:
    from mlflow_persist._store.mlflow_store import MlflowStore

    store = MlflowStore(sqlite_uri, "shared")
    earlier = store.ensure_run("net", tags={"mlflow_persist.registered_model": "a_net"})  # as earlier versions did
    runs = {}
    for prefix in ("b_", "a_"):
        model, opt = make_model(8, width=8)
        with mp.Persistence(_config(sqlite_uri, prefix), install_signal_handlers=False) as persist:
            runs[prefix] = persist.track("net", model, optimizer=opt).run_id
            persist.close()
    assert runs["a_"] == earlier  # a_net's own run goes on
    assert runs["b_"] != earlier  # b_net never takes a_net's run


def test_a_run_deleted_by_another_process_while_settling_is_replaced_by_the_next_oldest(
    sqlite_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Processes on different machines each create a run for a new key and settle on the oldest; a process may
    settle on a run whose own creator then deletes it (it found an even older one). Seen with three trainers on
    a PostgreSQL server: 'The run ... must be in the active state. Current state is deleted.'"""
    from mlflow_persist._store.mlflow_store import MlflowStore

    store = MlflowStore(sqlite_uri, "shared")
    client = MlflowClient(tracking_uri=sqlite_uri)
    tags = {"mlflow_persist.run_key": "net"}
    doomed = client.create_run(store.experiment_id, tags=tags).info.run_id
    survivor = client.create_run(store.experiment_id, tags=tags).info.run_id
    original = MlflowClient.update_run

    def deleted_just_before(self: MlflowClient, run_id: str, *args: object, **kwargs: object) -> object:
        if run_id == doomed:  # its creator deletes it between our search and our update
            client.delete_run(doomed)
        return original(self, run_id, *args, **kwargs)

    monkeypatch.setattr(MlflowClient, "update_run", deleted_just_before)
    assert store.ensure_run("net") == survivor
