"""`ServerProcess`: the lifecycle every loopback server helper shares (start in its own process group, wait
until healthy, SIGTERM/SIGKILL the group, log tail, context manager). Subclasses give `command()`,
`healthy()` and, if needed, `child_env()`."""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from .common import LOOPBACK, _kill_group_quietly, _port_open, _tail, _terminate_group, free_port, subprocess_env


class ServerProcess:
    label = "server"

    def __init__(self, port: int | None, log_path: Path | None, startup_timeout_s: float) -> None:
        self.port = port or free_port()
        self.log_path = log_path or Path(tempfile.mkstemp(prefix=f"{self.label.replace(' ', '-')}-", suffix=".log")[1])
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def healthy(self) -> bool:
        raise NotImplementedError

    def child_env(self) -> dict[str, str]:
        return subprocess_env()

    @property
    def uri(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        if self.running():
            return self
        if _port_open(self.port):
            raise RuntimeError(f"port {self.port} is already in use; cannot start {self.label} there")
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {' '.join(self.command())}\n".encode())
            self._proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=self.child_env(),
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
        try:
            self._wait_healthy()
        except BaseException:
            self.kill()
            raise
        return self

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        assert self._proc is not None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"{self.label} exited with {self._proc.returncode} before it was healthy; "
                    f"log tail:\n{self.log_tail()}"
                )
            if self.healthy():
                return
            time.sleep(0.25)
        raise RuntimeError(
            f"{self.label} not healthy after {self.startup_timeout_s:.0f} s; log tail:\n{self.log_tail()}"
        )

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM the server's process group, SIGKILL after `grace_s`."""
        if self._proc is not None:
            _terminate_group(self._proc, grace_s)
        self._wait_port_closed()

    def kill(self) -> None:
        """SIGKILL the server's process group at once (a crash)."""
        if self._proc is not None:
            _kill_group_quietly(self._proc.pid, signal.SIGKILL)
            self._proc.wait(timeout=30)
        self._wait_port_closed()

    def _wait_port_closed(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and _port_open(self.port):
            time.sleep(0.1)

    def log_tail(self, limit: int = 4000) -> str:
        return _tail(self.log_path, limit)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
