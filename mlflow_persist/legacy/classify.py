"""Recognise what a legacy `.pt` file holds and turn it into plain state, never running pickled code.

Every file is loaded with `torch.load(weights_only=True)`, with a few data-only globals allowed (numpy
scalars/arrays/dtypes and datetime values, which old trainers often left in their metrics). Only a file the
operator explicitly trusts is loaded with full unpickling, which a whole pickled `nn.Module` needs.
"""

from __future__ import annotations

import datetime as _dt
import io
import pickle
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from mlflow_persist.legacy.score import as_number, metrics_with_score, numeric_metrics

__all__ = ["Classification", "LegacyPayload", "ProblemKind", "Shape", "classify_bytes", "classify_object", "to_plain"]

Shape = Literal["state_dict_dict", "bare_state_dict", "dqn_dict", "whole_module"]
ProblemKind = Literal["empty", "truncated", "not_torch", "untrusted_pickle", "unrecognised", "trusted_load_failed"]


@dataclass
class LegacyPayload:
    """The usable content of a legacy checkpoint, in plain containers."""

    shape: Shape
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None = None
    extra_state: dict[str, Any] = field(default_factory=dict)
    step: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    model_type: str | None = None


@dataclass
class Classification:
    """Either a payload or the reason (one sentence) and kind of problem that stopped it."""

    payload: LegacyPayload | None
    problem: str | None = None
    kind: ProblemKind | None = None
    unsafe_globals: tuple[str, ...] = ()


def _data_only_globals() -> list[Any]:
    allowed: list[Any] = [_dt.datetime, _dt.date, _dt.time, _dt.timedelta, _dt.timezone, np.dtype, np.ndarray]
    core = getattr(np, "_core", None) or np.core
    allowed += [core.multiarray.scalar, core.multiarray._reconstruct]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return allowed


_SAFE_GLOBALS = _data_only_globals()


def classify_bytes(data: bytes, trusted: bool = False) -> Classification:
    """Classify the bytes of one legacy file; `trusted` allows full unpickling (runs code from the file)."""
    if not data:
        return Classification(None, "the file is empty (an interrupted write)", "empty")
    try:
        with torch.serialization.safe_globals(_SAFE_GLOBALS):
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe = _unsafe_globals(data)
        if not unsafe and _looks_unpicklable(data):
            return Classification(None, "not a torch file (it does not unpickle)", "not_torch")
        if not trusted:
            names = ", ".join(unsafe) if unsafe else _first_line(exc)
            return Classification(
                None,
                f"it pickles Python objects ({names}), probably a whole nn.Module; loading it runs code from the "
                "file, so pass --trust FILE if you trust it",
                "untrusted_pickle",
                tuple(unsafe),
            )
        return _classify_trusted(data, tuple(unsafe))
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        return Classification(None, f"a truncated or damaged torch file ({_first_line(exc)})", "truncated")
    except Exception as exc:  # torch raises many types for damaged files; none of them is fatal for an import  # noqa: BLE001
        return Classification(
            None, f"cannot be read as a torch file ({type(exc).__name__}: {_first_line(exc)})", "truncated"
        )
    return classify_object(obj)


def _classify_trusted(data: bytes, unsafe: tuple[str, ...]) -> Classification:
    try:
        obj = torch.load(
            io.BytesIO(data), map_location="cpu", weights_only=False
        )  # operator-trusted file only (--trust)
    except (ImportError, AttributeError) as exc:
        return Classification(
            None,
            f"trusted, but its class cannot be imported ({_first_line(exc)}); put the module that defines it on "
            "PYTHONPATH and import again",
            "trusted_load_failed",
            unsafe,
        )
    except Exception as exc:  # noqa: BLE001
        return Classification(
            None,
            f"trusted, but it cannot be loaded ({type(exc).__name__}: {_first_line(exc)})",
            "trusted_load_failed",
            unsafe,
        )
    result = classify_object(obj)
    result.unsafe_globals = unsafe
    return result


