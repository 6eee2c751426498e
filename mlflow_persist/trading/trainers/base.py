"""What every trainer shares: the training case it learns from, a tensor replay buffer, the trainer protocol."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from ..market import Outcome

__all__ = ["RecentRewards", "ReplayBuffer", "RewardScored", "Trainer", "TrainingCase"]


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

    #: The metric ``evaluate()`` returns (the model's monitor) and whether higher is better.
    monitor: str
    higher_is_better: bool

    def evaluate(self) -> float:
        """The model's held-out score now (NaN while there is nothing to score on); changes no state."""

    def runtime_state(self) -> dict[str, Any]:
        """Everything the trainer keeps between cases beyond the model and optimizer: buffers, RNG
        streams, windows. Part of the trading system's state in every system checkpoint."""

    def load_runtime_state(self, state: dict[str, Any]) -> None: ...


class RecentRewards:
    """The rewards of the last ``size`` decisions; their mean is the RL models' held-out score."""

    def __init__(self, size: int) -> None:
        self.values: deque[float] = deque(maxlen=size)

    def add(self, reward: float) -> None:
        self.values.append(float(reward))

    def mean(self) -> float:
        return math.fsum(self.values) / len(self.values) if self.values else math.nan

    def state_dict(self) -> list[float]:
        return list(self.values)

    def load_state_dict(self, values: list[float]) -> None:
        self.values = deque((float(v) for v in values), maxlen=self.values.maxlen)


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

    def state_dict(self) -> dict[str, Any]:
        """Every stored row, the write position and the sampling generator's state: a restored buffer draws
        the same minibatches as the one that was saved."""
        return {
            "data": {key: value.clone() for key, value in self._data.items()},
            "next": self._next,
            "size": self.size,
            "last": getattr(self, "_last", 0),
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._data = {key: value.clone() for key, value in state["data"].items()}
        self._next, self.size, self._last = int(state["next"]), int(state["size"]), int(state["last"])
        self.generator.set_state(state["generator"])

    def sample(self, batch: int) -> dict[str, torch.Tensor]:
        """``batch`` rows drawn with replacement, always including the newest one."""
        index = torch.randint(0, self.size, (batch,), generator=self.generator)
        index[0] = self._last
        return {key: value[index] for key, value in self._data.items()}


class RewardScored:
    """For the RL trainers: the held-out score is the mean reward of the recent decisions (higher is
    better), and the runtime state is the replay buffer plus that reward window."""

    monitor = "mean_reward"
    higher_is_better = True
    buffer: ReplayBuffer
    recent: RecentRewards

    def evaluate(self) -> float:
        return self.recent.mean()

    def runtime_state(self) -> dict[str, Any]:
        return {"buffer": self.buffer.state_dict(), "recent": self.recent.state_dict()}

    def load_runtime_state(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self.recent.load_state_dict(state["recent"])
