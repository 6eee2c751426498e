"""The COB RL trainer: advantage actor-critic on the (simulated) order-book features.

Each case is a one-step episode: the COB policy's own sampled action at the decision and
its reward (the horizon PnL of that action, net of spread and commission). The loss is
policy gradient with the critic's value as baseline, plus value regression and an entropy
bonus, on a minibatch of recent cases.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..rewards import trade_reward
from .base import RecentRewards, ReplayBuffer, RewardScored, TrainingCase

__all__ = ["REWARD_WINDOW", "COBActorCriticTrainer"]

#: Decisions whose mean reward is the COB policy's held-out score (its monitor, higher is better).
REWARD_WINDOW = 100


class COBActorCriticTrainer(RewardScored):
    def __init__(
        self,
        model: nn.Module,
        seed: int,
        lr: float = 3e-4,
        batch_size: int = 32,
        capacity: int = 512,
        value_coef: float = 0.5,
        entropy_coef: float = 0.01,
        reward_scale: float = 0.1,
    ) -> None:
        self.name = "cob_rl"
        self.recent = RecentRewards(REWARD_WINDOW)
        self.model = model
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
        self.batch_size = batch_size
        self.buffer = ReplayBuffer(capacity, seed + 17)
        self.value_coef = value_coef
        self.entropy_coef = entropy_coef
        self.reward_scale = reward_scale

    @property
    def extra(self) -> None:
        return None

    def train(self, case: TrainingCase) -> dict[str, float]:
        action = int(case.outputs["cob_rl.action"].item())
        reward = trade_reward(action, case.outcome)
        self.recent.add(reward)
        self.buffer.add(
            state=case.tensors["cob_rl.state"][0],
            action=torch.tensor(action, dtype=torch.int64),
            reward=torch.tensor(reward * self.reward_scale, dtype=torch.float32),
        )
        batch = self.buffer.sample(min(self.batch_size, self.buffer.size))
        logits, value = self.model(batch["state"])
        log_probs = F.log_softmax(logits, dim=-1)
        advantage = batch["reward"] - value.detach()
        policy_loss = -(log_probs.gather(1, batch["action"].unsqueeze(1)).squeeze(1) * advantage).mean()
        value_loss = F.mse_loss(value, batch["reward"])
        entropy = -(log_probs.exp() * log_probs).sum(dim=1).mean()
        loss = policy_loss + self.value_coef * value_loss - self.entropy_coef * entropy
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.optimizer.step()
        return {
            "loss": float(loss.item()),
            "policy_loss": float(policy_loss.item()),
            "value_loss": float(value_loss.item()),
            "entropy": float(entropy.item()),
            "reward": reward,
        }
