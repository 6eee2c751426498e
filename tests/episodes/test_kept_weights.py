"""Weights kept in the episode run: replay still reproduces after retention deleted the registered version."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from episode_fixtures import ToyTarget, make_episode, register_toy_version

from mlflow_persist.episodes import EpisodeRecorder, EpisodeStore, replay_ids, state_fingerprint
from mlflow_persist.errors import CheckpointCorruptError


def _record(client: Any, run_id: str, tmp_path: Path, keep_weights: bool) -> tuple[ToyTarget, int, str]:
    target = ToyTarget()
    model = target.build_model("toy")
    version = register_toy_version(client, run_id, model, tmp_path, step=10)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    fingerprint = state_fingerprint(state)
    recorder = EpisodeRecorder(client, run_id, flush_rows=10)
    if keep_weights:
        recorder.record_weights("toy", fingerprint, state)
        recorder.record_weights("toy", fingerprint, state)  # stored once
    for i in range(3):
        recorder.record(make_episode(i, target, {"toy": model}, {"toy": version}))
    assert recorder.close()
    assert recorder.stats().weights_stored == (1 if keep_weights else 0)
    client.delete_model_version("toy", str(version))  # what retention does to old versions
    return target, version, fingerprint


def test_replay_falls_back_to_the_kept_weights(client: Any, run_id: str, tmp_path: Path, sqlite_uri: str) -> None:
    target, _, fingerprint = _record(client, run_id, tmp_path, keep_weights=True)
    store = EpisodeStore(client, run_id)
    report = replay_ids(store, ["ep-0000", "ep-0001", "ep-0002"], target, tracking_uri=sqlite_uri)
    assert report.to_dict() == {"replayed": 3, "reproduced": 3, "failed": []}
    assert state_fingerprint(store.weights("toy", fingerprint)) == fingerprint


def test_without_kept_weights_the_missing_version_is_named(
    client: Any, run_id: str, tmp_path: Path, sqlite_uri: str
) -> None:
    target, version, _ = _record(client, run_id, tmp_path, keep_weights=False)
    report = replay_ids(EpisodeStore(client, run_id), ["ep-0000"], target, tracking_uri=sqlite_uri)
    assert report.reproduced == 0
    reason = report.failed[0]["reason"]
    assert f"models:/toy/{version}" in reason and "episodes/weights/toy/" in reason


def test_damaged_kept_weights_are_refused(client: Any, run_id: str, tmp_path: Path) -> None:
    _, _, fingerprint = _record(client, run_id, tmp_path, keep_weights=True)
    root = Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://"))
    torch.save({"fc.weight": torch.zeros(1)}, root / "episodes" / "weights" / "toy" / f"{fingerprint}.pt")
    with pytest.raises(CheckpointCorruptError, match="do not match their fingerprint"):
        EpisodeStore(client, run_id).weights("toy", fingerprint)
