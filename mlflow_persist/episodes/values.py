"""Exact JSON encoding of small structured values (action, market, rng, checkpoint versions).

Plain JSON loses float bits (NaN payloads), tuples, bytes, non-string dict keys, numpy and torch
values. Here those are written as tagged objects so `decode(encode(x))` rebuilds the same value and
two values are bitwise equal exactly when their canonical encodings are equal.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any

import numpy as np
import pandas as pd
import torch

from mlflow_persist.episodes.errors import EpisodeEncodingError
from mlflow_persist.episodes.tensors import TensorRecord, decode_tensor, encode_tensor

__all__ = ["decode", "encode", "from_jsonable", "to_jsonable", "values_identical"]

_TAG = "__mp__"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"))


def to_jsonable(value: Any, *, where: str = "value") -> Any:
    """Turn a value into plain JSON data, tagging anything JSON cannot hold exactly."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int) and not isinstance(value, np.integer):
        return value
    if isinstance(value, float) and not isinstance(value, np.floating):
        if math.isfinite(value):
            return value
        return {_TAG: "f64", "bits": struct.pack("<d", value).hex()}
    if isinstance(value, torch.Tensor):
        rec = encode_tensor(value, key=where)
        return {_TAG: "tensor", "dtype": rec.dtype, "shape": list(rec.shape), "data": _b64(rec.data)}
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return {
                _TAG: "ndarray_obj",
                "shape": list(value.shape),
                "items": [to_jsonable(v, where=where) for v in value.reshape(-1)],
            }
        arr = np.ascontiguousarray(value)
        return {_TAG: "ndarray", "dtype": arr.dtype.str, "shape": list(arr.shape), "data": _b64(arr.tobytes())}
    if isinstance(value, np.generic):
        arr = np.asarray(value)
        return {_TAG: "npscalar", "dtype": arr.dtype.str, "data": _b64(arr.tobytes())}
    if isinstance(value, (bytes, bytearray)):
        return {_TAG: "bytes", "data": _b64(bytes(value))}
    if isinstance(value, tuple):
        return {_TAG: "tuple", "items": [to_jsonable(v, where=where) for v in value]}
    if isinstance(value, list):
        return [to_jsonable(v, where=where) for v in value]
    if isinstance(value, pd.Timestamp):
        return {
            _TAG: "timestamp",
            "ns": value.value,
            "unit": value.unit,
            "tz": None if value.tz is None else str(value.tz),
        }
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return (
                {k: to_jsonable(v, where=f"{where}.{k}") for k, v in value.items()}
                if _TAG not in value
                else {_TAG: "dict", "items": [[k, to_jsonable(v, where=where)] for k, v in value.items()]}
            )
        return {
            _TAG: "dict",
            "items": [[to_jsonable(k, where=where), to_jsonable(v, where=where)] for k, v in value.items()],
        }
    raise EpisodeEncodingError(
        f"{where} is a {type(value).__name__}, which cannot be stored exactly; use numbers, strings, lists, "
        "dicts, tuples, bytes, numpy arrays or torch tensors."
    )


def from_jsonable(data: Any) -> Any:
    """Inverse of `to_jsonable`."""
    if isinstance(data, list):
        return [from_jsonable(v) for v in data]
    if not isinstance(data, dict):
        return data
    tag = data.get(_TAG)
    if tag is None:
        return {k: from_jsonable(v) for k, v in data.items()}
    if tag == "f64":
        return struct.unpack("<d", bytes.fromhex(data["bits"]))[0]
    if tag == "tensor":
        return decode_tensor(TensorRecord(data["dtype"], tuple(data["shape"]), _unb64(data["data"])))
    if tag == "ndarray":
        return np.frombuffer(_unb64(data["data"]), dtype=np.dtype(data["dtype"])).reshape(data["shape"]).copy()
    if tag == "ndarray_obj":
        arr = np.empty(len(data["items"]), dtype=object)
        arr[:] = [from_jsonable(v) for v in data["items"]]
        return arr.reshape(data["shape"])
    if tag == "npscalar":
        return np.frombuffer(_unb64(data["data"]), dtype=np.dtype(data["dtype"]))[0]
    if tag == "bytes":
        return _unb64(data["data"])
    if tag == "tuple":
        return tuple(from_jsonable(v) for v in data["items"])
    if tag == "timestamp":
        ts = pd.Timestamp(data["ns"], unit="ns", tz="UTC" if data["tz"] else None)
        ts = ts.tz_convert(data["tz"]) if data["tz"] else ts
        return ts.as_unit(data["unit"])
    if tag == "dict":
        return {_hashable(from_jsonable(k)): from_jsonable(v) for k, v in data["items"]}
    raise EpisodeEncodingError(f"stored value tag '{tag}' is unknown; upgrade mlflow-persist to read it.")


def _hashable(key: Any) -> Any:
    return tuple(key) if isinstance(key, list) else key


def encode(value: Any, *, where: str = "value") -> str:
    """Canonical JSON text for a value (sorted keys, no whitespace)."""
    return json.dumps(to_jsonable(value, where=where), sort_keys=True, separators=(",", ":"), allow_nan=False)


def decode(text: str) -> Any:
    """Inverse of `encode`."""
    return from_jsonable(json.loads(text))


def values_identical(a: Any, b: Any) -> bool:
    """Bitwise equality of two encodable values (NaN equals the same NaN, -0.0 differs from 0.0)."""
    return encode(a) == encode(b)
