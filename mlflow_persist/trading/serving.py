"""Serving copies: the weights that make decisions are always a registered checkpoint's weights.

Each model trains continuously, but its decisions are made by a frozen copy that only
changes when a checkpoint of the training model has been registered. So every decision
can name the exact version that made it, and replaying that version reproduces it bit for
bit. When a save is decided, the training weights are kept aside (a CPU copy, keyed by
step); once the handle reports a newer registered version, the copy whose step matches
that version becomes the serving model.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

#: ``(model name, version) -> the training step stored with that version``, or None when unknown.
VersionStep = Callable[[str, int], int | None]


class ServingModel:
    """The frozen decision copy of one training model, plus the candidate snapshots waiting for registration."""

    def __init__(self, name: str, model: nn.Module, version: int | None, step: int | None, max_candidates: int = 16) -> None:
        self.name = name
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.version = version
        self.step = step
        self.known_version = version
        self._candidates: OrderedDict[int, dict[str, torch.Tensor]] = OrderedDict()
        self._max_candidates = max_candidates

    def keep_candidate(self, step: int, model: nn.Module) -> None:
        """Remember the training weights of a save decided at ``step``."""
        self._candidates[step] = {key: value.detach().clone() for key, value in model.state_dict().items()}
        while len(self._candidates) > self._max_candidates:
            self._candidates.popitem(last=False)

    def observe(self, version: int | None, version_step: VersionStep) -> bool:
        """Switch to the weights of ``version`` once it is newer than the one known; True when switched."""
        if version is None or version == self.known_version:
            return False
        self.known_version = version
        step = version_step(self.name, version)
        if step is None or step not in self._candidates:
            return False
        self.module.load_state_dict(self._candidates[step])
        self.version, self.step = version, step
        for older in [s for s in self._candidates if s <= step]:
            del self._candidates[older]
        return True
