"""Tiny stand-ins for the trading system's four models, small enough to commit as fixtures.

The whole-module pickle in the legacy fixture refers to `mlruns_fixtures.legacy_models.TinyCOBPolicy`,
so this module must stay importable under that name for a trusted load to work.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyCNN(nn.Module):
    """A one-convolution price model (input: batch x 2 channels x length)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(2, 4, kernel_size=3)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(torch.relu(self.conv(x))).squeeze(-1))


class TinyQNet(nn.Module):
    """The DQN agent's policy/target network."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


class TinyCOBPolicy(nn.Module):
    """The COB RL policy; carries a buffer so conversions must keep buffers too."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.register_buffer("feature_mean", torch.zeros(6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x - self.feature_mean)


class TinyExtrema(nn.Module):
    """The extrema (local tops/bottoms) classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


class TinyDQNAgent:
    """The legacy DQN agent object: two networks, an optimizer and an exploration rate."""

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.policy_net = TinyQNet()
        self.target_net = TinyQNet()
        self.target_net.load_state_dict(self.policy_net.state_dict())
        self.optimizer = torch.optim.Adam(self.policy_net.parameters(), lr=1e-3)
        self.epsilon = 0.5
        self.steps_done = 0
        self.memory: list[int] = []
