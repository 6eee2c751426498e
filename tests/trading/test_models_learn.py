"""Each model trains on real cases; the supervised models' loss falls from the first to the last 10% of steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mlflow_persist.trading.market import MarketData
from mlflow_persist.trading.models import MODEL_NAMES, build_model
from mlflow_persist.trading.trainers import build_trainers

from .helpers import market_cases

STEPS = 500


@pytest.fixture(scope="module")
def cases() -> list:
    torch.set_num_threads(1)
    return market_cases(MarketData(seed=0), STEPS)


@pytest.fixture(scope="module")
def histories(cases: list) -> dict[str, list[dict[str, float]]]:
    trainers = build_trainers({name: build_model(name, seed=0) for name in MODEL_NAMES}, seed=0)
    history: dict[str, list[dict[str, float]]] = {name: [] for name in MODEL_NAMES}
    for case in cases:
        for name, trainer in trainers.items():
            history[name].append(trainer.train(case))
    return history


def _first_last(values: list[float]) -> tuple[float, float]:
    tenth = len(values) // 10
    return float(np.mean(values[:tenth])), float(np.mean(values[-tenth:]))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn", "extrema"])
def test_supervised_loss_falls(histories: dict, name: str) -> None:
    first, last = _first_last([m["loss"] for m in histories[name]])
    online_first, online_last = _first_last([m["online_loss"] for m in histories[name]])
    print(f"{name}: loss {first:.4f} -> {last:.4f}, online loss {online_first:.4f} -> {online_last:.4f}")
    assert last < first * 0.95
    assert online_last < online_first  # it generalises to unseen bars, not only the replayed ones
    assert 0.0 <= histories[name][-1]["accuracy"] <= 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dqn", "cob_rl"])
def test_rl_models_train_with_finite_losses(histories: dict, name: str) -> None:
    assert all(math.isfinite(m["loss"]) for m in histories[name])
    assert all(math.isfinite(m["reward"]) for m in histories[name])


def test_build_model_is_seeded_and_unknown_names_fail() -> None:
    for name in MODEL_NAMES:
        a, b = build_model(name, seed=3), build_model(name, seed=3)
        for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
            assert ka == kb and torch.equal(va, vb)
        assert not all(
            torch.equal(x, y) for x, y in zip(a.state_dict().values(), build_model(name, 4).state_dict().values())
        )
    from mlflow_persist.errors import NotFoundError

    with pytest.raises(NotFoundError, match="Unknown trading model"):
        build_model("lstm")


def test_dqn_agent_state_round_trips() -> None:
    torch.set_num_threads(1)
    cases = market_cases(MarketData(seed=0), 120)
    trainers = build_trainers({name: build_model(name) for name in MODEL_NAMES}, seed=0)
    agent = trainers["dqn"]
    for case in cases[:120]:
        agent.train(case)
    state = agent.state_dict()
    assert state["updates"] == 120 and state["target_syncs"] == 1 and state["epsilon"] < 1.0
    fresh = build_trainers({name: build_model(name) for name in MODEL_NAMES}, seed=0)["dqn"]
    fresh.load_state_dict(state)
    assert fresh.epsilon == agent.epsilon and fresh.updates == agent.updates
    for key, value in agent.target.state_dict().items():
        assert torch.equal(fresh.target.state_dict()[key], value)
    import io

    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True)["updates"] == 120
