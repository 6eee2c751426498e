"""What a written checkpoint carries to its registration, and how a save's value reads in the log."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mlflow_persist._format.digest import Digest
from mlflow_persist._policy.policy import PERFORMANCE, is_better
from mlflow_persist._policy.versions import tag

__all__ = ["Registration", "describe_saved_value", "format_change", "tensor_bytes"]


@dataclass(frozen=True)
class Registration:
    """A completely written checkpoint waiting to become a registered version."""

    category: str
    step: int
    value: float | None
    improvement: float | None
    also: list[str]
    created_at: str
    digest: Digest
    size_bytes: int
    retried: bool = False
    tags: dict[str, str] = field(default_factory=dict)  # more version tags; may name another monitor

    @property
    def monitor(self) -> str | None:
        return self.tags.get(tag("monitor"))


def tensor_bytes(value: Any) -> int:
    """Bytes held by the tensors of a (nested) payload: about the size its checkpoint file needs."""
    if isinstance(value, torch.Tensor):
        return value.nelement() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def format_change(monitor: str, previous: float | None, value: float | None) -> str:
    if value is None:
        return f"{monitor} n/a"
    if previous is None:
        return f"{monitor} {value:.6g}"
    pct = f" ({(value - previous) / abs(previous) * 100:+.1f}%)" if previous else ""
    return f"{monitor} {previous:.6g} -> {value:.6g}{pct}"


def describe_saved_value(
    monitor: str | None, category: str, previous: float | None, value: float | None, mode: str
) -> str:
    """The value part of a save's log line. Only a performance save that beat the previous one shows an
    arrow: a worse value is never presented as an improvement."""
    if monitor is None:
        return "no monitor"
    if value is None:
        return f"{monitor} n/a"
    if category == PERFORMANCE and (previous is None or is_better(value, previous, mode)):  # type: ignore[arg-type]
        return format_change(monitor, previous, value)
    if category == PERFORMANCE:
        return f"{monitor} {value:.6g} (not better than the previous performance save, {previous:.6g})"
    return f"{monitor} {value:.6g}"
