"""Recorder -> real MLflow sqlite store -> EpisodeStore; damaged and missing files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from episode_fixtures import simple_episode

from mlflow_persist.episodes import EpisodeFailure, EpisodeRecorder, EpisodeStore, assert_frames_identical
from mlflow_persist.episodes.tensors import tensors_identical
from mlflow_persist.episodes.values import values_identical
from mlflow_persist.errors import CheckpointCorruptError, NotFoundError, PersistError


def _assert_same(expected: Any, actual: Any) -> None:
    assert actual.episode_id == expected.episode_id
    assert actual.bar_time == expected.bar_time and actual.wall_time == expected.wall_time
    assert list(actual.frames) == list(expected.frames)
    for name in expected.frames:
        assert_frames_identical(expected.frames[name], actual.frames[name])
    for group in ("tensors", "outputs"):
        exp, act = getattr(expected, group), getattr(actual, group)
        assert list(exp) == list(act) and all(tensors_identical(exp[k], act[k]) for k in exp)
    for name in ("action", "reward", "checkpoint_versions", "market", "rng", "extra", "model_fingerprints"):
        assert values_identical(getattr(expected, name), getattr(actual, name)), name


def _artifact_root(client: Any, run_id: str) -> Path:
    return Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://"))


def _record(client: Any, run_id: str, episodes: list, **kw: Any) -> EpisodeRecorder:
    rec = EpisodeRecorder(client, run_id, **kw)
    for ep in episodes:
        rec.record(ep)
    assert rec.flush(timeout=120)
    return rec


def test_recorded_episodes_come_back_bit_exact_by_id_and_time_range(client: Any, run_id: str) -> None:
    episodes = [simple_episode(i) for i in range(30)]  # bars span two UTC dates
    rec = _record(client, run_id, episodes, flush_rows=8)
    rec.close()
    stats = rec.stats()
    assert stats.stored == 30 and stats.buffered == 0 and stats.dropped == 0 and stats.failed_flushes == 0

    root = _artifact_root(client, run_id)
    dates = sorted(p.name for p in (root / "episodes").iterdir() if p.name.startswith("date="))
    assert dates == ["date=2024-01-01", "date=2024-01-02"]
    assert all(p.name.startswith("part-") for d in dates for p in (root / "episodes" / d).iterdir())

    store = EpisodeStore(client, run_id)
    assert len(store) == 30
    index = store.index
    assert {"episode_id", "file", "row", "bar_time", "wall_time", "sha256", "schema_version"} <= set(index.columns)
    for ep in (episodes[0], episodes[17], episodes[29]):
        _assert_same(ep, store.get(ep.episode_id))

    start, end = episodes[10].bar_time, episodes[20].bar_time
    ranged = store.in_range(start, end)
    assert [e.episode_id for e in ranged] == [e.episode_id for e in episodes[10:20]]
    assert not [x.reason for x in ranged if isinstance(x, EpisodeFailure)], store.index[
        ["episode_id", "file", "row", "flush_seq"]
    ].to_string()
    for exp, got in zip(episodes[10:20], ranged, strict=True):
        _assert_same(exp, got)

    assert len(set(store.sample(5, seed=1))) == 5 and store.sample(5, seed=1) == store.sample(5, seed=1)
    assert store.verify() == {
        "files": len(index.groupby("file")),
        "ok": len(index.groupby("file")),
        "bad": [],
        "problems": [],
    }


def test_lineage_is_logged_as_dataset_inputs(client: Any, run_id: str) -> None:
    _record(client, run_id, [simple_episode(i) for i in range(3)], flush_rows=100).close()
    inputs = client.get_run(run_id).inputs.dataset_inputs
    assert inputs and inputs[0].dataset.name == "episodes"
    assert any(t.key == "mlflow.data.context" and t.value == "episodes" for t in inputs[0].tags)


def test_background_thread_writes_when_flush_rows_reached(client: Any, run_id: str) -> None:
    rec = EpisodeRecorder(client, run_id, flush_rows=4)
    for i in range(4):
        rec.record(simple_episode(i))
    assert rec.flush(timeout=120)
    assert len(rec.results) == 1 and rec.results[0].rows == 4
    rec.close()


def test_inline_flush_without_thread_and_sequence_continues_across_recorders(client: Any, run_id: str) -> None:
    first = EpisodeRecorder(client, run_id, background=False)
    first.record(simple_episode(0))
    assert first.stats().buffered == 1  # nothing written until flush()
    assert first.flush()
    second = EpisodeRecorder(client, run_id, background=False)
    second.record(simple_episode(1))
    second.flush()
    assert [r.seq for r in first.results + second.results] == [1, 2]
    assert len(EpisodeStore(client, run_id)) == 2


def test_record_copies_so_later_edits_do_not_leak(client: Any, run_id: str) -> None:
    ep = simple_episode(3)
    rec = EpisodeRecorder(client, run_id, background=False)
    rec.record(ep)
    ep.frames["bars"].iloc[0, 0] = -1.0
    ep.tensors["m.state"] += 100
    rec.flush()
    got = EpisodeStore(client, run_id).get(ep.episode_id)
    assert got.frames["bars"].iloc[0, 0] != -1.0 and float(got.tensors["m.state"].max()) < 100


def test_failed_uploads_keep_episodes_and_retry(client: Any, run_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = EpisodeRecorder(client, run_id, background=False)
    real = client.log_artifact
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("disk full")
        real(*args, **kwargs)

    monkeypatch.setattr(client, "log_artifact", flaky)
    rec.record(simple_episode(1))
    assert rec.flush() is False
    assert rec.stats().buffered == 1 and "disk full" in (rec.stats().last_error or "")
    assert rec.flush() is True
    assert len(EpisodeStore(client, run_id)) == 1


def test_unencodable_episode_is_rejected_alone(client: Any, run_id: str) -> None:
    bad = simple_episode(2)
    bad.market = {"x": object()}
    rec = _record(client, run_id, [simple_episode(1), bad], background=False)
    assert rec.stats().rejected == 1 and rec.stats().stored == 1


def test_buffer_limit_drops_oldest(client: Any, run_id: str) -> None:
    rec = EpisodeRecorder(client, run_id, flush_rows=2, max_buffer_rows=3, background=False)
    for i in range(5):
        rec.record(simple_episode(i))
    assert rec.stats().dropped == 2 and rec.stats().buffered == 3
    rec.flush()
    assert sorted(EpisodeStore(client, run_id).index["episode_id"]) == ["s-0002", "s-0003", "s-0004"]
    rec.close()
    with pytest.raises(PersistError, match="recorder is closed"):
        rec.record(simple_episode(9))


def _two_files(client: Any, run_id: str) -> tuple[EpisodeStore, pd.DataFrame]:
    rec = EpisodeRecorder(client, run_id, background=False)
    for i in range(3):
        rec.record(simple_episode(i))
    rec.flush()
    for i in range(3, 6):
        rec.record(simple_episode(i))
    rec.flush()
    store = EpisodeStore(client, run_id)
    return store, store.index


def test_corrupt_file_names_file_and_episode_others_load(client: Any, run_id: str) -> None:
    store, index = _two_files(client, run_id)
    bad_file = index.loc[index["episode_id"] == "s-0001", "file"].iloc[0]
    path = _artifact_root(client, run_id) / bad_file
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(CheckpointCorruptError, match=f"episode file {bad_file} \\(episode s-0001\\)"):
        store.get("s-0001")
    loaded = store.load([f"s-{i:04d}" for i in range(6)])
    failures = [x for x in loaded if isinstance(x, EpisodeFailure)]
    assert [f.episode_id for f in failures] == ["s-0000", "s-0001", "s-0002"]
    assert all(f"(episode {f.episode_id})" in f.reason and bad_file in f.reason for f in failures)
    assert [x.episode_id for x in loaded if not isinstance(x, EpisodeFailure)] == ["s-0003", "s-0004", "s-0005"]
    report = store.verify()
    assert report["ok"] == report["files"] - 1 and report["bad"][0]["file"] == bad_file


def test_missing_file_names_file_and_episode_others_load(client: Any, run_id: str) -> None:
    store, index = _two_files(client, run_id)
    gone = index.loc[index["episode_id"] == "s-0004", "file"].iloc[0]
    (_artifact_root(client, run_id) / gone).unlink()
    with pytest.raises(NotFoundError, match=f"episode file {gone} \\(episode s-0004\\) is missing"):
        store.get("s-0004")
    assert store.get("s-0001").episode_id == "s-0001"
    with pytest.raises(NotFoundError, match="episode nope is not in the episode index"):
        store.get("nope")


def test_unreadable_index_file_is_reported_and_skipped(client: Any, run_id: str) -> None:
    _two_files(client, run_id)
    index_dir = _artifact_root(client, run_id) / "episodes" / "index"
    first = sorted(index_dir.iterdir())[0]
    first.write_bytes(b"not parquet")
    store = EpisodeStore(client, run_id)
    assert len(store) == 3 and len(store.problems) == 1 and first.name in store.problems[0]


@pytest.mark.slow  # a child interpreter: seconds
def test_episodes_written_by_the_worker_process_come_back_bit_exact_also_after_it_was_killed(
    client: Any, run_id: str, sqlite_uri: str
) -> None:
    import os
    import signal

    from mlflow_persist._runtime.worker_process import WorkerProcess
    from mlflow_persist._store.store_address import StoreAddress

    worker = WorkerProcess()
    try:
        assert worker.wait_ready(60)
        address = StoreAddress(sqlite_uri, "mlflow-persist", None)
        episodes = [simple_episode(i) for i in range(24)]
        rec = EpisodeRecorder(client, run_id, background=False, worker=worker, address=address)
        for ep in episodes[:12]:
            rec.record(ep)
        assert rec.flush(timeout=120)
        assert worker.calls_in_worker == 1  # the Parquet files were written by the child
        first = worker.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        for ep in episodes[12:]:
            rec.record(ep)
        # The first flush may meet the dying child: it fails and keeps the episodes, as for a store that refused;
        # the retry stores them (here, or in a new child once it is ready).
        flushed = rec.flush(timeout=120)
        assert flushed or (rec.stats().failed_flushes == 1 and rec.flush(timeout=120))
        rec.close()
        assert rec.stats().stored == 24 and rec.stats().dropped == 0
    finally:
        worker.close()
    store = EpisodeStore(client, run_id)
    assert len(store) == 24
    for ep in episodes:
        _assert_same(ep, store.get(ep.episode_id))
