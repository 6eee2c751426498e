"""Replay: the recorded frames rebuild the tensors and the decision bit for bit."""

from __future__ import annotations

import torch

from mlflow_persist.trading import replay
from mlflow_persist.trading.models import MODEL_NAMES

from .helpers import ListRecorder, memory_system


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and torch.equal(
            a.view(torch.uint8) if a.dtype.is_floating_point else a,
            b.view(torch.uint8) if b.dtype.is_floating_point else b,
        )
    )


def test_replay_reproduces_recorded_decisions_bitwise() -> None:
    torch.set_num_threads(1)
    recorder = ListRecorder()
    persistence, system = memory_system(seed=3, cut_every_steps=15, recorder=recorder)
    try:
        system.run(steps=64)
        persistence.flush(timeout=30)
        store = persistence.store
        assert len(recorder.episodes) > 50
        versions_seen = {e.checkpoint_versions["cnn"] for e in recorder.episodes}
        assert None in versions_seen and len(versions_seen) > 2  # initial weights and several registered versions
        weights = {
            (name, v): store.load_version(store.get_version(name, v)).model_state
            for name in MODEL_NAMES
            for v in {e.checkpoint_versions[name] for e in recorder.episodes}
            if v is not None
        }
    finally:
        persistence.close()

    explored = greedy = 0
    for episode in recorder.episodes:
        tensors = replay.features_from_frames(episode.frames)
        assert set(tensors) == set(episode.tensors)
        for key, value in tensors.items():
            assert _same(value, episode.tensors[key]), key
        models = {}
        for name in MODEL_NAMES:
            model = replay.build_model(name, seed=episode.rng["model_seed"])
            version = episode.checkpoint_versions[name]
            if version is not None:
                model.load_state_dict(weights[(name, version)])
            models[name] = model.eval()
        action, outputs = replay.decide(models, tensors)
        assert action == episode.action
        assert set(outputs) == set(episode.outputs)
        for key, value in outputs.items():
            assert _same(value, episode.outputs[key]), key
        explored += int(episode.outputs["dqn.explored"].item())
        greedy += int(not episode.outputs["dqn.explored"].item())
    assert explored > 0 and greedy > 0
