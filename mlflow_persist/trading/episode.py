"""One recorded decision (a training case with its complete context), handed to an episode recorder.

The episode recorder (``mlflow_persist.episodes``) owns the stored schema; this is the
trading system's side: plain data, with every input frame and tensor of the decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import pandas as pd
import torch

from .models import ACTIONS


@dataclass
class TradingEpisode:
    """Everything that led to one decision and what came of it.

    - ``frames``: the complete input frames (``bars``: the window with every indicator;
      ``cob``: the simulated book levels; ``draws``: the random inputs of the decision).
      ``replay.features_from_frames(frames)`` rebuilds ``tensors`` exactly.
    - ``tensors``: the exact inputs per model (``dqn.state``, ``cnn.window``, ``cob_rl.state``,
      ``extrema.window``, plus the draws ``dqn.epsilon``, ``dqn.explore_u``,
      ``dqn.explore_action``, ``cob_rl.sample_u``).
    - ``outputs``: every model's outputs from ``replay.decide``.
    - ``checkpoint_versions``: the registered version whose weights made the decision, per
      model (None when the weights were not registered: the seeded initial weights, see
      ``checkpoint_steps`` and ``rng["model_seed"]``, or a save still in flight).
    - ``checkpoint_steps``: the training step of those weights (the version's ``step`` tag),
      None for the initial weights.
    """

    episode_id: str
    step: int
    position: int
    bar_time: pd.Timestamp
    wall_time: float
    frames: dict[str, pd.DataFrame]
    tensors: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    action: int
    reward: float
    checkpoint_versions: dict[str, int | None]
    checkpoint_steps: dict[str, int | None]
    market: dict[str, Any]
    rng: dict[str, Any]
    rewards: dict[str, float] = field(default_factory=dict)

    @property
    def action_name(self) -> str:
        return ACTIONS[self.action]

    def to_dict(self) -> dict[str, Any]:
        """A shallow dict of the fields (frames and tensors are not copied)."""
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["action_name"] = self.action_name
        return data


class EpisodeRecorder(Protocol):
    def record(self, episode: TradingEpisode) -> None:
        """Take one episode; must be cheap (buffer it, write it elsewhere)."""


__all__ = ["EpisodeRecorder", "TradingEpisode"]
