"""Runs a real `mlflow server` subprocess on loopback: `MlflowServer`.

One worker by default, telemetry and jobs off, proxied artifacts unless `serve_artifacts=False`. `stop()` / `__exit__` clean up the
server's process group, also when the body raised.
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

from .common import LOOPBACK, subprocess_env
from .process import ServerProcess


class MlflowServer(ServerProcess):
    """A real `mlflow server` on 127.0.0.1 with proxied artifacts.

    `backend_store_uri` is e.g. `sqlite:////tmp/x/mlflow.db` or a PostgreSQL URI;
    `artifacts_destination` a directory (or any URI `--artifacts-destination` takes).
    The server's stdout/stderr go to `log_path` (appended across restarts).
    """

    label = "mlflow server"

    def __init__(
        self,
        backend_store_uri: str,
        artifacts_destination: str | Path,
        port: int | None = None,
        log_path: Path | None = None,
        startup_timeout_s: float = 120.0,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        workers: int = 1,
        serve_artifacts: bool = True,
    ) -> None:
        super().__init__(port, log_path, startup_timeout_s)
        self.backend_store_uri = backend_store_uri
        self.artifacts_destination = str(artifacts_destination)
        self.extra_args = list(extra_args or [])
        self.extra_env = dict(env or {})
        self.workers = workers
        self.serve_artifacts = serve_artifacts

    def command(self) -> list[str]:
        # Without proxying, clients upload to the artifact root themselves (e.g. s3:// with MLFLOW_S3_ENDPOINT_URL).
        artifacts = (
            ["--artifacts-destination", self.artifacts_destination]
            if self.serve_artifacts
            else ["--default-artifact-root", self.artifacts_destination, "--no-serve-artifacts"]
        )
        return [
            sys.executable, "-m", "mlflow", "server",
            "--host", LOOPBACK,
            "--port", str(self.port),
            "--workers", str(self.workers),
            "--backend-store-uri", self.backend_store_uri,
            *artifacts,
            *self.extra_args,
        ]  # fmt: skip

    def child_env(self) -> dict[str, str]:
        return subprocess_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", **self.extra_env)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def restart(self, down_s: float = 0.0) -> Self:
        """Stop, stay down for `down_s` seconds (an outage), start again on the same port."""
        self.stop()
        if down_s > 0:
            time.sleep(down_s)
        return self.start()
