"""Test-support helpers that start real server processes on loopback.

Plain context managers and functions (no pytest dependency) so conftest files can wrap
them as fixtures and scripts can reuse them:

- `free_port()`: a free TCP port on 127.0.0.1.
- `MlflowServer`: a real `mlflow server` subprocess (one worker, telemetry and jobs off).
- `PostgresServer`: a private PostgreSQL cluster in a temporary directory.
- `Chromium`: headless Debian chromium driven over the DevTools protocol.
- `MotoServer`: moto's standalone S3-compatible server (in memory); `s3_env()` the client environment.
- `TcpOutageProxy`: a loopback TCP forwarder that can be cut (a service unreachable) and restored.
- `FaultProxy`: a loopback HTTP proxy that withholds the server's reply to some requests (retried POSTs).

Every class cleans up the processes it started in `stop()` / `__exit__`, also when the
body raised. Only loopback addresses are used.

One module per server: `servers.mlflow_server`, `servers.postgres`, `servers.chromium`,
`servers.moto_server`, `servers.tcp_proxy`;
shared plumbing in `servers.common`, the process lifecycle in `servers.process`. `from servers import X` keeps working for every name.
"""

from __future__ import annotations

from .chromium import CHROMIUM_CANDIDATES, Chromium, chromium_path
from .common import LOOPBACK, HelperUnavailable, available, free_port, subprocess_env
from .fault_proxy import FaultProxy
from .mlflow_server import MlflowServer
from .moto_server import DUMMY_AWS_ENV, MotoServer, s3_env
from .postgres import PostgresServer, postgres_bin_dir
from .tcp_proxy import TcpOutageProxy

__all__ = [
    "CHROMIUM_CANDIDATES",
    "DUMMY_AWS_ENV",
    "LOOPBACK",
    "Chromium",
    "FaultProxy",
    "HelperUnavailable",
    "MlflowServer",
    "MotoServer",
    "PostgresServer",
    "TcpOutageProxy",
    "available",
    "chromium_path",
    "free_port",
    "postgres_bin_dir",
    "s3_env",
    "subprocess_env",
]
