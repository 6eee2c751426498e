"""Property tests: DataFrames survive the Parquet codec bit for bit."""

from __future__ import annotations

import struct

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlflow_persist.episodes.errors import EpisodeEncodingError
from mlflow_persist.episodes.frames import (
    assert_frames_identical,
    frame_fingerprint,
    frame_from_parquet_bytes,
    frame_to_parquet_bytes,
)

TZS = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"]
FLOAT_BITS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0]),
    st.integers(min_value=0x7FF0000000000001, max_value=0x7FFFFFFFFFFFFFFF).map(
        lambda b: struct.unpack("<d", struct.pack("<Q", b))[0]
    ),  # NaNs with payloads
)


def _roundtrip(df: pd.DataFrame) -> pd.DataFrame:
    return frame_from_parquet_bytes(frame_to_parquet_bytes(df))


@st.composite
def column(draw: st.DrawFn, n: int) -> pd.Series | pd.Categorical | np.ndarray:
    kind = draw(
        st.sampled_from(
            [
                "f64",
                "f32",
                "i64",
                "i8",
                "u32",
                "bool",
                "str",
                "object",
                "cat",
                "ts_tz",
                "ts_naive",
                "td",
                "Int64",
                "boolean",
                "string",
            ]
        )
    )
    if kind == "f64":
        bits = draw(st.lists(FLOAT_BITS, min_size=n, max_size=n))
        return np.array(bits, dtype=np.float64)
    if kind == "f32":
        return np.array(draw(st.lists(st.floats(width=32, allow_nan=True), min_size=n, max_size=n)), dtype=np.float32)
    if kind in ("i64", "i8", "u32"):
        dtype = {"i64": np.int64, "i8": np.int8, "u32": np.uint32}[kind]
        info = np.iinfo(dtype)
        return np.array(draw(st.lists(st.integers(int(info.min), int(info.max)), min_size=n, max_size=n)), dtype=dtype)
    if kind == "bool":
        return np.array(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=bool)
    text = st.one_of(st.none(), st.text(max_size=8))
    if kind == "str":
        return pd.Series(draw(st.lists(text, min_size=n, max_size=n)), dtype="str").to_numpy()
    if kind == "string":
        return pd.array(draw(st.lists(text, min_size=n, max_size=n)), dtype="string")
    if kind == "object":
        values = draw(
            st.lists(st.one_of(st.text(max_size=5), st.none(), st.just(float("nan"))), min_size=n, max_size=n)
        )
        arr = np.empty(n, dtype=object)
        arr[:] = values
        return pd.Series(arr, dtype=object).array
    if kind == "cat":
        cats = draw(st.lists(st.text(min_size=1, max_size=4), min_size=1, max_size=5, unique=True))
        values = draw(st.lists(st.one_of(st.none(), st.sampled_from(cats)), min_size=n, max_size=n))
        return pd.Categorical(values, categories=cats, ordered=draw(st.booleans()))
    if kind in ("ts_tz", "ts_naive"):
        ints = draw(st.lists(st.one_of(st.none(), st.integers(-(2**62), 2**62)), min_size=n, max_size=n))
        unit = draw(st.sampled_from(["ns", "us", "ms", "s"]))
        scale = {"ns": 1, "us": 1_000, "ms": 1_000_000, "s": 1_000_000_000}[unit]
        arr = np.array(
            [np.datetime64("NaT") if v is None else np.datetime64(v // scale, unit) for v in ints],
            dtype=f"datetime64[{unit}]",
        )
        idx = pd.DatetimeIndex(arr)
        if kind == "ts_tz":
            idx = idx.tz_localize("UTC").tz_convert(draw(st.sampled_from(TZS)))
        return idx.array
    if kind == "td":
        ints = draw(st.lists(st.integers(-(2**40), 2**40), min_size=n, max_size=n))
        return np.array(ints, dtype="timedelta64[ns]")
    if kind == "Int64":
        return pd.array(
            draw(st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), min_size=n, max_size=n)),
            dtype="Int64",
        )
    return pd.array(draw(st.lists(st.one_of(st.none(), st.booleans()), min_size=n, max_size=n)), dtype="boolean")


