"""Every process-wide side effect of a `Persistence`, in one place, each one switchable.

| effect | what it changes | default |
|---|---|---|
| `http_retry_defaults` | `MLFLOW_HTTP_REQUEST_*` environment variables (shorter client retries against a tracking server; a user's own settings win) | on for `http(s)://` stores |
| `signal_handlers` | SIGTERM and SIGINT handlers: a stop request honoured at the next `step()` boundary, so final checkpoints are consistent (restored on close) | on in the main thread, except in an interactive session (a Jupyter or IPython kernel, Python's own prompt), where they are opt-in and never end the process |
| `atexit_close` | an `atexit` hook that closes a `Persistence` the script never closed | on |
| durable sqlite commits | `PRAGMA synchronous=EXTRA` on the SQLAlchemy connections to an embedded store's own `mlflow.db` (a listener that touches no other database): in SQLite's default `FULL` a commit ends by deleting its journal without syncing the directory, so a power cut could roll back a registered version | always, for `sqlite:///` stores |
"""

from __future__ import annotations

import atexit
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType
from typing import Any

from mlflow_persist._observe.logs import package_logger
from mlflow_persist._store.mlflow_env import HTTP_RETRY_DEFAULTS, apply_http_retry_defaults, make_sqlite_commits_durable

__all__ = [
    "HTTP_RETRY_DEFAULTS",
    "GracefulExit",
    "ProcessEffects",
    "SignalHandlers",
    "apply_http_retry_defaults",
    "interactive_session",
    "make_sqlite_commits_durable",
    "register_atexit",
]

log = package_logger("mlflow_persist")


class GracefulExit(SystemExit):
    """Raised in the main thread on SIGTERM so `with Persistence(...)` blocks unwind and save final checkpoints."""


def interactive_session() -> bool:
    """Whether this is an interactive session: a Jupyter or IPython kernel, or Python's own prompt (`python -i`
    included). There Ctrl-C (a kernel's "interrupt") stops a cell, and the process must live on."""
    if hasattr(sys, "ps1") or sys.flags.interactive:
        return True
    get_ipython = getattr(sys.modules.get("IPython"), "get_ipython", None)
    return get_ipython is not None and get_ipython() is not None


@dataclass(frozen=True)
class ProcessEffects:
    """Which process-wide side effects a `Persistence` may have (see the module docstring). `signal_handlers`
    None: on, except in an interactive session."""

    http_retry_defaults: bool = True
    signal_handlers: bool | None = None
    atexit_close: bool = True

    def wants_signal_handlers(self, interactive: bool) -> bool:
        return (not interactive) if self.signal_handlers is None else self.signal_handlers


class SignalHandlers:
    """SIGTERM and SIGINT (main thread only) become a stop request, never an exception in the middle of
    whatever the training thread is doing, so no final checkpoint can hold a half-applied update.

    - The first signal sets `stop`. The next `step()` boundary raises GracefulExit there (`with Persistence`
      blocks unwind and `close()` takes the final checkpoints from a consistent state).
    - If no step boundary comes within `grace_seconds`, `on_timeout()` runs on a timer thread: the process
      exits without a new final checkpoint (the previous ones stay valid).
    - A second signal calls `on_timeout()` at once.
    - In an interactive session (`interactive`) nothing ends the process: a second signal raises
      KeyboardInterrupt, as Ctrl-C does there, and an expired grace period drops the stop request.
    Handlers are restored on uninstall.
    """

    def __init__(self, grace_seconds: float, on_timeout: Callable[[int], None], interactive: bool = False) -> None:
        self.stop = threading.Event()
        self.signum: int | None = None
        self._grace = grace_seconds
        self._on_timeout = on_timeout
        self._interactive = interactive
        self._boundary = threading.Event()
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def uninstall(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    def exit_code(self) -> int:
        return 0 if self.signum in (None, signal.SIGTERM) else 128 + int(self.signum)

    def reached_boundary(self) -> None:
        """Called by `step()` when it acts on the stop request: the grace timer stands down."""
        self._boundary.set()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.stop.is_set():
            if self._interactive:
                self.stop.clear()
                raise KeyboardInterrupt
            log.warning("received %s again: exiting now without a new final checkpoint", name)
            self._on_timeout(signum)
            return
        self.signum = signum
        self.stop.set()
        log.warning("received %s: saving final checkpoints at the next step() (within %.0f s)", name, self._grace)
        timer = threading.Timer(self._grace, self._expire, args=(signum,))
        timer.daemon = True
        timer.start()

    def _expire(self, signum: int) -> None:
        if self._interactive and not self._boundary.is_set():
            self.stop.clear()
            log.warning(
                "no step() boundary within %.0f s of %s: the stop request is dropped (an interactive session "
                "never ends the process for it)",
                self._grace,
                signal.Signals(signum).name,
            )
            return
        if not self._boundary.is_set():
            log.error(
                "no step() boundary within %.0f s of %s: exiting without a new final checkpoint; the "
                "previous checkpoints stay valid",
                self._grace,
                signal.Signals(signum).name,
            )
            self._on_timeout(signum)


def register_atexit(close: Callable[[], None]) -> Callable[[], None]:
    """Run `close` at interpreter exit; returns the function to unregister it."""
    atexit.register(close)
    return lambda: atexit.unregister(close)
