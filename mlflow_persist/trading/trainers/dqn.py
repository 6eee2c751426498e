"""The DQN agent: policy and target networks, replay buffer, epsilon-greedy over hold/buy/sell.

A transition is (state at the decision, action, reward, state HORIZON bars later): the
reward is the PnL of the position over those bars net of spread and commission. The
policy is trained with Double-DQN targets and the Huber loss; the target network is
synced every ``target_sync`` updates. ``DQNAgent.state_dict()`` holds epsilon, the
counters and the target network, so the agent can be persisted as the checkpoint's extra state.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from ..rewards import trade_reward
from .base import RecentRewards, ReplayBuffer, RewardScored, TrainingCase

__all__ = ["REWARD_WINDOW", "DQNAgent"]

#: Decisions whose mean reward is the DQN's held-out score (its monitor, higher is better).
REWARD_WINDOW = 100


class DQNAgent(RewardScored):
    def __init__(
        self,
        model: nn.Module,
        seed: int,
        lr: float = 5e-4,
        gamma: float = 0.5,
        batch_size: int = 32,
        capacity: int = 10_000,
        epsilon_start: float = 1.0,
        epsilon_end: float = 0.05,
        epsilon_decay: float = 0.995,
        target_sync: int = 100,
        reward_scale: float = 0.1,
    ) -> None:
        self.name = "dqn"
        self.recent = RecentRewards(REWARD_WINDOW)
        self.model = model
        self.target = copy.deepcopy(model).eval()
        for parameter in self.target.parameters():
            parameter.requires_grad_(False)
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
        self.gamma = gamma
        self.batch_size = batch_size
        self.buffer = ReplayBuffer(capacity, seed + 7)
        self.epsilon = epsilon_start
        self.epsilon_end = epsilon_end
        self.epsilon_decay = epsilon_decay
        self.target_sync = target_sync
        self.reward_scale = reward_scale
        self.updates = 0
        self.target_syncs = 0
        self.total_reward = 0.0

    @property
    def extra(self) -> DQNAgent:
        return self

    def state_dict(self) -> dict[str, Any]:
        """Epsilon, counters and the target network (plain types and tensors, loadable with weights_only)."""
        return {
            "epsilon": float(self.epsilon),
            "updates": int(self.updates),
            "target_syncs": int(self.target_syncs),
            "total_reward": float(self.total_reward),
            "buffer_size": int(self.buffer.size),
            "target": {key: value.detach().clone() for key, value in self.target.state_dict().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epsilon = float(state["epsilon"])
        self.updates = int(state["updates"])
        self.target_syncs = int(state["target_syncs"])
        self.total_reward = float(state.get("total_reward", 0.0))
        self.target.load_state_dict(state["target"])

    def train(self, case: TrainingCase) -> dict[str, float]:
        reward = trade_reward(case.action, case.outcome)
        self.total_reward += reward
        self.recent.add(reward)
        self.buffer.add(
            state=case.tensors["dqn.state"][0],
            action=torch.tensor(case.action, dtype=torch.int64),
            reward=torch.tensor(reward * self.reward_scale, dtype=torch.float32),
            next_state=case.next_tensors["dqn.state"][0],
        )
        batch = self.buffer.sample(min(self.batch_size, self.buffer.size))
        size = batch["state"].shape[0]
        q_all = self.model(torch.cat([batch["state"], batch["next_state"]]))
        q_taken = q_all[:size].gather(1, batch["action"].unsqueeze(1)).squeeze(1)
        with torch.no_grad():
            best_next = q_all[size:].argmax(dim=1, keepdim=True)
            next_q = self.target(batch["next_state"]).gather(1, best_next).squeeze(1)
            target = batch["reward"] + self.gamma * next_q
        loss = F.smooth_l1_loss(q_taken, target)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
        self.optimizer.step()
        self.updates += 1
        if self.updates % self.target_sync == 0:
            self.target.load_state_dict(self.model.state_dict())
            self.target_syncs += 1
        self.epsilon = max(self.epsilon_end, self.epsilon * self.epsilon_decay)
        return {
            "loss": float(loss.item()),
            "reward": reward,
            "epsilon": self.epsilon,
            "mean_q": float(q_taken.mean().item()),
        }
