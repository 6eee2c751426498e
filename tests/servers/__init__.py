"""Test-support helpers that start real server processes on loopback.

Plain context managers and functions (no pytest dependency) so conftest files can wrap
them as fixtures and scripts can reuse them:

- `free_port()`: a free TCP port on 127.0.0.1.
- `MlflowServer`: a real `mlflow server` subprocess (one worker, telemetry and jobs off).
- `PostgresServer`: a private PostgreSQL cluster in a temporary directory.
- `Chromium`: headless Debian chromium driven over the DevTools protocol.

Every class cleans up the processes it started in `stop()` / `__exit__`, also when the
body raised. Only loopback addresses are used.

One module per server: `servers.mlflow_server`, `servers.postgres`, `servers.chromium`;
shared plumbing in `servers.common`. `from servers import X` keeps working for every name.
"""

from __future__ import annotations

from .chromium import CHROMIUM_CANDIDATES, Chromium, chromium_path
from .common import LOOPBACK, HelperUnavailable, free_port, subprocess_env
from .mlflow_server import MlflowServer
from .postgres import PostgresServer, postgres_bin_dir

__all__ = [
    "CHROMIUM_CANDIDATES",
    "LOOPBACK",
    "Chromium",
    "HelperUnavailable",
    "MlflowServer",
    "PostgresServer",
    "chromium_path",
    "free_port",
    "postgres_bin_dir",
    "subprocess_env",
]
