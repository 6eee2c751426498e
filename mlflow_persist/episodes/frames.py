"""Bit-exact pandas DataFrame <-> Parquet codec and a bitwise frame fingerprint.

pyarrow's own pandas round trip loses a few things; this module restores them from a small JSON
record kept in the Parquet schema metadata under ``mlflow_persist.frame``:

* NaN payloads and -0.0 in float columns and float index levels (pyarrow turns NaN into null; here
  float columns are stored as plain non-null IEEE values and written without dictionary encoding);
* the dtype of every column and index level (``object`` columns come back as ``object`` with their
  exact Python values, and the difference between ``None``, ``NaN`` and ``pd.NA`` in them);
* the ``freq`` of a DatetimeIndex / TimedeltaIndex.

Not supported (an EpisodeEncodingError says so): duplicate column labels, object columns whose
values mix Python types or hold types other than str/bytes/bool/int/float. NaN payloads inside
``object`` columns are normalised to the canonical NaN.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
import warnings
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlflow_persist.episodes import frame_fastpath
from mlflow_persist.episodes import values as value_codec
from mlflow_persist.episodes.errors import EpisodeEncodingError

__all__ = [
    "FRAME_CODEC_VERSION",
    "FRAME_META_KEY",
    "assert_frames_identical",
    "column_arrays",
    "frame_fingerprint",
    "frame_from_parquet_bytes",
    "frame_to_parquet_bytes",
    "frame_to_table",
    "table_to_frame",
]

FRAME_META_KEY = b"mlflow_persist.frame"
FRAME_CODEC_VERSION = 1
_OBJECT_VALUE_TYPES = (str, bytes, bool, int, float)


def _is_plain_float(dtype: Any) -> bool:
    return isinstance(dtype, np.dtype) and dtype.kind == "f"


def _missing_kind(value: Any) -> str | None:
    if value is None:
        return None
    if value is pd.NA:
        return "na"
    if value is pd.NaT:
        return "nat"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return None


def _object_missing(values: np.ndarray, where: str) -> dict[str, list[int]]:
    """Positions of NaN / pd.NA / NaT in an object array (None is the default missing value)."""
    kinds: dict[str, list[int]] = {}
    value_type: type | None = None
    for pos, value in enumerate(values):
        kind = _missing_kind(value)
        if kind is not None:
            kinds.setdefault(kind, []).append(pos)
            continue
        if value is None:
            continue
        vtype = type(value)
        if vtype not in _OBJECT_VALUE_TYPES:
            raise EpisodeEncodingError(
                f"{where} holds a Python {vtype.__name__} that Parquet cannot store exactly; "
                "convert that column to a typed dtype (str, number, datetime, category) before recording."
            )
        if value_type is None:
            value_type = vtype
        elif vtype is not value_type:
            raise EpisodeEncodingError(
                f"{where} mixes Python {value_type.__name__} and {vtype.__name__} values; "
                "give the column a single type before recording."
            )
    return kinds


def column_arrays(df: pd.DataFrame) -> list[Any]:
    """The columns' backing arrays by position (pandas' fast internal accessor when available)."""
    getter = getattr(df, "_get_column_array", None)
    if getter is not None:
        return [getter(i) for i in range(df.shape[1])]
    return [df.iloc[:, i].array for i in range(df.shape[1])]


def _levels(index: pd.Index) -> list[pd.Index]:
    if isinstance(index, pd.MultiIndex):
        return [index.get_level_values(i) for i in range(index.nlevels)]
    return [index]


def frame_to_table(df: pd.DataFrame, *, name: str = "frame") -> pa.Table:
    """Convert a DataFrame to an Arrow table whose metadata lets `table_to_frame` rebuild it exactly."""
    if not df.columns.is_unique:
        dupes = sorted({str(c) for c in df.columns[df.columns.duplicated()]})
        raise EpisodeEncodingError(
            f"frame '{name}' has duplicate column labels {dupes}; rename them so each column is unique."
        )
    meta: dict[str, Any] = {"codec": FRAME_CODEC_VERSION, "dtypes": [], "object_missing": {}}
    arrays = column_arrays(df)
    for pos, arr in enumerate(arrays):
        dtype = arr.dtype
        meta["dtypes"].append(str(dtype))
        if isinstance(dtype, pd.CategoricalDtype):
            cats = dtype.categories
            meta.setdefault("categoricals", {})[str(pos)] = {
                "categories": value_codec.to_jsonable(list(cats), where=f"frame '{name}' categories"),
                "dtype": str(cats.dtype),
                "ordered": bool(dtype.ordered),
            }
        elif dtype == object:  # noqa: E721
            kinds = _object_missing(np.asarray(arr), f"frame '{name}' column {df.columns[pos]!r}")
            if kinds:
                meta["object_missing"][str(pos)] = kinds
    range_index = type(df.index) is pd.RangeIndex
    levels = [] if range_index else _levels(df.index)
    meta["index_dtypes"] = [str(level.dtype) for level in levels]
    idx = df.index
    meta["index_range"] = [idx.start, idx.stop, idx.step, idx.name] if range_index else None
    meta["index_object_missing"] = {}
    for lpos, level in enumerate(levels):
        if level.dtype == object:
            kinds = _object_missing(level.to_numpy(), f"frame '{name}' index level {lpos}")
            if kinds:
                meta["index_object_missing"][str(lpos)] = kinds
    freq = getattr(df.index, "freq", None)
    meta["index_freq"] = freq.freqstr if freq is not None and not isinstance(df.index, pd.PeriodIndex) else None
    meta["columns_dtype"] = None if isinstance(df.columns, pd.MultiIndex) else str(df.columns.dtype)
    cols = df.columns
    meta["column_labels"] = (
        None
        if isinstance(cols, pd.MultiIndex)
        else {
            "values": value_codec.to_jsonable(list(cols), where=f"frame '{name}' column labels"),
            "name": value_codec.to_jsonable(cols.name),
        }
    )
    meta["columns_range"] = [cols.start, cols.stop, cols.step] if type(cols) is pd.RangeIndex else None
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The DataFrame has column names of mixed type")
            table = pa.Table.from_pandas(df, preserve_index=None)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise EpisodeEncodingError(
            f"frame '{name}' cannot be converted to Arrow ({exc}); give its columns typed dtypes before recording."
        ) from exc
    # Data columns come first, then the index levels (none for a RangeIndex): keep float bits exactly.
    # (pyarrow turns NaN into null; columns without NaN already carry the exact bits, -0.0 included)
    nan_columns: list[tuple[int, np.ndarray]] = []
    for pos, arr in enumerate(arrays):
        if _is_plain_float(arr.dtype) and np.isnan(arr).any():
            nan_columns.append((pos, np.asarray(arr)))
    for lpos, level in enumerate(levels):
        if _is_plain_float(level.dtype):
            nan_columns.append((df.shape[1] + lpos, level.to_numpy()))
    for tpos, values in nan_columns:
        field = table.schema.field(tpos)
        table = table.set_column(tpos, field, pa.array(np.ascontiguousarray(values), type=field.type))
    metadata = dict(table.schema.metadata or {})
    metadata[FRAME_META_KEY] = json.dumps(meta, separators=(",", ":")).encode()
    return table.replace_schema_metadata(metadata)


def _float_fields(table: pa.Table) -> list[str]:
    return [f.name for f in table.schema if pa.types.is_floating(f.type)]


def _table_to_parquet_bytes(table: pa.Table, compression: str) -> bytes:
    floats = set(_float_fields(table))
    dictionary_cols = [n for n in table.schema.names if n not in floats]
    sink = io.BytesIO()
    pq.write_table(
        table, sink, compression=compression, use_dictionary=dictionary_cols or False, write_statistics=False
    )
    return sink.getvalue()


def frame_to_parquet_bytes(df: pd.DataFrame, *, name: str = "frame", compression: str = "none") -> bytes:
    """Serialize one frame to a standalone Parquet file (readable by pandas.read_parquet too).

    Frames of a shape seen before take `frame_fastpath` (identical bytes, verified per shape)."""
    return frame_fastpath.parquet_bytes(
        df,
        column_arrays(df),
        lambda: frame_to_table(df, name=name),
        lambda table: _table_to_parquet_bytes(table, compression),
    )


def _restore_object(values: list[Any], kinds: dict[str, list[int]]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    fill = {"nan": float("nan"), "na": pd.NA, "nat": pd.NaT}
    for kind, positions in kinds.items():
        for pos in positions:
            out[pos] = fill[kind]
    return out


def _restore_values(
    current: pd.Index | pd.Series, arrow_column: pa.ChunkedArray, dtype: str, kinds: dict[str, list[int]]
) -> Any:
    if dtype == "category":
        return None
    if dtype == "object":
        return _restore_object(arrow_column.to_pylist(), kinds)
    if str(current.dtype) != dtype:
        return current.astype(dtype)
    return None


def table_to_frame(table: pa.Table) -> pd.DataFrame:
    """Rebuild the DataFrame written by `frame_to_table`."""
    raw = (table.schema.metadata or {}).get(FRAME_META_KEY)
    if raw is None:
        return table.to_pandas()
    meta = json.loads(raw)
    if meta.get("codec", 0) > FRAME_CODEC_VERSION:
        raise EpisodeEncodingError(
            f"frame codec version {meta['codec']} is newer than this code supports ({FRAME_CODEC_VERSION}); "
            "upgrade mlflow-persist to read it."
        )
    df = table.to_pandas()
    irange = meta.get("index_range")
    if irange is not None and df.shape[1] == 0:
        df = pd.DataFrame(index=pd.RangeIndex(irange[0], irange[1], irange[2], name=irange[3]), columns=df.columns)
    ncols = len(meta["dtypes"])
    for pos, dtype in enumerate(meta["dtypes"]):
        restored = _restore_values(df.iloc[:, pos], table.column(pos), dtype, meta["object_missing"].get(str(pos), {}))
        if restored is not None:
            if isinstance(restored, np.ndarray):  # keep object dtype: pandas would infer 'str'
                restored = pd.Series(restored, index=df.index, dtype=object, copy=False)
            df.isetitem(pos, restored)
    for key, cat in meta.get("categoricals", {}).items():
        pos = int(key)
        target = pd.CategoricalDtype(
            pd.Index(value_codec.from_jsonable(cat["categories"]), dtype=cat["dtype"]), ordered=cat["ordered"]
        )
        current = df.iloc[:, pos]
        if current.dtype != target or list(current.dtype.categories) != list(target.categories):
            df.isetitem(
                pos,
                current.astype(object).astype(target)
                if not isinstance(current.dtype, pd.CategoricalDtype)
                else current.cat.set_categories(target.categories, ordered=target.ordered),
            )
    index_dtypes: list[str] = meta["index_dtypes"]
    if index_dtypes:
        levels = _levels(df.index)
        new_levels = []
        changed = False
        for lpos, dtype in enumerate(index_dtypes):
            restored = _restore_values(
                levels[lpos], table.column(ncols + lpos), dtype, meta["index_object_missing"].get(str(lpos), {})
            )
            if restored is None:
                new_levels.append(levels[lpos])
            else:
                changed = True
                new_levels.append(pd.Index(restored, dtype=dtype, name=levels[lpos].name))
        if changed:
            if isinstance(df.index, pd.MultiIndex):
                df.index = pd.MultiIndex.from_arrays(new_levels, names=df.index.names)
            else:
                df.index = new_levels[0]
    if meta.get("index_freq"):
        df.index.freq = meta["index_freq"]
    cdtype = meta.get("columns_dtype")
    if cdtype and not isinstance(df.columns, pd.MultiIndex) and str(df.columns.dtype) != cdtype:
        df.columns = df.columns.astype(cdtype)
    labels = meta.get("column_labels")
    if labels is not None and cdtype:
        df.columns = pd.Index(
            value_codec.from_jsonable(labels["values"]), dtype=cdtype, name=value_codec.from_jsonable(labels["name"])
        )
    crange = meta.get("columns_range")
    if crange is not None:
        df.columns = pd.RangeIndex(*crange, name=df.columns.name)
    return df


def frame_from_parquet_bytes(data: bytes) -> pd.DataFrame:
    """Inverse of `frame_to_parquet_bytes`."""
    return table_to_frame(pq.read_table(io.BytesIO(data)))


# ---------------------------------------------------------------- bitwise fingerprint


def _hash_scalar(h: Any, value: Any) -> None:
    if isinstance(value, float):
        h.update(b"f" + struct.pack("<d", value))
    elif isinstance(value, (bytes, bytearray)):
        h.update(b"b" + len(value).to_bytes(8, "little") + bytes(value))
    else:
        text = f"{type(value).__module__}.{type(value).__qualname__}:{value!r}".encode()
        h.update(len(text).to_bytes(8, "little") + text)


def _hash_array(h: Any, values: Any) -> None:
    dtype = values.dtype
    h.update(f"dtype:{dtype}|n:{len(values)}|".encode())
    if isinstance(dtype, pd.CategoricalDtype):
        h.update(f"ordered:{dtype.ordered}|".encode())
        _hash_array(h, pd.Index(dtype.categories).array)
        _hash_array(h, np.asarray(values.codes))
        return
    if isinstance(dtype, pd.DatetimeTZDtype):
        h.update(np.ascontiguousarray(values.asi8).tobytes())
        return
    if isinstance(values, pd.arrays.PeriodArray):
        h.update(np.ascontiguousarray(values.asi8).tobytes())
        return
    if hasattr(values, "_data") and hasattr(values, "_mask"):  # masked nullable arrays
        data = np.where(values._mask, np.zeros(1, dtype=values._data.dtype), values._data)
        h.update(np.ascontiguousarray(data).tobytes() + np.ascontiguousarray(values._mask).tobytes())
        return
    arr = np.asarray(values) if isinstance(dtype, np.dtype) else None
    if arr is not None and arr.dtype != object:
        h.update(np.ascontiguousarray(arr).view(np.uint8).tobytes())
        return
    for value in np.asarray(values, dtype=object) if arr is None else arr:
        _hash_scalar(h, value)


def _hash_index(h: Any, index: pd.Index) -> None:
    h.update(f"{type(index).__name__}|names:{list(index.names)!r}|".encode())
    if type(index) is pd.RangeIndex:
        h.update(f"range:{index.start}:{index.stop}:{index.step}".encode())
        return
    freq = getattr(index, "freq", None)
    h.update(f"freq:{freq.freqstr if freq is not None else None}|".encode())
    for level in _levels(index):
        _hash_array(h, level.array)


def frame_fingerprint(df: pd.DataFrame) -> str:
    """sha256 over the frame's exact content: column labels and order, dtypes, index, value bits."""
    h = hashlib.sha256()
    h.update(f"shape:{df.shape}|".encode())
    h.update(b"columns|")
    _hash_index(h, df.columns)
    h.update(b"index|")
    _hash_index(h, df.index)
    for pos, arr in enumerate(column_arrays(df)):
        h.update(f"col:{pos}|".encode())
        _hash_array(h, arr)
    return h.hexdigest()


def assert_frames_identical(expected: pd.DataFrame, actual: pd.DataFrame) -> None:
    """pandas' exact equality check plus the bitwise fingerprint (NaN payloads, -0.0, freq)."""
    pd.testing.assert_frame_equal(
        expected,
        actual,
        check_exact=True,
        check_freq=True,
        check_column_type=True,
        check_index_type=True,
        check_categorical=True,
    )
    if frame_fingerprint(expected) != frame_fingerprint(actual):
        raise AssertionError("frames are equal to pandas but differ bitwise (float bits, NaN payloads or freq)")
