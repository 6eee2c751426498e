"""The CNN price model's trainer: next-bar direction (down/flat/up) from the bar window."""

from __future__ import annotations

from torch import nn

from .base import TrainingCase
from .supervised import ClassifierTrainer

__all__ = ["cnn_trainer", "direction_label"]


def direction_label(case: TrainingCase) -> int:
    return case.outcome.direction


def cnn_trainer(model: nn.Module, seed: int, lr: float = 3e-4) -> ClassifierTrainer:
    return ClassifierTrainer("cnn", model, "cnn.window", direction_label, seed=seed + 11, lr=lr)
