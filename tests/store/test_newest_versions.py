"""A restore reads the history newest first, a page at a time, on the real sqlite store: it costs what it tries,
not the whole history, and it still falls back past damaged versions across a page boundary."""

from __future__ import annotations

import pytest
import torch
from mlflow import MlflowClient

import mlflow_persist as mp
from mlflow_persist._store.mlflow_registry import MlflowRegistry
from mlflow_persist._store.mlflow_store import MlflowStore
from mlflow_persist._store.translate import local_path


def _config(uri: str) -> mp.PersistConfig:
    return mp.PersistConfig(
        tracking_uri=uri,
        keep_periodic=1000,
        keep_best=1000,
        log_system_metrics=False,
        min_free_disk_mb=0,
        min_free_disk_percent=0,
    )


def _save_versions(uri: str, count: int) -> dict[int, torch.Tensor]:
    """`count` periodic saves of a model whose weights change between them; the weights of each version."""
    net = torch.nn.Linear(4, 4)
    saved = {}
    with mp.Persistence(_config(uri), install_signal_handlers=False) as persistence:
        handle = persistence.track("net", net)
        for _ in range(count):
            with torch.no_grad():
                net.weight.add_(1.0)
            handle.step()
            job = handle.save("periodic")
            assert job is not None and job.done.wait(60) and job.outcome == "saved"
            saved[job.result.version] = net.weight.detach().clone()
        persistence.close(final_checkpoints=False)
    return saved


def test_newest_versions_pages_through_the_whole_history_newest_first(
    sqlite_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _save_versions(sqlite_uri, 1)
    client = MlflowClient(sqlite_uri, registry_uri=sqlite_uri)
    (first,) = client.search_model_versions("name = 'net'")
    for _ in range(44):
        client.create_model_version("net", first.source, run_id=first.run_id, tags=first.tags)
    monkeypatch.setattr(MlflowRegistry, "NEWEST_PAGE", 7)
    store = MlflowStore(sqlite_uri)
    assert [v.version for v in store.newest_versions("net")] == list(range(45, 0, -1))
    newest = store.newest_versions("net")
    assert next(newest).version == 45  # a caller that stops early reads one page, not 45 versions


def test_a_restore_falls_back_past_damaged_versions_across_a_page_boundary(
    sqlite_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = _save_versions(sqlite_uri, 5)
    assert sorted(saved) == [1, 2, 3, 4, 5]
    store = MlflowStore(sqlite_uri)
    for version in (5, 4, 3):  # the whole first page of two, and the first of the second
        source = local_path(store.get_version("net", version).source)
        assert source is not None
        (source / "checkpoint.pt").write_bytes(b"\x00" * 64)
    monkeypatch.setattr(MlflowRegistry, "NEWEST_PAGE", 2)
    monkeypatch.setattr("mlflow_persist._runtime.restore.RECENT_SHOWN", 1)
    net = torch.nn.Linear(4, 4)
    with mp.Persistence(_config(sqlite_uri), install_signal_handlers=False) as persistence:
        info = persistence.track("net", net).restore()
        persistence.close(final_checkpoints=False)
    assert info is not None and info.version == 2 and info.skipped_corrupt == (5, 4, 3)
    assert torch.equal(net.weight, saved[2])
