"""Every process-wide side effect of a `Persistence`, in one place, each one switchable.

| effect | what it changes | default |
|---|---|---|
| `crc32_off` | `torch.serialization.set_crc32_options(False)`: torch's zip CRC32 off for every torch.save of the process (sha256 still covers our checkpoints) | on only with `fast_serialization=true` |
| `http_retry_defaults` | `MLFLOW_HTTP_REQUEST_*` environment variables (shorter client retries against a tracking server; a user's own settings win) | on for `http(s)://` stores |
| `signal_handlers` | a SIGTERM handler that unwinds the main thread so final checkpoints are saved (restored on close) | on in the main thread |
| `atexit_close` | an `atexit` hook that closes a `Persistence` the script never closed | on |
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from dataclasses import dataclass
from types import FrameType
from typing import Any, Callable

log = logging.getLogger("mlflow_persist")

# MLflow's own defaults retry an unreachable server for about 4 minutes per request. The outbox retries
# registration itself and operators want an answer, so both the library and the CLI use these shorter ones.
HTTP_RETRY_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                       "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}


class GracefulExit(SystemExit):
    """Raised in the main thread on SIGTERM so `with Persistence(...)` blocks unwind and save final checkpoints."""


@dataclass(frozen=True)
class ProcessEffects:
    """Which process-wide side effects a `Persistence` may have (see the module docstring)."""

    crc32_off: bool = False
    http_retry_defaults: bool = True
    signal_handlers: bool = True
    atexit_close: bool = True


def apply_http_retry_defaults() -> None:
    for key, value in HTTP_RETRY_DEFAULTS.items():
        os.environ.setdefault(key, value)


def turn_off_torch_crc32() -> None:
    import torch

    torch.serialization.set_crc32_options(False)


class SignalHandlers:
    """Install a SIGTERM handler (main thread only) that logs and raises GracefulExit; restore on uninstall."""

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM,):
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def uninstall(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()

    @staticmethod
    def _on_signal(signum: int, frame: FrameType | None) -> None:
        log.warning("received %s: saving final checkpoints", signal.Signals(signum).name)
        raise GracefulExit(0)


def register_atexit(close: Callable[[], None]) -> Callable[[], None]:
    """Run `close` at interpreter exit; returns the function to unregister it."""
    atexit.register(close)
    return lambda: atexit.unregister(close)
