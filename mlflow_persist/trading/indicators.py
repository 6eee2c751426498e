"""Causal technical indicators computed with pandas from OHLCV bars.

Every value at bar ``t`` uses bars ``<= t`` only (rolling windows and exponential
averages never look ahead), so computing them once over the whole history is the
same as computing them bar by bar while streaming.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "ATR_PERIOD",
    "INDICATOR_COLUMNS",
    "RSI_PERIOD",
    "VOLUME_PERIOD",
    "WARMUP_BARS",
    "add_indicators",
    "atr",
    "bollinger",
    "macd",
    "rsi",
]

RSI_PERIOD = 14
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
BOLLINGER_PERIOD, BOLLINGER_STD = 20, 2.0
ATR_PERIOD = 14
VOLUME_PERIOD = 20

INDICATOR_COLUMNS: tuple[str, ...] = (
    "ret",
    "log_ret",
    "rsi",
    "macd",
    "macd_signal",
    "macd_hist",
    "bb_mid",
    "bb_upper",
    "bb_lower",
    "bb_pct_b",
    "bb_width",
    "atr",
    "volume_z",
)

#: Bars needed before every indicator is defined (the MACD signal line is the slowest).
WARMUP_BARS = MACD_SLOW + MACD_SIGNAL + 1


def rsi(close: pd.Series, period: int = RSI_PERIOD) -> pd.Series:
    """Wilder's relative strength index in [0, 100]."""
    delta = close.diff()
    gain = delta.clip(lower=0.0).ewm(alpha=1.0 / period, adjust=False, min_periods=period).mean()
    loss = (-delta.clip(upper=0.0)).ewm(alpha=1.0 / period, adjust=False, min_periods=period).mean()
    total = gain + loss
    value = 100.0 * gain / total.where(total > 0)
    return value.fillna(50.0).where(gain.notna())


def macd(close: pd.Series) -> pd.DataFrame:
    """MACD line, signal line and histogram."""
    fast = close.ewm(span=MACD_FAST, adjust=False, min_periods=MACD_FAST).mean()
    slow = close.ewm(span=MACD_SLOW, adjust=False, min_periods=MACD_SLOW).mean()
    line = fast - slow
    signal = line.ewm(span=MACD_SIGNAL, adjust=False, min_periods=MACD_SIGNAL).mean()
    return pd.DataFrame({"macd": line, "macd_signal": signal, "macd_hist": line - signal})


def bollinger(close: pd.Series) -> pd.DataFrame:
    """Bollinger bands (mid, upper, lower), %b and relative band width."""
    mid = close.rolling(BOLLINGER_PERIOD).mean()
    std = close.rolling(BOLLINGER_PERIOD).std(ddof=0)
    upper = mid + BOLLINGER_STD * std
    lower = mid - BOLLINGER_STD * std
    width = upper - lower
    pct_b = (close - lower) / width.where(width > 0)
    return pd.DataFrame(
        {
            "bb_mid": mid,
            "bb_upper": upper,
            "bb_lower": lower,
            "bb_pct_b": pct_b.fillna(0.5).where(mid.notna()),
            "bb_width": width / mid,
        }
    )


def atr(bars: pd.DataFrame, period: int = ATR_PERIOD) -> pd.Series:
    """Wilder's average true range."""
    prev_close = bars["close"].shift(1)
    true_range = pd.concat(
        [bars["high"] - bars["low"], (bars["high"] - prev_close).abs(), (bars["low"] - prev_close).abs()], axis=1
    ).max(axis=1, skipna=False)
    return true_range.ewm(alpha=1.0 / period, adjust=False, min_periods=period).mean()


def add_indicators(bars: pd.DataFrame) -> pd.DataFrame:
    """Return ``bars`` with every column of :data:`INDICATOR_COLUMNS` appended (float64)."""
    close = bars["close"]
    out = bars.copy()
    out["ret"] = close.pct_change()
    out["log_ret"] = np.log(close).diff()
    out["rsi"] = rsi(close)
    out = out.join(macd(close)).join(bollinger(close))
    out["atr"] = atr(bars)
    log_volume = np.log1p(bars["volume"])
    rolling = log_volume.rolling(VOLUME_PERIOD)
    out["volume_z"] = (
        ((log_volume - rolling.mean()) / rolling.std(ddof=0).replace(0.0, np.nan))
        .fillna(0.0)
        .where(rolling.mean().notna())
    )
    return out.astype("float64")
