"""A supervised classifier trainer: a held-out window of the newest cases, replayed minibatches of older ones.

The newest HOLDOUT matured cases are held out: the model has not trained on them yet, and their mean
cross-entropy (``evaluate()``) is the model's monitor, as a validation loss is elsewhere. A case leaves the
window into the replay buffer after HOLDOUT more cases have matured, and only then is trained on.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from .base import ReplayBuffer, TrainingCase

__all__ = ["HOLDOUT", "ClassifierTrainer"]

#: Newest matured cases held out of training; they score the model.
HOLDOUT = 48


class ClassifierTrainer:
    """Trains ``model`` on (input tensor, class label) pairs drawn from matured cases older than the holdout.

    Metrics per step: ``loss`` (the minibatch cross-entropy; before the holdout is full, the new case's
    cross-entropy without an update), ``online_loss`` (the cross-entropy on the new case as it arrives),
    ``accuracy`` (the share of the last ``window`` new cases classified right as they arrived).
    """

    monitor = "heldout_loss"
    higher_is_better = False

    def __init__(
        self,
        name: str,
        model: nn.Module,
        input_key: str,
        label: Callable[[TrainingCase], int],
        seed: int,
        lr: float = 3e-4,
        batch_size: int = 32,
        capacity: int = 4096,
        window: int = 200,
        holdout: int = HOLDOUT,
    ) -> None:
        self.name = name
        self.model = model
        self.input_key = input_key
        self._label = label
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
        self.batch_size = batch_size
        self.buffer = ReplayBuffer(capacity, seed)
        self._hits: deque[int] = deque(maxlen=window)
        self.holdout: deque[tuple[torch.Tensor, torch.Tensor]] = deque()
        self.holdout_size = holdout

    @property
    def extra(self) -> None:
        return None

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean cross-entropy on the held-out cases (NaN until the window is full)."""
        if len(self.holdout) < self.holdout_size:
            return math.nan
        x = torch.stack([x for x, _ in self.holdout])
        y = torch.stack([y for _, y in self.holdout])
        return float(F.cross_entropy(self.model(x), y).item())

    def runtime_state(self) -> dict[str, Any]:
        return {
            "buffer": self.buffer.state_dict(),
            "hits": list(self._hits),
            "holdout_x": [x.clone() for x, _ in self.holdout],
            "holdout_y": [y.clone() for _, y in self.holdout],
        }

    def load_runtime_state(self, state: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state["buffer"])
        self._hits = deque((int(h) for h in state["hits"]), maxlen=self._hits.maxlen)
        self.holdout = deque(zip(state["holdout_x"], state["holdout_y"]))

    def train(self, case: TrainingCase) -> dict[str, float]:
        features = case.tensors[self.input_key][0].detach()
        label = torch.tensor(self._label(case), dtype=torch.int64)
        with torch.no_grad():
            arrival = self.model(features.unsqueeze(0))
            online_loss = float(F.cross_entropy(arrival, label.unsqueeze(0)).item())
        self._hits.append(int(int(torch.argmax(arrival[0]).item()) == int(label.item())))
        self.holdout.append((features, label))
        metrics = {"online_loss": online_loss, "accuracy": sum(self._hits) / len(self._hits)}
        if len(self.holdout) <= self.holdout_size:
            return {"loss": online_loss, **metrics}
        x, y = self.holdout.popleft()  # it leaves the holdout: now it may be learned from
        self.buffer.add(x=x, y=y)
        batch = self.buffer.sample(min(self.batch_size, self.buffer.size))
        loss = F.cross_entropy(self.model(batch["x"]), batch["y"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"loss": float(loss.item()), **metrics}
