"""A fast path for the frame codec: the same Parquet bytes, without pyarrow's pandas conversion.

`pa.Table.from_pandas` costs milliseconds of Python per frame, most of it rebuilding the same
schema and metadata for every frame of a recorder that stores thousands of frames of one shape.
For frames whose columns are plain numeric or bool numpy arrays with str labels, and whose index is
a RangeIndex, a DatetimeIndex without NaT or a numeric index, everything but the values is fixed by
a *signature* (labels, dtypes, index kind/name/tz/freq/range). The first frame of a signature goes
through the general codec; its schema (with the pandas and mlflow_persist metadata) is kept only if a
table built straight from the numpy arrays with that schema serializes to the identical bytes. Later
frames of the signature are built that way. Any other frame takes the general path.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

__all__ = ["build_table", "clear", "parquet_bytes", "signature"]

_FAST_KINDS = frozenset("fiub")
_MAX_SIGNATURES = 256
_UNSET = object()
_cache: OrderedDict[Hashable, pa.Schema | None] = OrderedDict()
_lock = threading.Lock()


def _name_key(name: Any) -> tuple[type, Any] | None:
    return (type(name), name) if name is None or isinstance(name, str) else None


def _index_key(index: pd.Index) -> Hashable | None:
    name = _name_key(index.name)
    if name is None:
        return None
    kind = type(index)
    if kind is pd.RangeIndex:
        return ("range", name, index.start, index.stop, index.step)
    if kind is pd.DatetimeIndex:
        if index.hasnans:
            return None
        freq = index.freq.freqstr if index.freq is not None else None
        return ("datetime", name, str(index.dtype), type(index.tz), str(index.tz), freq)
    if kind is pd.Index and isinstance(index.dtype, np.dtype) and index.dtype.kind in "iuf":
        return ("numeric", name, index.dtype)
    return None


def signature(df: pd.DataFrame, arrays: list[Any]) -> Hashable | None:
    """What fixes a frame's Arrow schema apart from its values; None when the frame needs the general path."""
    columns = df.columns
    if type(columns) is not pd.Index or _name_key(columns.name) is None:
        return None
    labels = tuple(columns)
    if not all(type(label) is str for label in labels):
        return None
    dtypes = []
    for arr in arrays:
        if type(arr) is not np.ndarray or arr.dtype.kind not in _FAST_KINDS:
            return None
        dtypes.append(arr.dtype)
    index = _index_key(df.index)
    if index is None:
        return None
    return (labels, str(columns.dtype), _name_key(columns.name), tuple(dtypes), index)


def build_table(df: pd.DataFrame, arrays: list[Any], schema: pa.Schema) -> pa.Table:
    """The table for `df` laid out with `schema`: data columns, then the index column (none for a RangeIndex)."""
    columns = [pa.array(np.ascontiguousarray(arr), type=schema.field(pos).type) for pos, arr in enumerate(arrays)]
    index = df.index
    if type(index) is not pd.RangeIndex:
        field = schema.field(len(columns))
        if type(index) is pd.DatetimeIndex:
            columns.append(pa.array(np.ascontiguousarray(index.asi8), type=pa.int64()).view(field.type))
        else:
            columns.append(pa.array(np.ascontiguousarray(index.to_numpy()), type=field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _remember(key: Hashable, schema: pa.Schema | None) -> None:
    with _lock:
        _cache[key] = schema
        while len(_cache) > _MAX_SIGNATURES:
            _cache.popitem(last=False)


def parquet_bytes(
    df: pd.DataFrame, arrays: list[Any], general: Callable[[], pa.Table], to_bytes: Callable[[pa.Table], bytes]
) -> bytes:
    """`to_bytes(general())`, built faster when the frame's signature was verified before."""
    key = signature(df, arrays)
    if key is None:
        return to_bytes(general())
    schema = _cache.get(key, _UNSET)
    if schema is _UNSET:
        table = general()
        data = to_bytes(table)
        try:
            same = to_bytes(build_table(df, arrays, table.schema)) == data
        except (pa.ArrowException, TypeError, ValueError):
            same = False
        _remember(key, table.schema if same else None)
        return data
    if schema is None:
        return to_bytes(general())
    return to_bytes(build_table(df, arrays, schema))  # type: ignore[arg-type]


def clear() -> None:
    """Forget every verified signature (tests)."""
    with _lock:
        _cache.clear()
