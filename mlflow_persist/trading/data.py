"""Market data: the hourly EURUSD bars that gym-anytrading ships, replayed as a stream.

The CSV is located on disk through the installed package's path (no import of the
gym environment, no download). Bars are returned with a UTC ``DatetimeIndex`` and
float64 ``open/high/low/close/volume`` columns. :class:`BarStream` replays bar
positions at a configurable speed (bars per second, ``0`` = as fast as possible) and
wraps around at the end of the data so continuous training never runs out of bars.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd

from mlflow_persist.errors import ConfigError, NotFoundError

__all__ = ["DATASET_NAME", "BarStream", "dataset_path", "load_bars"]

DATASET_NAME = "FOREX_EURUSD_1H_ASK"
_TIME_FORMAT = "%d.%m.%Y %H:%M:%S.%f"


def dataset_path(name: str = DATASET_NAME) -> Path:
    """Return the path of a CSV bundled with gym-anytrading, without importing gym."""
    spec = importlib.util.find_spec("gym_anytrading")
    if spec is None or not spec.submodule_search_locations:
        raise NotFoundError(
            "The market data package gym-anytrading is not installed; install it with "
            "`pip install 'mlflow-persist[trading]'`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / f"{name}.csv"
    if not path.is_file():
        raise NotFoundError(f"The bundled data set {path} is missing; reinstall gym-anytrading.")
    return path


def load_bars(name: str = DATASET_NAME) -> pd.DataFrame:
    """Load the bundled hourly bars as a UTC-indexed float64 frame (open, high, low, close, volume)."""
    raw = pd.read_csv(dataset_path(name))
    index = pd.DatetimeIndex(pd.to_datetime(raw["Time"], format=_TIME_FORMAT, utc=True), name="time")
    bars = pd.DataFrame(
        {
            "open": raw["Open"].to_numpy(dtype="float64"),
            "high": raw["High"].to_numpy(dtype="float64"),
            "low": raw["Low"].to_numpy(dtype="float64"),
            "close": raw["Close"].to_numpy(dtype="float64"),
            "volume": raw["Volume"].to_numpy(dtype="float64"),
        },
        index=index,
    )
    bars = bars[~bars.index.duplicated(keep="first")].sort_index()
    return bars


class BarStream:
    """Yield bar positions ``start, start+1, ...`` (wrapping within ``[first, n_bars)``) at a given pace.

    ``speed`` is in bars per second; ``0`` replays as fast as the consumer pulls. ``sleep``
    and ``clock`` are injectable so tests need no real waiting.
    """

    def __init__(
        self,
        n_bars: int,
        first: int,
        start: int | None = None,
        speed: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if speed < 0:
            raise ConfigError(f"Replay speed must be >= 0 bars per second (0 = as fast as possible), got {speed}.")
        if not 0 <= first < n_bars:
            raise ConfigError(f"The first usable bar {first} must lie inside the {n_bars} bars of data.")
        self.n_bars = n_bars
        self.first = first
        self.position = first if start is None else self.wrap(start)
        self.speed = speed
        self._sleep = sleep
        self._clock = clock
        self._next_due: float | None = None

    def wrap(self, position: int) -> int:
        """Map any position onto the usable range ``[first, n_bars)``."""
        span = self.n_bars - self.first
        return self.first + (position - self.first) % span

    def __iter__(self) -> Iterator[int]:
        return self

    def __next__(self) -> int:
        if self.speed > 0:
            now = self._clock()
            if self._next_due is None:
                self._next_due = now
            delay = self._next_due - now
            if delay > 0:
                self._sleep(delay)
            self._next_due = max(self._next_due, now) + 1.0 / self.speed
        position = self.position
        self.position = self.wrap(position + 1)
        return position
