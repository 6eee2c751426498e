"""One trainer per model: DQN agent, CNN, COB actor-critic, Extrema classifier."""

from __future__ import annotations

from torch import nn

from .base import ReplayBuffer, Trainer, TrainingCase
from .cnn import cnn_trainer
from .cob_rl import COBActorCriticTrainer
from .dqn import DQNAgent
from .extrema import extrema_trainer


def build_trainers(models: dict[str, nn.Module], seed: int) -> dict[str, Trainer]:
    """The trainer of each reference model, wrapping the given (training) networks."""
    return {
        "dqn": DQNAgent(models["dqn"], seed=seed),  # type: ignore[dict-item]
        "cnn": cnn_trainer(models["cnn"], seed=seed),  # type: ignore[dict-item]
        "cob_rl": COBActorCriticTrainer(models["cob_rl"], seed=seed),  # type: ignore[dict-item]
        "extrema": extrema_trainer(models["extrema"], seed=seed),  # type: ignore[dict-item]
    }


__all__ = ["COBActorCriticTrainer", "DQNAgent", "ReplayBuffer", "Trainer", "TrainingCase", "build_trainers"]
