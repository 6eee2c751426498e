"""Whether a stored model state fits a live model: which keys are missing, unexpected, or shaped
differently, and the part of it that does fit (for `restore(strict=False)`). Pure, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["StateFit", "fitting_part", "model_state_fit"]


@dataclass(frozen=True)
class StateFit:
    missing: list[str] = field(default_factory=list)  # in the live model, not in the checkpoint
    unexpected: list[str] = field(default_factory=list)  # in the checkpoint, not in the live model
    reshaped: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)  # key, saved, live

    @property
    def fits(self) -> bool:
        return not (self.missing or self.unexpected or self.reshaped)

    def describe(self, limit: int = 6) -> str:
        parts = []
        if self.reshaped:
            shown = ", ".join(f"{k} {list(saved)} (model has {list(live)})" for k, saved, live in self.reshaped[:limit])
            parts.append(f"shapes differ: {shown}" + (" …" if len(self.reshaped) > limit else ""))
        if self.missing:
            parts.append(
                f"missing from the checkpoint: {', '.join(self.missing[:limit])}"
                + (" …" if len(self.missing) > limit else "")
            )
        if self.unexpected:
            parts.append(
                f"not in the model: {', '.join(self.unexpected[:limit])}"
                + (" …" if len(self.unexpected) > limit else "")
            )
        return "; ".join(parts)


def _shape(value: Any) -> tuple[int, ...] | None:
    shape = getattr(value, "shape", None)
    return tuple(shape) if shape is not None else None


def model_state_fit(live: Mapping[str, Any], saved: Mapping[str, Any]) -> StateFit:
    reshaped = [
        (k, _shape(saved[k]) or (), _shape(live[k]) or ())
        for k in live
        if k in saved and _shape(live[k]) != _shape(saved[k])
    ]
    return StateFit(
        missing=[k for k in live if k not in saved], unexpected=[k for k in saved if k not in live], reshaped=reshaped
    )


def fitting_part(live: Mapping[str, Any], saved: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of `saved` whose key and shape the live model has."""
    return {k: v for k, v in saved.items() if k in live and _shape(live[k]) == _shape(v)}
