"""Shared plumbing for the server helpers in this package (no server of its own).

The loopback address, `HelperUnavailable`, `free_port()`, waiting for a port, log tails,
stopping a process group, and `subprocess_env()` for the children the helpers start.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

LOOPBACK = "127.0.0.1"


class HelperUnavailable(RuntimeError):
    """A binary the helper needs is missing; tests turn this into a skip with the reason."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((LOOPBACK, port)) == 0


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return ""


def _terminate_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM the process group started for `proc`, then SIGKILL what is left."""
    if proc.poll() is not None:
        _kill_group_quietly(proc.pid, signal.SIGKILL)
        return
    _kill_group_quietly(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    _kill_group_quietly(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _kill_group_quietly(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def subprocess_env(**overrides: str) -> dict[str, str]:
    """The environment for child processes: telemetry off, no proxies for loopback."""
    env = dict(os.environ)
    env.update(
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
    )
    env.update(overrides)
    return env


def available(factory: Callable[[], T]) -> T:
    """`factory()`, or a skip when its helper program is missing (a failure under MLFLOW_PERSIST_REQUIRE_SERVICES=1,
    as in CI, where every helper is installed)."""
    import pytest

    try:
        return factory()
    except HelperUnavailable as exc:
        if os.environ.get("MLFLOW_PERSIST_REQUIRE_SERVICES") == "1":
            pytest.fail(f"required service unavailable: {exc}")
        pytest.skip(str(exc))
