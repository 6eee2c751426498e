"""Runs a real `mlflow server` subprocess on loopback: `MlflowServer`.

One worker, telemetry and jobs off, proxied artifacts. `stop()` / `__exit__` clean up the
server's process group, also when the body raised.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

from .common import LOOPBACK, _kill_group_quietly, _port_open, _tail, _terminate_group, free_port, subprocess_env


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with proxied artifacts.

    `backend_store_uri` is e.g. `sqlite:////tmp/x/mlflow.db` or a PostgreSQL URI;
    `artifacts_destination` a directory (or any URI `--artifacts-destination` takes).
    The server's stdout/stderr go to `log_path` (appended across restarts).
    """

    def __init__(
        self,
        backend_store_uri: str,
        artifacts_destination: str | Path,
        port: int | None = None,
        log_path: Path | None = None,
        startup_timeout_s: float = 120.0,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.backend_store_uri = backend_store_uri
        self.artifacts_destination = str(artifacts_destination)
        self.port = port or free_port()
        self.log_path = log_path or Path(tempfile.mkstemp(prefix="mlflow-server-", suffix=".log")[1])
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = list(extra_args or [])
        self.extra_env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "mlflow", "server",
            "--host", LOOPBACK,
            "--port", str(self.port),
            "--workers", "1",
            "--backend-store-uri", self.backend_store_uri,
            "--artifacts-destination", self.artifacts_destination,
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> Self:
        if self._proc is not None and self._proc.poll() is None:
            return self
        if _port_open(self.port):
            raise RuntimeError(f"port {self.port} is already in use; cannot start mlflow server there")
        env = subprocess_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **self.extra_env)
        with open(self.log_path, "ab") as log:
            log.write(f"\n===== start {' '.join(self.command())}\n".encode())
            self._proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, env=env,
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
                    f"mlflow server exited with {self._proc.returncode} before it was healthy; "
                    f"log tail:\n{self.log_tail()}"
                )
            if self.healthy():
                return
            time.sleep(0.25)
        raise RuntimeError(
            f"mlflow server not healthy after {self.startup_timeout_s:.0f} s; log tail:\n{self.log_tail()}"
        )

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

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

    def restart(self, down_s: float = 0.0) -> Self:
        """Stop, stay down for `down_s` seconds (an outage), start again on the same port."""
        self.stop()
        if down_s > 0:
            time.sleep(down_s)
        return self.start()

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
