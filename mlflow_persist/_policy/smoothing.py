"""Pure monitor smoothing: improvement and `best` are decided on a smoothed value, not on one noisy minibatch.

- `none`: the raw value.
- `ema`: exponential moving average, `s = alpha * x + (1 - alpha) * s`, seeded by the first value.
- `window` (the mean; `window_mean` is the same) and `window_median`: over the last `monitor_window` values; no smoothed value exists
  until the window is full, so the first few values cannot set `best` on their own.

Non-finite values (NaN, inf) are skipped: they neither enter the average nor produce a smoothed value. The
state (`state_dict`) goes into every checkpoint, so a restored trainer continues the same curve.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Any, Literal

__all__ = ["SMOOTHINGS", "MonitorSmoother", "Smoothing"]

Smoothing = Literal["none", "ema", "window", "window_mean", "window_median"]
SMOOTHINGS: tuple[str, ...] = ("none", "ema", "window", "window_mean", "window_median")


class MonitorSmoother:
    """Turns each raw monitor value into the value that decides saves (None: not decided on yet)."""

    def __init__(self, kind: Smoothing = "none", ema_alpha: float = 0.1, window: int = 20) -> None:
        if kind not in SMOOTHINGS:
            raise ValueError(f"monitor_smoothing={kind!r} is not one of {', '.join(SMOOTHINGS)}")
        if not 0.0 < ema_alpha <= 1.0:
            raise ValueError(f"monitor_ema_alpha={ema_alpha} must lie in (0, 1]")
        if window < 1:
            raise ValueError(f"monitor_window={window} must be at least 1")
        self.kind = "window" if kind == "window_mean" else kind
        self.ema_alpha = float(ema_alpha)
        self.window = int(window)
        self.ema: float | None = None
        self.values: deque[float] = deque(maxlen=self.window)
        self.value: float | None = None  # the latest smoothed value

    def update(self, raw: float) -> float | None:
        """Take one raw value; returns the smoothed value (None while none exists yet)."""
        if not math.isfinite(raw):
            return None
        if self.kind == "none":
            self.value = raw
        elif self.kind == "ema":
            self.ema = raw if self.ema is None else self.ema_alpha * raw + (1.0 - self.ema_alpha) * self.ema
            self.value = self.ema
        else:
            self.values.append(raw)
            if len(self.values) < self.window:
                return None
            self.value = (
                math.fsum(self.values) / len(self.values)
                if self.kind == "window"
                else float(statistics.median(self.values))
            )
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "ema_alpha": self.ema_alpha,
            "window": self.window,
            "ema": self.ema,
            "values": list(self.values),
            "value": self.value,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue a saved curve; a state saved under other settings is ignored (the curve starts afresh)."""
        if (state.get("kind"), state.get("ema_alpha"), state.get("window")) != (self.kind, self.ema_alpha, self.window):
            return
        self.ema = state.get("ema")
        self.values = deque((float(v) for v in state.get("values", [])), maxlen=self.window)
        self.value = state.get("value")
