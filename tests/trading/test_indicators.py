import numpy as np
import pandas as pd
import pytest

from mlflow_persist.trading.data import BarStream, load_bars
from mlflow_persist.trading.indicators import INDICATOR_COLUMNS, WARMUP_BARS, add_indicators


@pytest.fixture(scope="module")
def bars() -> pd.DataFrame:
    return load_bars()


def test_bundled_bars_load_with_utc_index(bars: pd.DataFrame) -> None:
    assert len(bars) > 6000
    assert str(bars.index.tz) == "UTC"
    assert bars.index.is_monotonic_increasing
    assert (bars["high"] >= bars[["open", "close"]].max(axis=1)).all()
    assert (bars["low"] <= bars[["open", "close"]].min(axis=1)).all()


def test_indicators_are_sane(bars: pd.DataFrame) -> None:
    frame = add_indicators(bars)
    ready = frame.iloc[WARMUP_BARS:]
    assert list(frame.columns[-len(INDICATOR_COLUMNS) :]) == list(INDICATOR_COLUMNS)
    assert not ready[list(INDICATOR_COLUMNS)].isna().any().any()
    assert ready["rsi"].between(0, 100).all()
    assert (ready["bb_lower"] <= ready["bb_mid"]).all() and (ready["bb_mid"] <= ready["bb_upper"]).all()
    assert (ready["atr"] > 0).all()
    np.testing.assert_allclose(ready["macd_hist"], ready["macd"] - ready["macd_signal"])
    np.testing.assert_allclose(
        ready["ret"], (frame["close"] / frame["close"].shift(1) - 1.0).iloc[WARMUP_BARS:], rtol=1e-12
    )


def test_indicators_are_causal(bars: pd.DataFrame) -> None:
    full = add_indicators(bars.iloc[:800])
    prefix = add_indicators(bars.iloc[:500])
    pd.testing.assert_frame_equal(full.iloc[:500], prefix)


def test_bar_stream_wraps_and_paces_without_real_sleeping() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    stream = BarStream(10, 7, speed=2.0, sleep=sleep, clock=lambda: now[0])
    assert [next(stream) for _ in range(5)] == [7, 8, 9, 7, 8]
    assert slept == [0.5, 0.5, 0.5, 0.5]
    fast = BarStream(10, 7, start=25)
    assert next(fast) == 7 + (25 - 7) % 3