def classify_object(obj: Any) -> Classification:
    """Which of the legacy payload shapes a loaded object is, as a LegacyPayload."""
    if isinstance(obj, torch.nn.Module):
        state = {k: v.detach().cpu().clone() for k, v in obj.state_dict().items()}
        extra = {"legacy_shape": "whole_module", "module_class": f"{type(obj).__module__}.{type(obj).__qualname__}"}
        return Classification(LegacyPayload("whole_module", state, extra_state=extra))
    if not isinstance(obj, Mapping):
        return Classification(
            None, f"holds a {type(obj).__name__}, not a checkpoint dict or state dict", "unrecognised"
        )
    if "policy_net" in obj and "target_net" in obj and _is_state_dict(obj["policy_net"]):
        return _dqn(obj)
    for key in ("model_state_dict", "state_dict"):
        if key in obj and _is_state_dict(obj[key]):
            return _state_dict_dict(obj, key)
    if _is_state_dict(obj):
        return Classification(
            LegacyPayload("bare_state_dict", dict(obj), extra_state={"legacy_shape": "bare_state_dict"})
        )
    keys = ", ".join(sorted(str(k) for k in obj.keys())[:8]) or "none"
    return Classification(None, f"a dict without model weights (keys: {keys})", "unrecognised")


def _state_dict_dict(obj: Mapping[str, Any], key: str) -> Classification:
    legacy = {
        k: to_plain(v)
        for k, v in obj.items()
        if k not in (key, "optimizer_state_dict")
        and k in ("model_type", "saved_at", "epoch", "history", "training_metadata", "performance_metrics")
    }
    metrics = (
        numeric_metrics(obj.get("performance_metrics") or {})
        if isinstance(obj.get("performance_metrics"), Mapping)
        else {}
    )
    training = obj.get("training_metadata") if isinstance(obj.get("training_metadata"), Mapping) else {}
    step = _int(obj.get("epoch"))
    if step is None:
        step = _int(training.get("epoch")) if training else None
    optimizer = obj.get("optimizer_state_dict")
    return Classification(
        LegacyPayload(
            "state_dict_dict",
            dict(obj[key]),
            optimizer_state=dict(optimizer) if isinstance(optimizer, Mapping) else None,
            extra_state={"legacy_shape": "state_dict_dict", "legacy": legacy},
            step=step,
            metrics=metrics_with_score(metrics),
            model_type=str(obj["model_type"]) if obj.get("model_type") is not None else None,
        )
    )


def _dqn(obj: Mapping[str, Any]) -> Classification:
    extra: dict[str, Any] = {"legacy_shape": "dqn_dict"}
    if _is_state_dict(obj["target_net"]):
        extra["target_net"] = dict(obj["target_net"])
    for key in ("epsilon", "memory_size", "steps_done"):
        if key in obj:
            extra[key] = to_plain(obj[key])
    optimizer = obj.get("optimizer")
    return Classification(
        LegacyPayload(
            "dqn_dict",
            dict(obj["policy_net"]),
            optimizer_state=dict(optimizer) if isinstance(optimizer, Mapping) else None,
            extra_state=extra,
            step=_int(obj.get("steps_done")),
            model_type="rl",
        )
    )


def _is_state_dict(value: Any) -> bool:
    return (
        isinstance(value, Mapping)
        and len(value) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def to_plain(value: Any) -> Any:
    """Numbers, strings, tensors, lists and dicts only: numpy scalars become floats, datetimes ISO strings."""
    if isinstance(value, (torch.Tensor, str, bool, int, float)) or value is None:
        return value
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.array(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return repr(value)


def _int(value: Any) -> int | None:
    number = as_number(value)
    return int(number) if number is not None else None


def _unsafe_globals(data: bytes) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data)))
    except Exception:  # noqa: BLE001
        return []


def _looks_unpicklable(data: bytes) -> bool:
    """True when the bytes are neither a zip archive nor a pickle stream (text, random bytes)."""
    return not data.startswith(b"PK") and not data[:1] == b"\x80"


def _first_line(exc: BaseException) -> str:
    """The first sentence of an exception message (torch's are long), at most 200 characters."""
    lines = str(exc).strip().splitlines()
    if not lines:
        return type(exc).__name__
    return lines[0].split(". ")[0].rstrip(".")[:200]
