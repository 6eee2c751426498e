"""Smaller holes of "Trust, round 3" (defect 8 and the low ones), on the real embedded store.

- a registered model deleted by an operator is created again at the next save (the cache forgets it);
- `models:/<name>/latest` never resolves to a version tagged corrupt;
- `delete_artifacts` never deletes the checkpoints folder itself (a source ending in `checkpoints/.`);
- the writer's and the alert dispatcher's records of failures stay bounded.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

import mlflow_persist as mp
from mlflow_persist._observe.alerts import AlertDispatcher
from mlflow_persist._runtime.writer import CheckpointWriter, SaveJob
from mlflow_persist._store.mlflow_store import MlflowStore


def _config(uri: str) -> mp.PersistConfig:
    return mp.PersistConfig(tracking_uri=uri, log_system_metrics=False, min_free_disk_mb=0, min_free_disk_percent=0)


def test_a_registered_model_deleted_meanwhile_is_created_again(sqlite_uri: str) -> None:
    with mp.Persistence(_config(sqlite_uri), install_signal_handlers=False) as persist:
        handle = persist.track("net", torch.nn.Linear(2, 2))
        handle.step(1, loss=1.0)
        assert persist.flush(timeout=30)
        MlflowClient(tracking_uri=sqlite_uri, registry_uri=sqlite_uri).delete_registered_model("net")
        handle.step(2, loss=0.5)
        assert persist.flush(timeout=30)
        assert handle.failures == 0
        persist.close(final_checkpoints=False)
    versions = MlflowStore(sqlite_uri).list_versions("net")
    assert [v.step for v in versions] == [2]


def test_latest_never_resolves_to_a_corrupt_version(sqlite_uri: str) -> None:
    with mp.Persistence(_config(sqlite_uri), install_signal_handlers=False) as persist:
        handle = persist.track("net", torch.nn.Linear(2, 2))
        for step, loss in ((1, 3.0), (2, 2.0)):
            handle.step(step, loss=loss)
            assert persist.flush(timeout=30)
        persist.close(final_checkpoints=False)
    store = MlflowStore(sqlite_uri)
    store.mark_corrupt("net", 2, "test: damaged")
    assert store.resolve("models:/net/latest").version == 1
    assert mp.load_checkpoint("models:/net/latest", tracking_uri=sqlite_uri).step == 1


def test_delete_artifacts_refuses_the_checkpoints_folder_itself(sqlite_uri: str) -> None:
    store = MlflowStore(sqlite_uri)
    run_id = store.ensure_run("net")
    root = store.artifact_uri(run_id)
    local = Path(root.removeprefix("file://")) / "checkpoints" / "net-0000000001-deadbeef"
    local.mkdir(parents=True)
    (local / "checkpoint.pt").write_bytes(b"x")
    info = store.register_version("net", f"{root}/checkpoints/.", run_id, {})
    with pytest.raises(mp.StoreError, match="left alone"):
        store.delete_artifacts(info)
    assert (local / "checkpoint.pt").is_file()


def test_failure_records_stay_bounded() -> None:
    def fail(job: SaveJob) -> None:
        raise OSError("disk")

    writer = CheckpointWriter(fail, max_attempts=1, max_backoff_seconds=0.01)
    for step in range(300):
        writer.submit(SaveJob("net", "periodic", step, {"model_state": {}}, forced=True), max_wait=None)
        writer.flush("net", timeout=5)
    writer.close(timeout=5)
    assert writer.failures == 300 and len(writer.failed) <= 100
    dispatcher = AlertDispatcher([])
    for i in range(300):
        dispatcher.fire(mp.Alert("disk", "net", f"alert {i}"))
    dispatcher.close()
    assert len(dispatcher.sent) <= 100 and dispatcher.sent[-1].message == "alert 299"
