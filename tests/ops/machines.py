"""Trainer processes "on separate machines" for the operations tests: each gets its own TMPDIR (file locks),
XDG_CACHE_HOME and outbox directory, so nothing machine-local is shared, and every process is killed at the
end, also when the test failed.

The outbox is named explicitly: tests/conftest.py's autouse fixture sets MLFLOW_PERSIST_OUTBOX_DIR for the
test process, and inherited it would give every trainer one outbox (one then registers another's checkpoints).
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from pathlib import Path

from servers import subprocess_env
from zygote import Zygote


def machine_env(machine: Path, **overrides: str) -> dict[str, str]:
    """The environment of a process on `machine` (a directory): its own locks, cache and outbox, no
    MLFLOW_TRACKING_URI of the test's (each process is told its server)."""
    env = subprocess_env(TMPDIR=str(machine), XDG_CACHE_HOME=str(machine / "cache"),
                         MLFLOW_PERSIST_OUTBOX_DIR=str(machine / "outbox"), **overrides)  # fmt: skip
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def start_on(machine: Path, command: list[str], env: dict[str, str], zygote: Zygote) -> subprocess.Popen[str]:
    """Start the Python command line `command` in `machine` (its own session, stdout and stderr together),
    forked from `zygote` (tests/zygote.py: torch and MLflow imported already)."""
    return zygote.popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                        cwd=machine, start_new_session=True)  # fmt: skip


def finish(name: str, proc: subprocess.Popen[str], timeout: float = 420) -> str:
    """Wait for a trainer; it must exit 0 after printing DONE. Returns its output."""
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"trainer {name} exited {proc.returncode}:\n{out[-4000:]}"
    assert "DONE" in out, out[-4000:]
    return out


@contextlib.contextmanager
def killed_at_exit() -> Iterator[list[subprocess.Popen[str]]]:
    """A list to append started processes to; whatever still runs at exit is killed."""
    procs: list[subprocess.Popen[str]] = []
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
