"""Runs a PostgreSQL server: `PostgresServer`, a private cluster in a temporary directory.

`postgres_bin_dir()` finds the Debian PostgreSQL binaries. The cluster listens on loopback
only and is stopped and deleted in `stop()` / `__exit__`, also when the body raised.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from .common import LOOPBACK, HelperUnavailable, _tail, free_port, subprocess_env


def postgres_bin_dir() -> Path | None:
    """The newest Debian PostgreSQL bin dir holding initdb and pg_ctl, or None."""
    override = os.environ.get("PG_BIN_DIR")
    candidates = [Path(override)] if override else []
    base = Path("/usr/lib/postgresql")
    if base.is_dir():
        numbered = [p for p in base.iterdir() if p.name.split(".")[0].isdigit()]
        candidates += sorted(
            (p / "bin" for p in numbered), key=lambda p: int(p.parent.name.split(".")[0]), reverse=True
        )
    for found in (shutil.which("initdb"),):
        if found:
            candidates.append(Path(found).parent)
    for cand in candidates:
        if (cand / "initdb").exists() and (cand / "pg_ctl").exists():
            return cand
    return None


class PostgresServer:
    """A private PostgreSQL cluster in a temp dir on a free loopback port.

    PostgreSQL refuses to run as root, so as root the cluster's directory is given to the
    `postgres` system user and every server binary runs through `runuser -u postgres`.
    Authentication is `trust` for loopback only; the cluster is deleted in `stop()`.
    """

    def __init__(self, database: str = "mlflow", user: str = "mlflow", port: int | None = None,
                 startup_timeout_s: float = 60.0) -> None:  # fmt: skip
        self.database = database
        self.user = user
        self.port = port or free_port()
        self.startup_timeout_s = startup_timeout_s
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise HelperUnavailable(
                "PostgreSQL binaries (initdb, pg_ctl) not found; install the Debian `postgresql` package"
            )
        self.bin_dir = bin_dir
        self._run_as: list[str] = []
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                raise HelperUnavailable("running as root but `runuser` is missing, so PostgreSQL cannot be started")
            try:
                import pwd

                pwd.getpwnam("postgres")
            except KeyError as exc:
                raise HelperUnavailable("running as root but there is no `postgres` system user") from exc
            self._run_as = ["runuser", "-u", "postgres", "--"]
        self.root: Path | None = None
        self._started = False

    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        assert self.root is not None
        return self.root / "postgres.log"

    @property
    def uri(self) -> str:
        """SQLAlchemy URI for psycopg2 (SQLAlchemy 2.1 maps bare postgresql:// to psycopg 3)."""
        return f"postgresql+psycopg2://{self.user}@{LOOPBACK}:{self.port}/{self.database}"

    def _run(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = [*self._run_as, *(str(a) for a in args)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd="/", env=subprocess_env(LC_ALL="C"))
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
        return proc

    def start(self) -> Self:
        self.root = Path(tempfile.mkdtemp(prefix="mlflow-persist-pg-"))
        if self._run_as:
            shutil.chown(self.root, user="postgres", group="postgres")
        sock_dir = self.root / "sock"
        try:
            self._run(self.bin_dir / "initdb", "-D", self.data_dir, "-U", "postgres", "-A", "trust",
                      "-E", "UTF8", "--no-instructions")  # fmt: skip
            self._run("mkdir", "-p", sock_dir)
            options = f"-p {self.port} -k {sock_dir} -c listen_addresses={LOOPBACK} -c fsync=off -c max_connections=200"
            self._run(self.bin_dir / "pg_ctl", "-D", self.data_dir, "-l", self.log_path, "-o", options,
                      "-w", "-t", str(int(self.startup_timeout_s)), "start")  # fmt: skip
            self._started = True
            psql = self.bin_dir / "psql"
            base = [psql, "-h", LOOPBACK, "-p", str(self.port), "-U", "postgres", "-v", "ON_ERROR_STOP=1"]
            self._run(*base, "-d", "postgres", "-c", f"CREATE ROLE {self.user} LOGIN")
            self._run(*base, "-d", "postgres", "-c", f"CREATE DATABASE {self.database} OWNER {self.user}")
        except BaseException:
            self.stop()
            raise
        return self

    def create_database(self, name: str) -> PostgresServer:
        """A new, empty database `name` on this running cluster, owned by its role: returns a view of the cluster
        whose `uri` names that database (stop the cluster itself, never the view)."""
        psql = self.bin_dir / "psql"
        self._run(psql, "-h", LOOPBACK, "-p", str(self.port), "-U", "postgres", "-v", "ON_ERROR_STOP=1",
                  "-d", "postgres", "-c", f"CREATE DATABASE {name} OWNER {self.user}")  # fmt: skip
        view = copy.copy(self)
        view.database = name
        return view

    def stop(self) -> None:
        if self.root is None:
            return
        if self._started:
            self._run(self.bin_dir / "pg_ctl", "-D", self.data_dir, "-m", "fast", "-w", "stop", check=False)
            self._started = False
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def log_tail(self, limit: int = 4000) -> str:
        return _tail(self.log_path, limit) if self.root else ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
