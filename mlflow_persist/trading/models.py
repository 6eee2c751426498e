"""The four small PyTorch networks of the reference trading system.

None uses dropout or batch normalisation, so train and eval mode compute the same
function and a decision is deterministic on CPU. :func:`build_model` gives each name's
network with initial weights fixed by a seed (so version "none yet" can be replayed).
"""

from __future__ import annotations

import torch
from torch import nn

from mlflow_persist.errors import NotFoundError

from .cob import DEFAULT_LEVELS
from .features import CNN_CHANNELS, DQN_STATE_DIM, EXTREMA_DIM

__all__ = [
    "ACTIONS",
    "COB_STATE_DIM",
    "MODEL_NAMES",
    "N_ACTIONS",
    "COBActorCritic",
    "ExtremaNet",
    "PriceCNN",
    "QNetwork",
    "build_model",
]

ACTIONS: tuple[str, ...] = ("hold", "buy", "sell")
N_ACTIONS = len(ACTIONS)
MODEL_NAMES: tuple[str, ...] = ("dqn", "cnn", "cob_rl", "extrema")
COB_STATE_DIM = 2 * DEFAULT_LEVELS + 6


class QNetwork(nn.Module):
    """Q-values of hold/buy/sell from the DQN state."""

    def __init__(self, state_dim: int = DQN_STATE_DIM, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(state_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, N_ACTIONS)
        )

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state)


class PriceCNN(nn.Module):
    """1-D convolutions over the bar window; logits of next-bar down/flat/up."""

    def __init__(self, channels: int = CNN_CHANNELS, width: int = 16) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(channels, width, kernel_size=5, padding=2),
            nn.ReLU(),
            nn.Conv1d(width, width, kernel_size=5, padding=2),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Linear(2 * width, 32), nn.ReLU(), nn.Linear(32, 3))

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        hidden = self.conv(window)
        pooled = torch.cat([hidden.mean(dim=2), hidden[:, :, -1]], dim=1)
        return self.head(pooled)


class COBActorCritic(nn.Module):
    """Policy logits over hold/buy/sell and a state value from the COB features."""

    def __init__(self, state_dim: int = COB_STATE_DIM, hidden: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(state_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh())
        self.policy = nn.Linear(hidden, N_ACTIONS)
        self.value = nn.Linear(hidden, 1)

    def forward(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.body(state)
        return self.policy(hidden), self.value(hidden).squeeze(-1)


class ExtremaNet(nn.Module):
    """Logits of none/top/bottom for the bar EXTREMA_DELAY bars back."""

    def __init__(self, input_dim: int = EXTREMA_DIM, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(input_dim, hidden), nn.ReLU(), nn.Linear(hidden, 32), nn.ReLU(), nn.Linear(32, 3)
        )

    def forward(self, window: torch.Tensor) -> torch.Tensor:
        return self.net(window)


_BUILDERS: dict[str, type[nn.Module]] = {
    "dqn": QNetwork,
    "cnn": PriceCNN,
    "cob_rl": COBActorCritic,
    "extrema": ExtremaNet,
}


def build_model(name: str, seed: int = 0) -> nn.Module:
    """An untrained network for ``name`` whose initial weights depend only on ``seed`` (in eval mode)."""
    if name not in _BUILDERS:
        raise NotFoundError(f"Unknown trading model {name!r}; choose one of {', '.join(MODEL_NAMES)}.")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed) * 1009 + MODEL_NAMES.index(name))
        model = _BUILDERS[name]()
    return model.eval()
