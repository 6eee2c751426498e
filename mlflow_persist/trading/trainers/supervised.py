"""A supervised classifier trainer: replayed minibatches, cross-entropy, online accuracy."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .base import ReplayBuffer, TrainingCase


class ClassifierTrainer:
    """Trains ``model`` on (input tensor, class label) pairs drawn from recent matured cases.

    Metrics per step: ``loss`` (the minibatch cross-entropy), ``online_loss`` (the
    cross-entropy on the new case before learning from it), ``accuracy`` (the share of
    the last ``window`` new cases the model classified right before learning them).
    """

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
    ) -> None:
        self.name = name
        self.model = model
        self.input_key = input_key
        self._label = label
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
        self.batch_size = batch_size
        self.buffer = ReplayBuffer(capacity, seed)
        self._hits: deque[int] = deque(maxlen=window)

    @property
    def extra(self) -> None:
        return None

    def train(self, case: TrainingCase) -> dict[str, float]:
        features = case.tensors[self.input_key]
        label = torch.tensor([self._label(case)], dtype=torch.int64)
        self.buffer.add(x=features[0], y=label[0])
        batch = self.buffer.sample(min(self.batch_size, max(self.buffer.size, 1)))
        logits = self.model(batch["x"])
        per_sample = F.cross_entropy(logits, batch["y"], reduction="none")
        loss = per_sample.mean()
        # Row 0 is the new case, scored before the model learns from it: an honest online measure.
        online_loss = float(per_sample[0].item())
        self._hits.append(int(int(torch.argmax(logits[0]).item()) == int(label.item())))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {
            "loss": float(loss.item()),
            "online_loss": online_loss,
            "accuracy": sum(self._hits) / len(self._hits),
        }
