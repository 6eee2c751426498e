"""What every trainer shares: the training case it learns from, a tensor replay buffer, the trainer protocol."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from ..market import Outcome


@dataclass
class TrainingCase:
    """One decision whose outcome is now known."""

    tensors: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    action: int
    outcome: Outcome
    next_tensors: dict[str, torch.Tensor] = field(default_factory=dict)


class Trainer(Protocol):
    """A model with its own optimiser and training step."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer

    @property
    def extra(self) -> Any | None:
        """An object with state_dict()/load_state_dict() persisted with the checkpoint, or None."""

    def train(self, case: TrainingCase) -> dict[str, float]:
        """Learn from one case; returns metrics, always with ``loss``."""


class ReplayBuffer:
    """A fixed-capacity ring of equally shaped tensors per field, sampled with its own seeded generator."""

    def __init__(self, capacity: int, seed: int) -> None:
        self.capacity = capacity
        self._data: dict[str, torch.Tensor] = {}
        self._next = 0
        self.size = 0
        self.generator = torch.Generator().manual_seed(int(seed))

    def add(self, **items: torch.Tensor) -> None:
        for key, value in items.items():
            value = value.detach()
            if key not in self._data:
                self._data[key] = torch.zeros((self.capacity, *value.shape), dtype=value.dtype)
            self._data[key][self._next] = value
        self._last = self._next
        self._next = (self._next + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch: int) -> dict[str, torch.Tensor]:
        """``batch`` rows drawn with replacement, always including the newest one."""
        index = torch.randint(0, self.size, (batch,), generator=self.generator)
        index[0] = self._last
        return {key: value[index] for key, value in self._data.items()}
