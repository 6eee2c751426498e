"""Files no version uses (issue "Trust, round 3", defect 7): a save given up at registration leaves none behind,
disk pressure removes such leftovers before any version, remote leftovers are swept too, and an upload that
does not read back as written never becomes a version.

The records checked are the store's own: the files on disk (or listed by the tracking server) against the
sources of the registered versions, and the bytes `load_checkpoint` verifies.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow import MlflowClient
from reliability.support import make_model, train_step
from store_support import reset_server_store

import mlflow_persist as mp
from mlflow_persist._observe.system_metrics import DiskSpace
from mlflow_persist._policy.versions import CHECKPOINTS_DIR, checkpoint_dirname, digest_tags, tag
from mlflow_persist._store.mlflow_artifacts import UNREGISTERED_SWEEP_AGE_SECONDS, UNUSED_SEEN_TAG
from mlflow_persist._store.mlflow_store import MlflowStore
from mlflow_persist.errors import FinalCheckpointError, StoreError, StoreUnavailableError
from mlflow_persist.testing import MemoryStore


def _config(**overrides: Any) -> mp.PersistConfig:
    settings: dict[str, Any] = {
        "log_system_metrics": False,
        "save_retry_attempts": 3,
        "save_retry_max_wait_seconds": 0.05,
        "keep_periodic": 50,
        "keep_final": 50,
        "keep_best": 50,
        **overrides,
    }
    return mp.PersistConfig(**settings)


def _checkpoints_folder(uri: str, run_id: str) -> Path:
    return (
        Path(MlflowClient(tracking_uri=uri).get_run(run_id).info.artifact_uri.removeprefix("file://")) / CHECKPOINTS_DIR
    )


def _checkpoint_dirs(uri: str, run_id: str) -> set[str]:
    folder = _checkpoints_folder(uri, run_id)
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def _registered_dirs(uri: str, name: str) -> set[str]:
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return {v.source.rstrip("/").rsplit("/", 1)[-1] for v in client.search_model_versions(f"name = '{name}'")}


def test_a_save_given_up_at_registration_leaves_no_bytes_in_the_memory_store() -> None:
    store = MemoryStore()
    model, opt = make_model(0, width=16)
    persist = mp.Persistence(_config(), store=store, install_signal_handlers=False)
    handle = persist.track("net", model, optimizer=opt)
    store.fail("register", times=None)
    handle.save("periodic", wait=True, timeout=30)
    assert store.calls["register"] == 3 and handle.failures >= 1
    store.heal()
    train_step(model, opt)
    handle.save("periodic", wait=True, timeout=30)
    with pytest.raises(FinalCheckpointError, match="1 checkpoint.* could never be written"):
        persist.close()  # the final checkpoint is stored; the given-up save is reported
    registered = {v.source for v in store.list_versions("net")}
    assert len(registered) == 2  # the periodic save and the final one
    assert store.artifact_sources() == registered


@pytest.mark.slow  # seconds of work on a real store: in `make test`, not in `make test-fast`
def test_registration_failures_on_the_real_store_leave_no_folder_behind(
    sqlite_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures = {"left": 4}  # the first save: 3 attempts, all refused; the next one: 1 refused, then registered
    original = MlflowStore.register_version

    def flaky(self: MlflowStore, *args: Any, **kwargs: Any) -> Any:
        if failures["left"] > 0:
            failures["left"] -= 1
            raise StoreUnavailableError("the registry is down (injected)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(MlflowStore, "register_version", flaky)
    model, opt = make_model(1, width=16)
    persist = mp.Persistence(_config(tracking_uri=sqlite_uri), install_signal_handlers=False)
    handle = persist.track("net", model, optimizer=opt)
    run_id = handle.run_id
    for _ in range(2):
        train_step(model, opt)
        handle.save("periodic", wait=True, timeout=60)
    with pytest.raises(FinalCheckpointError, match="1 checkpoint.* could never be written"):
        persist.close()
    assert failures["left"] == 0
    on_disk = _checkpoint_dirs(sqlite_uri, run_id)
    registered = _registered_dirs(sqlite_uri, "net")
    assert len(registered) == 2  # the second periodic save (retried once) and the final one
    assert on_disk == registered


def _periodic_saves(persist: mp.Persistence, model: torch.nn.Module, opt: Any, saves: int) -> Any:
    """Track `model` as "net" and save `saves` periodic checkpoints, one training step apart; returns its handle."""
    handle = persist.track("net", model, optimizer=opt)
    for _ in range(saves):
        train_step(model, opt)
        handle.save("periodic", wait=True, timeout=60)
    return handle


@pytest.fixture
def crowded_disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Path]]:
    """The disk is short while any of the listed leftover folders exists (and fine once they are gone)."""
    leftovers: list[Path] = []

    def fake_space(path: Path) -> DiskSpace:
        return DiskSpace(free_mb=10.0 if any(p.exists() for p in leftovers) else 50_000.0, total_mb=100_000.0)

    monkeypatch.setattr("mlflow_persist._runtime.disk_guard.disk_space", fake_space)
    yield leftovers


@pytest.mark.slow  # seconds of work on a real store: in `make test`, not in `make test-fast`
def test_disk_pressure_removes_leftover_folders_before_any_version(sqlite_uri: str, crowded_disk: list[Path]) -> None:
    model, opt = make_model(2, width=16)
    config = _config(tracking_uri=sqlite_uri, min_free_disk_mb=100.0, min_free_disk_percent=0.0)
    with mp.Persistence(config, install_signal_handlers=False) as persist:
        handle = _periodic_saves(persist, model, opt, 4)
        registered_before = _registered_dirs(sqlite_uri, "net")
        root = _checkpoints_folder(sqlite_uri, handle.run_id)
        leftover = root / checkpoint_dirname("net", 999)
        shutil.copytree(root / sorted(registered_before)[0], leftover)
        day_ago = time.time() - 24 * 3600
        for path in [leftover, *leftover.iterdir()]:
            os.utime(path, (day_ago, day_ago))
        crowded_disk.append(leftover)
        persist.tick()  # the scheduler's disk check
        assert not leftover.exists()
        train_step(model, opt)
        handle.save("periodic", wait=True, timeout=60)
        persist.close()
    registered_after = _registered_dirs(sqlite_uri, "net")
    assert registered_before <= registered_after  # no version was deleted for the space
    for version in range(1, len(registered_after) + 1):
        assert mp.load_checkpoint(f"models:/net/{version}", tracking_uri=sqlite_uri).version == version


@pytest.mark.slow  # seconds of work on a real store: in `make test`, not in `make test-fast`
def test_the_start_up_sweep_spares_registered_folders_with_or_without_their_marker(
    sqlite_uri: str, crowded_disk: list[Path]
) -> None:
    """The registered marker spares the start-up sweep a listing of every version; it must never cost a folder.
    Unmarked registered folders (a crash right after registering, an older release) are asked about and kept;
    a copy under another name carries a marker that does not count; a marked folder whose version an operator
    deleted stays until disk pressure, which trusts no marker."""
    model, opt = make_model(2, width=16)
    config = _config(tracking_uri=sqlite_uri, min_free_disk_mb=100.0, min_free_disk_percent=0.0)
    with mp.Persistence(config, install_signal_handlers=False) as persist:
        handle = _periodic_saves(persist, model, opt, 3)
        persist.close(final_checkpoints=False)
    run_id = handle.run_id
    root = _checkpoints_folder(sqlite_uri, run_id)
    unmarked, copied_from, orphaned = sorted(_registered_dirs(sqlite_uri, "net"))
    for marker in (root / unmarked).glob(".registered-*"):
        marker.unlink()
    copy = root / checkpoint_dirname("net", 999)
    shutil.copytree(root / copied_from, copy)  # a leftover that carries another folder's marker
    client = MlflowClient(tracking_uri=sqlite_uri, registry_uri=sqlite_uri)
    (deleted,) = [v for v in client.search_model_versions("name = 'net'") if v.source.endswith(orphaned)]
    client.delete_model_version("net", deleted.version)  # by an operator: the files stay
    day_ago = time.time() - 24 * 3600
    for path in root.rglob("*"):
        os.utime(path, (day_ago, day_ago))

    with mp.Persistence(config, install_signal_handlers=False) as persist:
        handle = persist.track("net", model, optimizer=opt)  # the start-up sweep
        assert not copy.exists()
        assert (root / unmarked).is_dir() and (root / copied_from).is_dir()
        assert list((root / unmarked).glob(".registered-*"))  # asked about once, marked since
        assert (root / orphaned).is_dir()
        crowded_disk.append(root / orphaned)
        persist.tick()  # the scheduler's disk check under pressure
        assert not (root / orphaned).exists()
        persist.close(final_checkpoints=False)
    registered = _registered_dirs(sqlite_uri, "net")
    assert registered == {unmarked, copied_from} and registered <= _checkpoint_dirs(sqlite_uri, run_id)
    for info in client.search_model_versions("name = 'net'"):
        assert mp.load_checkpoint(f"models:/net/{info.version}", tracking_uri=sqlite_uri).version == int(info.version)


# ------------------------------------------------------------------------------------- a tracking server


def _server_store(server: Any) -> tuple[MlflowStore, str]:
    reset_server_store(server.uri)
    store = MlflowStore(server.uri, "orphans")
    return store, store.ensure_run("net-run", run_name="net")


def _listed(store: MlflowStore, run_id: str) -> set[str]:
    return {Path(i.path).name for i in store.client.list_artifacts(run_id, CHECKPOINTS_DIR)}


def _payload(seed: int) -> dict[str, Any]:
    model, _ = make_model(seed, width=16)
    return {"model_state": model.state_dict(), "step": seed}


@pytest.mark.slow
@pytest.mark.server
def test_an_upload_that_does_not_read_back_as_written_is_deleted_and_never_registered(
    mlflow_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, run_id = _server_store(mlflow_server)
    original = MlflowClient.log_artifact

    def truncating(self: MlflowClient, run: str, local_path: str, artifact_path: str | None = None) -> None:
        if Path(local_path).name == "checkpoint.pt":  # a gateway that cuts the upload short
            short = tmp_path / "short" / "checkpoint.pt"
            short.parent.mkdir(exist_ok=True)
            short.write_bytes(Path(local_path).read_bytes()[:-100])
            local_path = str(short)
        original(self, run, local_path, artifact_path)

    monkeypatch.setattr(MlflowClient, "log_artifact", truncating)
    with pytest.raises(StoreError, match="did not verify"):
        store.write_checkpoint(run_id, "net", 1, _payload(1))
    assert _listed(store, run_id) == set()  # the bad upload was removed

    monkeypatch.setattr(MlflowClient, "log_artifact", original)
    payload = _payload(2)
    source, written = store.write_checkpoint(run_id, "net", 2, payload)
    assert _listed(store, run_id) == {source.rsplit("/", 1)[-1]}
    store.register_version(
        "net", source, run_id, {tag("category"): "periodic", tag("step"): 2, **digest_tags(written.digest)}
    )
    state = mp.load_checkpoint("models:/net/1", tracking_uri=mlflow_server.uri, experiment_name="orphans")
    for key, tensor in payload["model_state"].items():
        assert torch.equal(state.model_state[key], tensor)


@pytest.mark.slow
@pytest.mark.server
def test_remote_leftovers_are_swept_after_two_sweeps_apart_and_nothing_else(mlflow_server: Any) -> None:
    store, run_id = _server_store(mlflow_server)
    registered_source, written = store.write_checkpoint(run_id, "net", 1, _payload(1))
    store.register_version(
        "net", registered_source, run_id, {tag("category"): "periodic", tag("step"): 1, **digest_tags(written.digest)}
    )
    leftover, _ = store.write_checkpoint(run_id, "net", 2, _payload(2))  # written, never registered
    others, _ = store.write_checkpoint(run_id, "net-b", 3, _payload(3))  # another model's, never registered
    names = {s.rsplit("/", 1)[-1] for s in (registered_source, leftover, others)}
    assert _listed(store, run_id) == names

    assert store.sweep_partial_checkpoints(run_id, owner="net") == []  # first seen now: noted, not deleted
    noted = json.loads(store.client.get_run(run_id).data.tags[f"{UNUSED_SEEN_TAG}.net"])
    assert set(noted) == {leftover.rsplit("/", 1)[-1]}
    assert _listed(store, run_id) == names

    aged = {name: seen - UNREGISTERED_SWEEP_AGE_SECONDS - 1 for name, seen in noted.items()}
    store.client.set_tag(run_id, f"{UNUSED_SEEN_TAG}.net", json.dumps(aged))  # as if the sweep ran 10 min ago
    assert store.sweep_partial_checkpoints(run_id, owner="net") == [leftover.rsplit("/", 1)[-1]]
    assert _listed(store, run_id) == names - {leftover.rsplit("/", 1)[-1]}
    assert mp.load_checkpoint("models:/net/1", tracking_uri=mlflow_server.uri, experiment_name="orphans").version == 1
