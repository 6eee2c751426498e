"""The frame codec's fast path writes exactly the bytes of the general path, for every frame of a shape."""

from __future__ import annotations

import struct

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlflow_persist.episodes import frame_fastpath
from mlflow_persist.episodes.frames import (
    _table_to_parquet_bytes,
    assert_frames_identical,
    column_arrays,
    frame_from_parquet_bytes,
    frame_to_parquet_bytes,
    frame_to_table,
)

DTYPES = [np.float64, np.float32, np.int64, np.int8, np.uint32, np.bool_]
FLOAT_BITS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0]),
    st.integers(min_value=0x7FF0000000000001, max_value=0x7FFFFFFFFFFFFFFF).map(
        lambda b: struct.unpack("<d", struct.pack("<Q", b))[0]
    ),  # NaNs with payloads
)


def _values(draw: st.DrawFn, dtype: type, n: int) -> np.ndarray:
    if dtype in (np.float64, np.float32):
        with np.errstate(invalid="ignore", over="ignore"):
            return np.array(draw(st.lists(FLOAT_BITS, min_size=n, max_size=n)), dtype=np.float64).astype(dtype)
    if dtype is np.bool_:
        return np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    info = np.iinfo(dtype)
    return np.array(draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=n, max_size=n)), dtype=dtype)


def _index(kind: str, n: int, start: int) -> pd.Index:
    if kind == "range":
        return pd.RangeIndex(n)
    if kind == "utc":
        return pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC", name="time", unit="us") + pd.Timedelta(
            hours=start
        )
    if kind == "berlin":
        return pd.DatetimeIndex(
            pd.date_range("2024-03-30", periods=n, freq="h", tz="Europe/Berlin") + pd.Timedelta(hours=start), freq=None
        )
    return pd.Index(np.arange(start, start + n, dtype=np.float64) / 3, name="x")


@st.composite
def same_shape_frames(draw: st.DrawFn) -> list[pd.DataFrame]:
    """Three frames that share labels, dtypes and index kind, with different values."""
    n = draw(st.integers(0, 6))
    names = draw(st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=4, unique=True))
    dtypes = [draw(st.sampled_from(DTYPES)) for _ in names]
    kind = draw(st.sampled_from(["range", "utc", "berlin", "float"]))
    frames = []
    for i in range(3):
        data = {name: _values(draw, dtype, n) for name, dtype in zip(names, dtypes, strict=True)}
        frames.append(pd.DataFrame(data, index=_index(kind, n, 0 if kind == "range" else i)))
    return frames


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(same_shape_frames())
def test_fast_path_bytes_equal_the_general_path(frames: list[pd.DataFrame]) -> None:
    frame_fastpath.clear()
    for df in frames:
        general = _table_to_parquet_bytes(frame_to_table(df), "none")
        assert frame_to_parquet_bytes(df) == general
        assert_frames_identical(df, frame_from_parquet_bytes(general))


def test_the_reference_frames_take_the_fast_path() -> None:
    frame_fastpath.clear()
    idx = pd.date_range("2024-01-01", periods=4, freq="h", tz="UTC", name="time")
    bars = pd.DataFrame({"close": [1.0, np.nan, -0.0, 2.5], "n": np.arange(4)}, index=idx)
    cob = pd.DataFrame({"bid": [1.0, 2.0], "ask": [3.0, 4.0]})
    for df in (bars, cob):
        frame_to_parquet_bytes(df)
        assert frame_fastpath._cache[frame_fastpath.signature(df, column_arrays(df))] is not None


def test_frames_outside_the_fast_path_keep_the_general_path() -> None:
    frame_fastpath.clear()
    mixed = pd.DataFrame({"a": [1.0, 2.0], "b": ["x", None]})
    labels = pd.DataFrame({1: [1.0], 2: [2.0]})
    nat = pd.DataFrame({"a": [1.0, 2.0]}, index=pd.DatetimeIndex(["2024-01-01", None], tz="UTC"))
    for df in (mixed, labels, nat):
        assert frame_fastpath.signature(df, column_arrays(df)) is None
        assert_frames_identical(df, frame_from_parquet_bytes(frame_to_parquet_bytes(df)))
