"""Serving copies: the weights that make decisions, switched only at fixed bars to a system checkpoint's weights.

Each model trains continuously, but its decisions are made by a frozen copy. The copy changes at one place
only: SERVING_LAG bars after a step-scheduled system checkpoint (a cut), to the weights that cut holds. Which
bar that is depends on the bar count alone, never on when the background writer happens to finish, so two
runs over the same bars decide alike, and a run resumed from a cut decides like one never interrupted.

At the switch the cut's version must be known, so every decision can name the exact version that made it
(replaying that version reproduces it bit for bit). The writer has had SERVING_LAG bars to register it;
if it has not, the switch waits for it. A cut member whose save failed leaves that model's serving copy as
it was (the only case in which serving depends on more than the bars: a store that refuses the save).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["SERVING_LAG", "Candidate", "ServingModel", "VersionResolver", "weights_of"]

#: Bars between a step-scheduled system checkpoint and the switch of the serving weights to it.
SERVING_LAG = 10

#: Resolves the registered version of a candidate (waiting for its registration); None when it failed.
VersionResolver = Callable[[], int | None]


@dataclass
class Candidate:
    """The weights of one model in a cut, waiting for the bar at which they start serving."""

    step: int
    weights: dict[str, torch.Tensor]
    resolve: VersionResolver


class ServingModel:
    """The frozen decision copy of one training model."""

    def __init__(self, name: str, model: nn.Module, version: int | None, step: int | None) -> None:
        self.name = name
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.version = version
        self.step = step

    def promote(self, candidate: Candidate) -> bool:
        """Serve the candidate's weights when its version registered; True when switched."""
        version = candidate.resolve()
        if version is None:
            return False
        self.module.load_state_dict(candidate.weights)
        self.version, self.step = version, candidate.step
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "weights": {k: v.detach().clone() for k, v in self.module.state_dict().items()},
            "version": self.version,
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["weights"])
        self.version, self.step = state["version"], state["step"]


def weights_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}
