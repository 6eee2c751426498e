"""The Extrema trainer: labels local tops/bottoms in a rolling window and learns to spot them early.

A bar is a top (bottom) when its high (low) is the extreme of the EXTREMA_HALF_WIDTH bars
on either side; the classifier sees the window only EXTREMA_DELAY bars after that bar,
long before the label is confirmed.
"""

from __future__ import annotations

from torch import nn

from .base import TrainingCase
from .supervised import ClassifierTrainer

__all__ = ["extrema_label", "extrema_trainer"]


def extrema_label(case: TrainingCase) -> int:
    return case.outcome.extrema


def extrema_trainer(model: nn.Module, seed: int, lr: float = 3e-4) -> ClassifierTrainer:
    return ClassifierTrainer("extrema", model, "extrema.window", extrema_label, seed=seed + 13, lr=lr)
