"""Replay: the recorded frames rebuild the tensors and the decision bit for bit."""

from __future__ import annotations

import torch

from mlflow_persist.trading import replay
from mlflow_persist.trading.market import MarketData
from mlflow_persist.trading.models import MODEL_NAMES, build_model
from mlflow_persist.trading.orchestrator import TradingOrchestrator
from mlflow_persist.trading.trainers import build_trainers

from .helpers import FakeHandle, ListRecorder


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8) if a.dtype.is_floating_point else a,
                                                                     b.view(torch.uint8) if b.dtype.is_floating_point else b)


def test_replay_reproduces_recorded_decisions_bitwise() -> None:
    torch.set_num_threads(1)
    market = MarketData(seed=3)
    trainers = build_trainers({name: build_model(name, seed=3) for name in MODEL_NAMES}, seed=3)
    handles = {name: FakeHandle(name, trainer.model, save_every=7, delay=3) for name, trainer in trainers.items()}
    recorder = ListRecorder()
    orchestrator = TradingOrchestrator(
        market, trainers, seed=3, handles=handles, recorder=recorder, model_seed=3,
        version_step=lambda name, version: handles[name].version_step(version),
    )
    for i in range(60):
        orchestrator.on_bar(market.first + 500 + i)
    assert len(recorder.episodes) > 50
    versions_seen = {e.checkpoint_versions["cnn"] for e in recorder.episodes}
    assert None in versions_seen and len(versions_seen) > 2  # initial weights and several registered versions

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
                model.load_state_dict(handles[name].versions[version][1])
            models[name] = model.eval()
        action, outputs = replay.decide(models, tensors)
        assert action == episode.action
        assert set(outputs) == set(episode.outputs)
        for key, value in outputs.items():
            assert _same(value, episode.outputs[key]), key
        explored += int(episode.outputs["dqn.explored"].item())
        greedy += int(not episode.outputs["dqn.explored"].item())
    assert explored > 0 and greedy > 0
