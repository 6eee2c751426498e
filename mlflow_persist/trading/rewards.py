"""Trade rewards: the PnL of holding a decision's position over the following bars, net of costs."""

from __future__ import annotations

from .market import COMMISSION, Outcome

__all__ = ["SCALE", "trade_reward"]

#: Rewards are expressed in basis points of the price.
SCALE = 1e4
_SIGN = {0: 0.0, 1: 1.0, 2: -1.0}


def trade_reward(action: int, outcome: Outcome) -> float:
    """Basis points earned by ``action`` (0 hold, 1 buy, 2 sell) over the horizon, less spread and commission."""
    sign = _SIGN[int(action)]
    if sign == 0.0:
        return 0.0
    return (sign * outcome.future_return - outcome.spread - COMMISSION) * SCALE
