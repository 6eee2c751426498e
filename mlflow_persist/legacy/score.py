"""The legacy CheckpointManager's performance score and the metrics a legacy record carries."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "NON_METRIC_FIELDS",
    "SCORE_FIELD",
    "as_number",
    "metrics_with_score",
    "numeric_metrics",
    "performance_score",
]

# Fields of a metadata entry that describe the file or the run rather than model performance.
NON_METRIC_FIELDS = frozenset({"file_size_mb", "total_parameters", "training_time_hours", "epoch"})
SCORE_FIELD = "performance_score"


def performance_score(metrics: Mapping[str, Any]) -> float:
    """The old score, higher is better: 100*accuracy + 100*val_accuracy + max(0, 10-loss) + max(0, 10-val_loss)
    + reward + pnl over the fields present, 0.1 when none is present."""
    score = 0.0
    present = False
    for key, weight in (("accuracy", 100.0), ("val_accuracy", 100.0)):
        value = as_number(metrics.get(key))
        if value is not None:
            score += weight * value
            present = True
    for key in ("loss", "val_loss"):
        value = as_number(metrics.get(key))
        if value is not None:
            score += max(0.0, 10.0 - value)
            present = True
    for key in ("reward", "pnl"):
        value = as_number(metrics.get(key))
        if value is not None:
            score += value
            present = True
    return score if present else 0.1


def as_number(value: Any) -> float | None:
    """A finite float from an int/float/numpy scalar/0-d tensor; None for anything else (bool included)."""
    if value is None or isinstance(value, bool):
        return None
    item = getattr(value, "item", None)
    if callable(item) and not isinstance(value, (int, float)):
        try:
            value = item()
        except (TypeError, ValueError, RuntimeError):
            return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def numeric_metrics(record: Mapping[str, Any], exclude: frozenset[str] = NON_METRIC_FIELDS) -> dict[str, float]:
    """Every finite numeric field of a legacy record except the ones in `exclude`."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if not isinstance(key, str) or key in exclude:
            continue
        number = as_number(value)
        if number is not None:
            out[key] = number
    return out


def metrics_with_score(metrics: Mapping[str, float]) -> dict[str, float]:
    """`metrics` plus the old performance_score when it is missing and a field of its formula is present."""
    out = dict(metrics)
    formula_fields = {"accuracy", "val_accuracy", "loss", "val_loss", "reward", "pnl"}
    if SCORE_FIELD not in out and formula_fields & out.keys():
        out[SCORE_FIELD] = performance_score(out)
    return out
