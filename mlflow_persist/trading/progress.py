"""The live progress display of a trading run: steps/s and, per model, loss, best, accuracy and last save."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .models import ACTIONS

__all__ = ["ProgressView"]


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _age(saved_at: float | None, now: float) -> str:
    if saved_at is None:
        return "-"
    seconds = max(0.0, now - saved_at)
    return f"{seconds:.0f}s ago" if seconds < 120 else f"{seconds / 60:.1f}m ago"


class ProgressView:
    """Renders the run's state; live (rich) on a terminal, a periodic plain line otherwise."""

    def __init__(self, system: Any, total: int | None, console: Console | None = None, line_every: int = 100) -> None:
        self.system = system
        self.total = total
        self.console = console or Console(stderr=True)
        self.line_every = line_every
        self.started = time.monotonic()
        self._window: deque[tuple[float, int]] = deque(maxlen=50)
        self._live: Live | None = None
        self.last_decision: Any = None

    def steps_per_second(self) -> float:
        if len(self._window) < 2:
            elapsed = time.monotonic() - self.started
            return getattr(self.system, "steps_this_run", self.system.steps_done) / elapsed if elapsed > 0 else 0.0
        (t0, s0), (t1, s1) = self._window[0], self._window[-1]
        return (s1 - s0) / (t1 - t0) if t1 > t0 else 0.0

    def render(self) -> Group:
        now = time.time()
        done = self.system.steps_done
        total = f"/{self.total}" if self.total is not None else ""
        header = Text(
            f"steps {done}{total}   {self.steps_per_second():.1f} steps/s   "
            f"elapsed {time.monotonic() - self.started:.0f}s"
        )
        if self.last_decision is not None:
            header.append(
                f"   bar {self.last_decision.bar_time:%Y-%m-%d %H:%M}   action {ACTIONS[self.last_decision.action]}"
            )
        table = Table(expand=False)
        for column in ("model", "step", "loss", "best", "accuracy", "version", "last save"):
            table.add_column(column, justify="right" if column != "model" else "left")
        for name, state in self.system.model_states.items():
            table.add_row(
                name,
                _fmt(state["steps"]),
                _fmt(state["current_loss"]),
                _fmt(state["best_loss"]),
                _fmt(state["accuracy"], 3),
                _fmt(state["last_checkpoint_version"]),
                _age(state["last_save_time"], now),
            )
        return Group(header, table)

    def line(self) -> str:
        parts = [f"step {self.system.steps_done}", f"{self.steps_per_second():.1f} steps/s"]
        for name, state in self.system.model_states.items():
            parts.append(
                f"{name} loss={_fmt(state['current_loss'])} best={_fmt(state['best_loss'])} "
                f"v={_fmt(state['last_checkpoint_version'])}"
            )
        return " | ".join(parts)

    def __enter__(self) -> ProgressView:
        if self.console.is_terminal:
            self._live = Live(self.render(), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def update(self, decision: Any) -> None:
        self.last_decision = decision
        self._window.append((time.monotonic(), self.system.steps_done))
        if self._live is not None:
            if self.system.steps_done % 5 == 0:
                self._live.update(self.render())
        elif self.system.steps_done % self.line_every == 0:
            self.console.print(self.line(), highlight=False, soft_wrap=True)

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.update(self.render())
            self._live.__exit__(*exc)
            self._live = None
        else:
            self.console.print(self.line(), highlight=False, soft_wrap=True)
