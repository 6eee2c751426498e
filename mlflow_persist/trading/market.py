"""The market view the models see: bars with indicators, the simulated COB and the frames of one decision."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mlflow_persist.errors import ConfigError

from .cob import DEFAULT_LEVELS, imbalance, simulate_cob
from .cob import spread as book_spread
from .data import load_bars
from .indicators import WARMUP_BARS, add_indicators

__all__ = [
    "COMMISSION",
    "DRAW_COLUMNS",
    "EXTREMA_DELAY",
    "EXTREMA_HALF_WIDTH",
    "FLAT_RETURN",
    "HORIZON",
    "WINDOW",
    "Draws",
    "MarketData",
    "Outcome",
]

#: Bars in the window every model's features are computed from.
WINDOW = 32
#: Bars after a decision until its outcome (reward, labels) is known.
HORIZON = 4
#: Extrema labelling: a bar is a top/bottom when it is the extreme of +-EXTREMA_HALF_WIDTH bars,
#: and the detector sees it EXTREMA_DELAY bars after it happened.
EXTREMA_HALF_WIDTH = 5
EXTREMA_DELAY = 2
#: Next-bar moves smaller than this (as a return) are labelled "flat" for the CNN.
FLAT_RETURN = 0.0006
#: Transaction cost per trade on top of the simulated spread, as a return.
COMMISSION = 0.00002

DRAW_COLUMNS: tuple[str, ...] = ("epsilon", "explore_u", "explore_action", "cob_u")


@dataclass(frozen=True)
class Draws:
    """The random inputs of one decision (recorded, so the decision can be replayed exactly)."""

    epsilon: float
    explore_u: float
    explore_action: int
    cob_u: float

    @classmethod
    def generate(cls, seed: int, step: int, epsilon: float) -> Draws:
        """Draws for decision ``step`` of a run seeded ``seed``: a pure function of both."""
        rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(step), 0xD1CE])
        return cls(float(epsilon), float(rng.random()), int(rng.integers(0, 3)), float(rng.random()))

    def frame(self) -> pd.DataFrame:
        """One row: epsilon, explore_u, cob_u (float64) and explore_action (int64)."""
        return pd.DataFrame(
            {
                "epsilon": np.array([self.epsilon], dtype="float64"),
                "explore_u": np.array([self.explore_u], dtype="float64"),
                "explore_action": np.array([self.explore_action], dtype="int64"),
                "cob_u": np.array([self.cob_u], dtype="float64"),
            }
        )


@dataclass(frozen=True)
class Outcome:
    """What became known HORIZON bars after a decision at ``position``."""

    position: int
    future_return: float  # close[p+HORIZON] / close[p] - 1
    next_return: float  # close[p+1] / close[p] - 1
    direction: int  # 0 down, 1 flat, 2 up (next bar)
    extrema: int  # 0 none, 1 top, 2 bottom (for bar p-EXTREMA_DELAY)
    spread: float  # the simulated spread at the decision, as a return


class MarketData:
    """Bars + indicators over the bundled history, and the per-decision frames derived from them."""

    def __init__(self, seed: int, bars: pd.DataFrame | None = None, levels: int = DEFAULT_LEVELS) -> None:
        raw = load_bars() if bars is None else bars
        self.frame = add_indicators(raw)
        self.seed = int(seed)
        self.levels = levels
        self.first = max(WARMUP_BARS + WINDOW, EXTREMA_HALF_WIDTH + EXTREMA_DELAY + WINDOW)
        # The last decision bar must leave HORIZON future bars for its outcome.
        self.end = len(self.frame) - HORIZON
        if self.end - self.first < 2:
            raise ConfigError(
                f"The market data has {len(self.frame)} bars; at least {self.first + HORIZON + 2} are needed."
            )
        self._values = self.frame.to_numpy(dtype="float64")
        self._columns = {name: self.frame[name].to_numpy() for name in self.frame.columns}
        self._close = self._columns["close"]
        self._high = self._columns["high"]
        self._low = self._columns["low"]

    def window(self, position: int) -> pd.DataFrame:
        """The WINDOW bars ending at ``position`` (inclusive), with every indicator."""
        rows = slice(position - WINDOW + 1, position + 1)
        return pd.DataFrame(self._values[rows].copy(), index=self.frame.index[rows], columns=self.frame.columns)

    def book(self, position: int) -> pd.DataFrame:
        bar = {name: float(values[position]) for name, values in self._columns.items()}
        return simulate_cob(bar, position, self.seed, self.levels)

    def frames(self, position: int, draws: Draws) -> dict[str, pd.DataFrame]:
        """Every input frame of the decision at ``position``: ``bars``, ``cob`` and ``draws``."""
        return {"bars": self.window(position), "cob": self.book(position), "draws": draws.frame()}

    def outcome(self, position: int, book: pd.DataFrame) -> Outcome:
        close = self._close
        next_return = close[position + 1] / close[position] - 1.0
        if next_return > FLAT_RETURN:
            direction = 2
        elif next_return < -FLAT_RETURN:
            direction = 0
        else:
            direction = 1
        return Outcome(
            position=position,
            future_return=float(close[position + HORIZON] / close[position] - 1.0),
            next_return=float(next_return),
            direction=direction,
            extrema=self.extrema_label(position - EXTREMA_DELAY),
            spread=book_spread(book) / float(close[position]),
        )

    def extrema_label(self, candidate: int) -> int:
        """1 when bar ``candidate`` is the highest high of its +-EXTREMA_HALF_WIDTH neighbourhood, 2 the lowest low, else 0."""
        lo, hi = candidate - EXTREMA_HALF_WIDTH, candidate + EXTREMA_HALF_WIDTH + 1
        if self._high[candidate] >= self._high[lo:hi].max():
            return 1
        if self._low[candidate] <= self._low[lo:hi].min():
            return 2
        return 0

    def conditions(self, position: int, book: pd.DataFrame) -> dict[str, float | str]:
        """Market conditions at a bar: volatility regime, spread and trend."""
        atr = self._columns["atr"]
        history = atr[max(0, position - 500) : position + 1]
        rank = float((history <= atr[position]).mean())
        regime = "high" if rank > 0.8 else "low" if rank < 0.2 else "normal"
        current_atr = float(atr[position])
        trend_strength = float(self._columns["macd"][position]) / current_atr if current_atr > 0 else 0.0
        trend = "up" if trend_strength > 0.25 else "down" if trend_strength < -0.25 else "flat"
        return {
            "volatility_regime": regime,
            "atr": current_atr,
            "atr_percentile": rank,
            "spread": book_spread(book),
            "imbalance": imbalance(book),
            "trend": trend,
            "trend_strength": trend_strength,
        }
