"""Replay engine against a toy target whose checkpoints are registered with plain MLflow calls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from episode_fixtures import ToyTarget, make_episode, register_toy_version
from typer.testing import CliRunner

from mlflow_persist.episodes import EpisodeRecorder, EpisodeStore, replay, replay_ids, retrain_range
from mlflow_persist.episodes.cli import register, run_replay


@pytest.fixture
def recorded(client: Any, run_id: str, tmp_path: Path, sqlite_uri: str) -> dict[str, Any]:
    """12 episodes: 0-5 decided by version 1, 6-11 by version 2 (weights changed in between)."""
    target = ToyTarget()
    model = target.build_model("toy")
    v1 = register_toy_version(client, run_id, model, tmp_path, step=10)
    episodes = [make_episode(i, target, {"toy": model}, {"toy": v1}) for i in range(6)]
    with torch.no_grad():
        model.fc.weight.add_(0.5)
    v2 = register_toy_version(client, run_id, model, tmp_path, step=20)
    episodes += [make_episode(i, target, {"toy": model}, {"toy": v2}) for i in range(6, 12)]
    rec = EpisodeRecorder(client, run_id, flush_rows=5)
    for ep in episodes:
        rec.record(ep)
    assert rec.close()
    return {
        "episodes": episodes,
        "store": EpisodeStore(client, run_id),
        "uri": sqlite_uri,
        "target": target,
        "versions": (v1, v2),
    }


def test_stored_episodes_reproduce_exactly(recorded: dict[str, Any]) -> None:
    store = recorded["store"]
    report = replay_ids(store, store.sample(12, seed=3), recorded["target"], tracking_uri=recorded["uri"])
    assert report.to_dict() == {"replayed": 12, "reproduced": 12, "failed": []}


def test_in_memory_episodes_reproduce(recorded: dict[str, Any]) -> None:
    report = replay(recorded["episodes"][:3], recorded["target"], tracking_uri=recorded["uri"])
    assert report.ok and report.reproduced == 3


def test_changed_output_is_detected(recorded: dict[str, Any]) -> None:
    store = recorded["store"]
    report = replay_ids(store, ["ep-0001", "ep-0007"], ToyTarget(perturb=True), tracking_uri=recorded["uri"])
    assert report.reproduced == 0 and report.replayed == 2
    assert all("output 'toy.q' differs" in f["reason"] for f in report.failed)


def test_wrong_checkpoint_version_is_named(recorded: dict[str, Any]) -> None:
    ep = recorded["store"].get("ep-0002")
    ep.checkpoint_versions = {"toy": recorded["versions"][1]}  # claims version 2, decided with version 1
    report = replay([ep], recorded["target"], tracking_uri=recorded["uri"])
    assert report.failed[0]["reason"] == (
        f"model 'toy' at checkpoint version {recorded['versions'][1]} does not hold the weights that made the decision"
    )


def test_changed_frame_and_rng_are_detected(recorded: dict[str, Any]) -> None:
    store = recorded["store"]
    ep = store.get("ep-0003")
    ep.frames["bars"].iloc[-1, 0] += 1e-12
    assert (
        "frame 'bars' read back differs bitwise"
        in replay([ep], recorded["target"], tracking_uri=recorded["uri"]).failed[0]["reason"]
    )
    ep = store.get("ep-0003")
    ep.rng = {"seed": 999}
    assert (
        "output 'toy.noise' differs"
        in replay([ep], recorded["target"], tracking_uri=recorded["uri"]).failed[0]["reason"]
    )


def test_damaged_file_fails_its_episodes_others_reproduce(recorded: dict[str, Any], client: Any, run_id: str) -> None:
    store = recorded["store"]
    file = store.index.loc[store.index["episode_id"] == "ep-0000", "file"].iloc[0]
    root = Path(client.get_run(run_id).info.artifact_uri.removeprefix("file://"))
    (root / file).write_bytes(b"garbage")
    report = replay_ids(
        EpisodeStore(client, run_id),
        [f"ep-{i:04d}" for i in range(12)],
        recorded["target"],
        tracking_uri=recorded["uri"],
    )
    bad = store.index.loc[store.index["file"] == file, "episode_id"].tolist()
    assert report.replayed == 12 and report.reproduced == 12 - len(bad)
    assert sorted(f["episode_id"] for f in report.failed) == sorted(bad)
    assert all(file in f["reason"] and f["episode_id"] in f["reason"] for f in report.failed)


def test_retrain_range_yields_rebuilt_inputs_in_time_order(recorded: dict[str, Any]) -> None:
    seen: list[tuple[str, torch.Tensor]] = []
    eps = recorded["episodes"]
    summary = retrain_range(
        recorded["store"],
        eps[2].bar_time,
        eps[8].bar_time,
        recorded["target"],
        lambda ep, tensors: seen.append((ep.episode_id, tensors["toy.state"])),
    )
    assert [s[0] for s in seen] == [f"ep-{i:04d}" for i in range(2, 8)]
    assert summary.used == 6 and summary.failed == []
    assert torch.equal(seen[0][1], eps[2].tensors["toy.state"])


def test_cli_replay_json_and_exit_codes(recorded: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    import sys
    import types

    module = types.ModuleType("episode_fixtures_target")
    app = typer.Typer()
    register(app, target=lambda: module)

    @app.callback()
    def main() -> None:
        """test app"""

    for name in ("features_from_frames", "build_model", "decide"):
        setattr(module, name, getattr(recorded["target"], name))
    monkeypatch.setitem(sys.modules, "episode_fixtures_target", module)

    runner = CliRunner()
    result = runner.invoke(
        app,
        ["replay", "--sample", "4", "--seed", "1", "--episode", "ep-0000", "--tracking-uri", recorded["uri"], "--json"],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"schema_version": 1, "replayed": 5, "reproduced": 5, "failed": []}

    module.decide = ToyTarget(perturb=True).decide
    result = runner.invoke(app, ["replay", "--episode", "ep-0001", "--tracking-uri", recorded["uri"], "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stdout)["reproduced"] == 0


def test_run_replay_without_a_selection_says_what_to_give(recorded: dict[str, Any]) -> None:
    from mlflow_persist.errors import PersistError

    with pytest.raises(PersistError, match="give --episode ID, --sample N or --start/--end"):
        run_replay(
            episode=[], sample=None, seed=None, run_id=None, tracking_uri=recorded["uri"], target=recorded["target"]
        )
