"""Runs moto's standalone S3-compatible server on loopback: `MotoServer`, plus boto3 helpers for tests.

moto keeps every bucket in memory: a stopped server loses them, so an object-store outage is simulated
with a `TcpOutageProxy` (servers.tcp_proxy) in front of it, not by restarting moto. `stop()` / `__exit__` clean up
the server's process group, also when the body raised.
"""

from __future__ import annotations

import importlib.util
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .common import LOOPBACK, HelperUnavailable, subprocess_env
from .process import ServerProcess

#: Dummy credentials: moto accepts any, boto3 only wants some.
DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def s3_env(endpoint_url: str) -> dict[str, str]:
    """The environment an S3 client (mlflow server or trainer) needs to reach `endpoint_url` with dummy creds."""
    return {**DUMMY_AWS_ENV, "MLFLOW_S3_ENDPOINT_URL": endpoint_url}


class MotoServer(ServerProcess):
    """`python -m moto.server` on 127.0.0.1 (in-memory S3; any credentials are accepted).

    The server's stdout/stderr go to `log_path`. Raises HelperUnavailable at construction when moto's
    server extra (flask, werkzeug) or boto3 is not installed.
    """

    label = "moto server"

    def __init__(self, port: int | None = None, log_path: Path | None = None,
                 startup_timeout_s: float = 60.0) -> None:  # fmt: skip
        missing = [m for m in ("moto", "flask", "werkzeug", "boto3") if importlib.util.find_spec(m) is None]
        if missing:
            raise HelperUnavailable(
                f"moto's standalone server needs {', '.join(missing)}; "
                "install `moto[server]` and `boto3` (the test extra)"
            )
        super().__init__(port, log_path, startup_timeout_s)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)]

    def child_env(self) -> dict[str, str]:
        return subprocess_env(**DUMMY_AWS_ENV)

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/moto-api/data.json", timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    # ------------------------------------------------------------------------------------- boto3 helpers

    def client(self, endpoint_url: str | None = None) -> Any:
        """A boto3 S3 client for this server (or for `endpoint_url`, e.g. a proxy in front of it)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=endpoint_url or self.uri,
                            region_name=DUMMY_AWS_ENV["AWS_DEFAULT_REGION"],
                            aws_access_key_id=DUMMY_AWS_ENV["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=DUMMY_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
                            config=Config(retries={"max_attempts": 3, "mode": "standard"}))  # fmt: skip

    def create_bucket(self, name: str, versioning: bool = False) -> str:
        """Create bucket `name` (with object versioning: a deleted object keeps its versions under a delete
        marker, so `object_versions()` shows everything ever written and deleted); returns the name."""
        client = self.client()
        client.create_bucket(Bucket=name)
        if versioning:
            client.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
        return name

    def list_objects(self, bucket: str, prefix: str = "") -> dict[str, int]:
        """Every object key under `prefix` in `bucket` with its size in bytes (all pages)."""
        found: dict[str, int] = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            found.update({obj["Key"]: int(obj["Size"]) for obj in page.get("Contents", [])})
        return found

    def object_versions(self, bucket: str, prefix: str = "") -> list[dict[str, Any]]:
        """Every version and delete marker under `prefix` (a versioned bucket): dicts with key, version_id,
        latest, deleted (a delete marker) and size."""
        found: list[dict[str, Any]] = []
        for page in self.client().get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
            found += [
                {
                    "key": v["Key"],
                    "version_id": v["VersionId"],
                    "latest": v["IsLatest"],
                    "deleted": False,
                    "size": int(v["Size"]),
                }
                for v in page.get("Versions", [])
            ]
            found += [
                {"key": m["Key"], "version_id": m["VersionId"], "latest": m["IsLatest"], "deleted": True, "size": 0}
                for m in page.get("DeleteMarkers", [])
            ]
        return found

    def get_object(self, bucket: str, key: str, version_id: str | None = None) -> bytes:
        extra = {"VersionId": version_id} if version_id else {}
        return bytes(self.client().get_object(Bucket=bucket, Key=key, **extra)["Body"].read())
