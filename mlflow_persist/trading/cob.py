"""A SIMULATED consolidated order book (COB) per bar.

There is no real order-book data in this project: the hourly EURUSD bars carry only
open/high/low/close/volume. This module derives a plausible multi-level book from
each bar so that the COB RL model has order-book-shaped input. Nothing in it is
market data; do not read any microstructure conclusion from it.

How a book for bar ``t`` is made (all from bar ``t`` and earlier, never later bars):

- mid price = the bar's close; the spread widens with the bar's volatility
  (ATR relative to price) and gets a little seeded noise, floored at 0.2 pip;
- ``levels`` price levels on each side, one tick (0.5 pip) apart beyond the touch;
- sizes follow a depth profile scaled by the bar's volume, with log-normal noise;
- a buy/sell pressure tilt (where the close sits in the bar's range, and the bar's
  return) shifts size from one side to the other, so imbalance loosely tracks recent
  pressure.

The noise comes from ``numpy.random.default_rng([seed, position])``: the same seed and
bar position always give the same book, whatever order bars are visited in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

__all__ = ["COB_COLUMNS", "DEFAULT_LEVELS", "MIN_SPREAD", "TICK", "imbalance", "simulate_cob", "spread"]

DEFAULT_LEVELS = 10
TICK = 0.00005
MIN_SPREAD = 0.00002
COB_COLUMNS: tuple[str, ...] = ("bid_price", "bid_size", "ask_price", "ask_size")


def simulate_cob(bar: Mapping[str, float], position: int, seed: int, levels: int = DEFAULT_LEVELS) -> pd.DataFrame:
    """Return the simulated book for one bar: one row per level (0 = touch), float64 prices and sizes.

    ``bar`` needs ``high, low, close, volume, ret, atr`` (see :mod:`.indicators`).
    """
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(position)])
    close = float(bar["close"])
    high, low = float(bar["high"]), float(bar["low"])
    atr = float(bar["atr"]) if math.isfinite(bar["atr"]) else high - low
    ret = float(bar["ret"]) if math.isfinite(bar["ret"]) else 0.0
    noise = rng.normal(0.0, 1.0, 2 * levels + 1)
    spread = max(MIN_SPREAD, 0.00006 + 0.05 * atr) * math.exp(0.15 * noise[0])
    depth = np.arange(levels, dtype="float64")
    bid_price = close - spread / 2.0 - depth * TICK
    ask_price = close + spread / 2.0 + depth * TICK

    bar_range = high - low
    location = (close - low) / bar_range - 0.5 if bar_range > 0 else 0.0
    pressure = math.tanh(1.5 * location + 300.0 * ret)
    base = 1.0 + math.log1p(max(float(bar["volume"]), 0.0) / 1e9)
    profile = base * (1.0 + 0.35 * depth) * np.exp(-0.08 * depth)
    bid_size = profile * (1.0 + 0.4 * pressure) * np.exp(0.25 * noise[1 : levels + 1])
    ask_size = profile * (1.0 - 0.4 * pressure) * np.exp(0.25 * noise[levels + 1 :])
    values = np.column_stack([bid_price, bid_size, ask_price, ask_size]).astype("float64")
    return pd.DataFrame(values, columns=list(COB_COLUMNS), index=pd.RangeIndex(levels, name="level"))


def imbalance(book: pd.DataFrame, depth: int | None = None) -> float:
    """Size imbalance (bid - ask) / (bid + ask) over the first ``depth`` levels, in [-1, 1]."""
    bid_sizes, ask_sizes = book["bid_size"].to_numpy(), book["ask_size"].to_numpy()
    if depth is not None:
        bid_sizes, ask_sizes = bid_sizes[:depth], ask_sizes[:depth]
    bid, ask = float(bid_sizes.sum()), float(ask_sizes.sum())
    return (bid - ask) / (bid + ask) if bid + ask > 0 else 0.0


def spread(book: pd.DataFrame) -> float:
    """Best ask minus best bid."""
    return float(book["ask_price"].to_numpy()[0] - book["bid_price"].to_numpy()[0])
