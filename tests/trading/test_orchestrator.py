"""The orchestrator with fake handles: model_states, serving weights that follow registered versions, recording."""

from __future__ import annotations

import torch

from mlflow_persist.trading.market import HORIZON, MarketData
from mlflow_persist.trading.models import MODEL_NAMES, build_model
from mlflow_persist.trading.orchestrator import TradingOrchestrator
from mlflow_persist.trading.trainers import build_trainers

from .helpers import FakeHandle, ListRecorder


def _orchestrator(steps: int, recorder: ListRecorder | None = None) -> tuple[TradingOrchestrator, dict[str, FakeHandle]]:
    torch.set_num_threads(1)
    market = MarketData(seed=0)
    trainers = build_trainers({name: build_model(name) for name in MODEL_NAMES}, seed=0)
    handles = {name: FakeHandle(name, trainer.model) for name, trainer in trainers.items()}
    orchestrator = TradingOrchestrator(
        market, trainers, seed=0, handles=handles, recorder=recorder,
        version_step=lambda name, version: handles[name].version_step(version),
    )
    for i in range(steps):
        orchestrator.on_bar(market.first + i)
    return orchestrator, handles


def test_model_states_follow_training_and_saves() -> None:
    orchestrator, handles = _orchestrator(40)
    for name in MODEL_NAMES:
        state = orchestrator.model_states[name]
        handle = handles[name]
        assert state["steps"] == handle.current_step == 40 - HORIZON
        assert state["current_loss"] == handle.metrics[-1]["loss"]
        assert state["best_loss"] == handle.best_value
        assert state["last_checkpoint_version"] == handle.last_version is not None
        assert state["last_save_time"] == handle.last_save_time
        assert "loss" in handle.metrics[-1]
    assert orchestrator.model_states["cnn"]["accuracy"] is not None
    assert orchestrator.model_states["extrema"]["accuracy"] is not None


def test_decisions_use_the_registered_weights() -> None:
    orchestrator, handles = _orchestrator(40)
    for name in MODEL_NAMES:
        serving = orchestrator.serving[name]
        assert serving.version is not None
        step, weights = handles[name].versions[serving.version]
        assert serving.step == step
        for key, value in serving.module.state_dict().items():
            assert torch.equal(value, weights[key])
        live = orchestrator.trainers[name].model.state_dict()
        assert not all(torch.equal(live[k], v) for k, v in serving.module.state_dict().items())


def test_recorder_gets_one_complete_episode_per_trained_decision() -> None:
    recorder = ListRecorder()
    orchestrator, _ = _orchestrator(20, recorder)
    assert len(recorder.episodes) == 20 - HORIZON
    episode = recorder.episodes[-1]
    assert set(episode.frames) == {"bars", "cob", "draws"}
    assert {"dqn.state", "cnn.window", "cob_rl.state", "extrema.window", "dqn.explore_u"} <= set(episode.tensors)
    assert {"dqn.q", "cnn.probs", "cob_rl.value", "extrema.probs"} <= set(episode.outputs)
    assert set(episode.checkpoint_versions) == set(MODEL_NAMES)
    assert episode.market["volatility_regime"] in {"low", "normal", "high"}
    assert episode.bar_time == episode.frames["bars"].index[-1]
    assert len({e.episode_id for e in recorder.episodes}) == len(recorder.episodes)
    assert isinstance(episode.to_dict()["frames"], dict)
