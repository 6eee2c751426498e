"""Pure replay functions: rebuild a decision's tensors from its recorded frames and re-run it.

``features_from_frames(frames)`` rebuilds every input tensor (features and the recorded
random draws), ``build_model(name)`` makes a network to load a checkpoint into, and
``decide(models, tensors)`` makes the decision. On CPU the same weights and frames give
bit-identical tensors, outputs and action.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .features import features_from_frames
from .models import ACTIONS, MODEL_NAMES, build_model

__all__ = ["ACTIONS", "MODEL_NAMES", "build_model", "decide", "features_from_frames"]


def _sample(probs: torch.Tensor, u: float) -> int:
    """Inverse-CDF sample of one index from a probability row, given a uniform draw in [0, 1)."""
    cumulative = torch.cumsum(probs.to(torch.float64), dim=0)
    index = int(torch.searchsorted(cumulative, torch.tensor([u], dtype=torch.float64), right=True).item())
    return min(index, probs.numel() - 1)


@torch.no_grad()
def decide(models: Mapping[str, nn.Module], tensors: Mapping[str, torch.Tensor]) -> tuple[int, dict[str, torch.Tensor]]:
    """The trading action (an index into ACTIONS, chosen by the DQN epsilon-greedy) and every model's outputs."""
    q_values = models["dqn"](tensors["dqn.state"])
    greedy = int(torch.argmax(q_values[0]).item())
    explore = float(tensors["dqn.explore_u"].item()) < float(tensors["dqn.epsilon"].item())
    action = int(tensors["dqn.explore_action"].item()) if explore else greedy

    cnn_logits = models["cnn"](tensors["cnn.window"])
    cob_logits, cob_value = models["cob_rl"](tensors["cob_rl.state"])
    cob_probs = torch.softmax(cob_logits, dim=-1)
    cob_action = _sample(cob_probs[0], float(tensors["cob_rl.sample_u"].item()))
    extrema_logits = models["extrema"](tensors["extrema.window"])

    outputs = {
        "dqn.q": q_values,
        "dqn.greedy_action": torch.tensor([greedy], dtype=torch.int64),
        "dqn.explored": torch.tensor([explore], dtype=torch.bool),
        "cnn.logits": cnn_logits,
        "cnn.probs": torch.softmax(cnn_logits, dim=-1),
        "cob_rl.logits": cob_logits,
        "cob_rl.probs": cob_probs,
        "cob_rl.value": cob_value,
        "cob_rl.action": torch.tensor([cob_action], dtype=torch.int64),
        "extrema.logits": extrema_logits,
        "extrema.probs": torch.softmax(extrema_logits, dim=-1),
    }
    return action, outputs