@st.composite
def index_for(draw: st.DrawFn, n: int) -> pd.Index:
    kind = draw(st.sampled_from(["range", "range_named", "dt_tz", "int", "str", "multi", "float"]))
    if kind == "range":
        start = draw(st.integers(-100, 100))
        step = draw(st.integers(1, 5))
        return pd.RangeIndex(start, start + n * step, step)
    if kind == "range_named":
        return pd.RangeIndex(n, name="row")
    if kind == "dt_tz":
        freq = draw(st.sampled_from(["h", "min", "D"]))
        return pd.date_range("2021-03-27 22:00", periods=n, freq=freq, tz=draw(st.sampled_from(TZS)), name="bar_time")
    if kind == "int":
        return pd.Index(draw(st.lists(st.integers(-1000, 1000), min_size=n, max_size=n)), dtype="int64", name="k")
    if kind == "str":
        return pd.Index(draw(st.lists(st.text(max_size=4), min_size=n, max_size=n)), name="sym")
    if kind == "float":
        return pd.Index(np.array(draw(st.lists(FLOAT_BITS, min_size=n, max_size=n)), dtype=np.float64))
    return pd.MultiIndex.from_arrays(
        [draw(st.lists(st.sampled_from(["bid", "ask"]), min_size=n, max_size=n)), np.arange(n, dtype=np.int64)],
        names=["side", "level"],
    )


@st.composite
def frames(draw: st.DrawFn) -> pd.DataFrame:
    n = draw(st.integers(0, 12))
    ncols = draw(st.integers(0, 6))
    names = draw(
        st.lists(
            st.one_of(st.text(min_size=1, max_size=6), st.integers(0, 50)),
            min_size=ncols,
            max_size=ncols,
            unique_by=str,
        )
    )
    data = {name: draw(column(n)) for name in names}
    index = draw(index_for(n))
    return pd.DataFrame(data, index=index) if data else pd.DataFrame(index=index)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames())
@pytest.mark.slow  # seconds of work: in `make test`, not in `make test-fast`
def test_random_frames_roundtrip_bit_exact(df: pd.DataFrame) -> None:
    out = _roundtrip(df)
    assert_frames_identical(df, out)
    assert frame_fingerprint(df) == frame_fingerprint(out)


def test_nan_payloads_and_negative_zero_survive() -> None:
    payload_nan = struct.unpack("<d", struct.pack("<Q", 0x7FF8000000000123))[0]
    values = np.array([payload_nan, -0.0, 0.0, np.nan, -np.inf], dtype=np.float64)
    df = pd.DataFrame({"x": values}, index=pd.Index(values.copy(), name="f"))
    out = _roundtrip(df)
    assert out["x"].to_numpy().view(np.uint64).tolist() == values.view(np.uint64).tolist()
    assert out.index.to_numpy().view(np.uint64).tolist() == values.view(np.uint64).tolist()


def test_object_column_keeps_python_values_and_missing_kinds() -> None:
    arr = np.empty(5, dtype=object)
    arr[:] = ["a", None, float("nan"), pd.NA, "b"]
    df = pd.DataFrame({"o": pd.Series(arr, dtype=object)})
    out = _roundtrip(df)
    assert out["o"].dtype == object
    got = out["o"].tolist()
    assert got[0] == "a" and got[1] is None and isinstance(got[2], float) and got[3] is pd.NA and got[4] == "b"
    assert_frames_identical(df, out)


def test_tz_aware_index_freq_categories_and_column_order_survive() -> None:
    idx = pd.date_range("2024-03-31 00:00", periods=4, freq="h", tz="Europe/Berlin", name="bar_time")
    df = pd.DataFrame(
        {
            "z": [1.0, 2.0, 3.0, 4.0],
            "a": pd.Categorical(["up", "down", None, "up"], categories=["down", "flat", "up"], ordered=True),
            7: np.array([1, 2, 3, 4], dtype=np.int16),
        },
        index=idx,
    )
    out = _roundtrip(df)
    assert list(out.columns) == ["z", "a", 7]
    assert out.index.freqstr == "h" and str(out.index.tz) == "Europe/Berlin"
    assert list(out["a"].cat.categories) == ["down", "flat", "up"] and out["a"].cat.ordered
    assert_frames_identical(df, out)


def test_fingerprint_sees_float_bit_changes() -> None:
    a = pd.DataFrame({"x": [0.0, 1.0]})
    b = pd.DataFrame({"x": [-0.0, 1.0]})
    pd.testing.assert_frame_equal(a, b)  # pandas calls them equal
    assert frame_fingerprint(a) != frame_fingerprint(b)


def test_duplicate_columns_are_refused_with_the_frame_name() -> None:
    df = pd.DataFrame([[1, 2]], columns=["a", "a"])
    with pytest.raises(EpisodeEncodingError, match="frame 'bars' has duplicate column labels"):
        frame_to_parquet_bytes(df, name="bars")


def test_mixed_object_column_is_refused() -> None:
    df = pd.DataFrame({"m": pd.Series(["a", 1], dtype=object)})
    with pytest.raises(EpisodeEncodingError, match="mixes Python str and int"):
        frame_to_parquet_bytes(df, name="bars")
