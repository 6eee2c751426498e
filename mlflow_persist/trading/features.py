"""Model inputs as pure functions of a decision's frames (``bars``, ``cob``, ``draws``).

Everything is computed in float64 with numpy from the frames alone and converted to
float32 tensors at the end, so the same frames always give bit-identical tensors.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import torch

from .cob import TICK

__all__ = [
    "CNN_CHANNELS",
    "DQN_RETURNS",
    "DQN_STATE_DIM",
    "EXTREMA_BARS",
    "EXTREMA_DIM",
    "cnn_window",
    "cob_state",
    "dqn_state",
    "draw_tensors",
    "extrema_window",
    "features_from_frames",
]

DQN_RETURNS = 16
EXTREMA_BARS = 16
CNN_CHANNELS = 10
DQN_STATE_DIM = DQN_RETURNS + 8
EXTREMA_DIM = EXTREMA_BARS * 3 + 2


def _clip(values: np.ndarray, bound: float = 5.0) -> np.ndarray:
    return np.clip(np.nan_to_num(values, nan=0.0, posinf=bound, neginf=-bound), -bound, bound)


_UNITS_PER_HOUR = {"s": 3600, "ms": 3_600_000, "us": 3_600_000_000, "ns": 3_600_000_000_000}


def _hour_phase(index: pd.DatetimeIndex) -> tuple[np.ndarray, np.ndarray]:
    """Hour of day (UTC) as a point on the unit circle."""
    per_hour = _UNITS_PER_HOUR[index.unit]
    hours = (index.asi8 % (24 * per_hour)).astype("float64") / per_hour
    angle = 2.0 * np.pi * hours / 24.0
    return np.sin(angle), np.cos(angle)


def _tensor(values: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(torch.float32).unsqueeze(0)


class _Columns:
    """Column access on one float64 block of the bar window (much cheaper than pandas column lookups)."""

    def __init__(self, bars: pd.DataFrame) -> None:
        self.values = bars.to_numpy(dtype="float64")
        self.columns = bars.columns
        self.index = pd.DatetimeIndex(bars.index)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.values[:, self.columns.get_loc(name)]


def _columns(bars: pd.DataFrame | _Columns) -> _Columns:
    return bars if isinstance(bars, _Columns) else _Columns(bars)


def dqn_state(bars: pd.DataFrame | _Columns) -> torch.Tensor:
    """(1, DQN_STATE_DIM): the last returns and the latest indicators."""
    col = _columns(bars)
    atr = col["atr"][-1]
    returns = col["log_ret"][-DQN_RETURNS:] * 1000.0
    sin, cos = _hour_phase(col.index[-1:])
    extra = np.array(
        [
            col["rsi"][-1] / 100.0 - 0.5,
            col["macd_hist"][-1] / atr,
            col["bb_pct_b"][-1] - 0.5,
            col["bb_width"][-1] * 100.0,
            atr / col["close"][-1] * 1000.0,
            col["volume_z"][-1] / 3.0,
            sin[0],
            cos[0],
        ]
    )
    return _tensor(_clip(np.concatenate([returns, extra])))


def cnn_window(bars: pd.DataFrame | _Columns) -> torch.Tensor:
    """(1, CNN_CHANNELS, len(bars)): per-bar channels for the 1-D convolutions."""
    col = _columns(bars)
    close, atr = col["close"], col["atr"]
    sin, cos = _hour_phase(col.index)
    channels = np.stack(
        [
            col["log_ret"] * 1000.0,
            (col["high"] - col["low"]) / close * 1000.0,
            (close - col["open"]) / close * 1000.0,
            col["rsi"] / 100.0 - 0.5,
            col["macd_hist"] / atr,
            col["bb_pct_b"] - 0.5,
            col["volume_z"] / 3.0,
            (close - col["bb_mid"]) / atr,
            sin,
            cos,
        ]
    )
    return _tensor(_clip(channels))


def cob_state(cob: pd.DataFrame, bars: pd.DataFrame | _Columns) -> torch.Tensor:
    """(1, 2*levels + 6): normalised level sizes, cumulative imbalances, spread in ticks, last return."""
    book = _Columns(cob)
    bid, ask = book["bid_size"], book["ask_size"]
    total = bid.sum() + ask.sum()
    cum_bid, cum_ask = np.cumsum(bid), np.cumsum(ask)
    depths = [d for d in (1, 3, 5) if d <= len(bid)] + [len(bid)]
    imbalances = [(cum_bid[d - 1] - cum_ask[d - 1]) / (cum_bid[d - 1] + cum_ask[d - 1]) for d in depths]
    spread_ticks = (book["ask_price"][0] - book["bid_price"][0]) / TICK
    last_return = _columns(bars)["log_ret"][-1] * 1000.0
    values = np.concatenate([bid / total * len(bid), ask / total * len(ask), imbalances, [spread_ticks, last_return]])
    return _tensor(_clip(values))


def extrema_window(bars: pd.DataFrame | _Columns) -> torch.Tensor:
    """(1, EXTREMA_DIM): the last bars' highs/lows relative to the latest close in ATRs, returns, RSI, %b."""
    col = _columns(bars)
    close, atr = col["close"][-1], col["atr"][-1]
    values = np.concatenate(
        [
            (col["high"][-EXTREMA_BARS:] - close) / atr,
            (col["low"][-EXTREMA_BARS:] - close) / atr,
            col["log_ret"][-EXTREMA_BARS:] * 1000.0,
            [col["rsi"][-1] / 100.0 - 0.5, col["bb_pct_b"][-1] - 0.5],
        ]
    )
    return _tensor(_clip(values))


def draw_tensors(draws: pd.DataFrame) -> dict[str, torch.Tensor]:
    """The recorded random inputs as tensors: epsilon, the exploration draw and action, the COB policy draw."""

    def first(name: str) -> np.ndarray:
        return draws[name].to_numpy()[:1]

    return {
        "dqn.epsilon": torch.tensor(first("epsilon").astype("float64")),
        "dqn.explore_u": torch.tensor(first("explore_u").astype("float64")),
        "dqn.explore_action": torch.tensor(first("explore_action").astype("int64")),
        "cob_rl.sample_u": torch.tensor(first("cob_u").astype("float64")),
    }


def features_from_frames(frames: Mapping[str, pd.DataFrame]) -> dict[str, torch.Tensor]:
    """Every tensor the decision uses, rebuilt from the frames only."""
    bars, cob = _Columns(frames["bars"]), frames["cob"]
    tensors = {
        "dqn.state": dqn_state(bars),
        "cnn.window": cnn_window(bars),
        "cob_rl.state": cob_state(cob, bars),
        "extrema.window": extrema_window(bars),
    }
    tensors.update(draw_tensors(frames["draws"]))
    return tensors
