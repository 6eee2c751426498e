"""Test-support helpers that start real server processes on loopback.

Plain context managers and functions (no pytest dependency) so conftest files can wrap
them as fixtures and scripts can reuse them:

- `free_port()`: a free TCP port on 127.0.0.1.
- `MlflowServer`: a real `mlflow server` subprocess (one worker, telemetry and jobs off).
- `PostgresServer`: a private PostgreSQL cluster in a temporary directory.
- `Chromium`: headless Debian chromium driven over the DevTools protocol.

Every class cleans up the processes it started in `stop()` / `__exit__`, also when the
body raised. Only loopback addresses are used.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

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


# --------------------------------------------------------------------------- mlflow server


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


# --------------------------------------------------------------------------- postgres


def postgres_bin_dir() -> Path | None:
    """The newest Debian PostgreSQL bin dir holding initdb and pg_ctl, or None."""
    override = os.environ.get("PG_BIN_DIR")
    candidates = [Path(override)] if override else []
    base = Path("/usr/lib/postgresql")
    if base.is_dir():
        numbered = [p for p in base.iterdir() if p.name.split(".")[0].isdigit()]
        candidates += sorted((p / "bin" for p in numbered), key=lambda p: int(p.parent.name.split(".")[0]), reverse=True)
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
            raise HelperUnavailable("PostgreSQL binaries (initdb, pg_ctl) not found; install the Debian `postgresql` package")
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


# --------------------------------------------------------------------------- chromium


CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def chromium_path() -> str | None:
    override = os.environ.get("CHROMIUM_BIN")
    for cand in ([override] if override else []) + list(CHROMIUM_CANDIDATES):
        if cand and os.access(cand, os.X_OK):
            return cand
    return shutil.which("chromium")


class Chromium:
    """Headless chromium driven over the DevTools protocol with `websocket-client`.

    One page target; `navigate`, `evaluate` (JS expression -> value), `wait_for_text`,
    `wait_for_selector`, `wait_for` (any JS predicate) and `screenshot`. The DevTools
    port is chosen by chromium itself (`--remote-debugging-port=0`) and read from the
    profile's `DevToolsActivePort` file, so there is no port race.
    """

    FLAGS = (
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
        "--no-first-run", "--no-default-browser-check", "--disable-extensions",
        "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
    )  # fmt: skip

    def __init__(self, width: int = 1600, height: int = 1000, log_path: Path | None = None,
                 startup_timeout_s: float = 60.0) -> None:  # fmt: skip
        binary = chromium_path()
        if binary is None:
            raise HelperUnavailable("chromium not found (install the Debian `chromium` package or set CHROMIUM_BIN)")
        try:
            import websocket  # noqa: F401
        except ImportError as exc:
            raise HelperUnavailable("websocket-client is not installed (pip install websocket-client)") from exc
        self.binary = binary
        self.width, self.height = width, height
        self.startup_timeout_s = startup_timeout_s
        self.profile = Path(tempfile.mkdtemp(prefix="mlflow-persist-chromium-"))
        self.log_path = log_path or self.profile.with_suffix(".log")
        self._proc: subprocess.Popen[bytes] | None = None
        self._ws: Any = None
        self._ids = itertools.count(1)
        self.devtools_port: int | None = None

    def start(self) -> Self:
        cmd = [self.binary, *self.FLAGS, f"--user-data-dir={self.profile}", "--remote-debugging-address=127.0.0.1",
               "--remote-debugging-port=0", f"--window-size={self.width},{self.height}", "about:blank"]  # fmt: skip
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          env=subprocess_env(), start_new_session=True)  # fmt: skip
        try:
            self._connect()
        except BaseException:
            self.stop()
            raise
        return self

    def _connect(self) -> None:
        import websocket

        assert self._proc is not None
        active = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.startup_timeout_s
        while not (active.exists() and active.read_text().strip()):
            if self._proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {self._proc.returncode}; log tail:\n{_tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not open DevTools in time; log tail:\n{_tail(self.log_path)}")
            time.sleep(0.1)
        self.devtools_port = int(active.read_text().splitlines()[0])
        page_ws = None
        while page_ws is None:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.devtools_port}/json/list", timeout=5) as resp:
                targets = json.load(resp)
            page_ws = next((t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page"), None)
            if page_ws is None:
                if time.monotonic() > deadline:
                    raise RuntimeError("chromium has no page target")
                time.sleep(0.1)
        # suppress_origin: chromium rejects DevTools websockets that carry a foreign Origin header.
        self._ws = websocket.create_connection(page_ws, timeout=30, suppress_origin=True)
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                  deviceScaleFactor=1, mobile=False)  # fmt: skip

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its `result` (events in between are dropped)."""
        if self._ws is None:
            raise RuntimeError("chromium is not started")
        msg_id = next(self._ids)
        self._ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self._ws.recv())
            if msg.get("id") != msg_id:
                continue
            if "error" in msg:
                raise RuntimeError(f"DevTools {method} failed: {msg['error']}")
            return dict(msg.get("result", {}))

    def navigate(self, url: str, fresh: bool = True) -> None:
        """Open `url` and wait for the document to load.

        `fresh` loads the page from scratch (via about:blank): a single-page app reached
        by a hash-only change keeps its old state (the MLflow UI then shows an empty
        model page), which is not what a user opening the link sees."""
        if not url.startswith(("http://127.0.0.1", "http://localhost", "about:", "file:")):
            raise ValueError(f"refusing to open a non-loopback URL: {url}")
        if fresh and not url.startswith("about:"):
            self.send("Page.navigate", url="about:blank")
            self.wait_for("location.href === 'about:blank' && document.readyState === 'complete'", timeout_s=30)
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise RuntimeError(f"navigation to {url} failed: {result['errorText']}")
        self.wait_for("document.readyState === 'complete'", timeout_s=60, what=f"{url} to load")

    def evaluate(self, expression: str) -> Any:
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JS error in {expression!r}: {result['exceptionDetails'].get('text')}")
        return result.get("result", {}).get("value")

    def wait_for(self, predicate_js: str, timeout_s: float = 60.0, what: str | None = None) -> Any:
        """Poll a JS expression until it is truthy; return its value."""
        deadline = time.monotonic() + timeout_s
        while True:
            value = self.evaluate(predicate_js)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what or predicate_js}")
            time.sleep(0.25)

    _TEXT_JS = "(document.body ? document.body.innerText : '').replace(/\\u00a0/g, ' ')"

    def text(self) -> str:
        """The page's visible text, non-breaking spaces turned into plain spaces."""
        return str(self.evaluate(f"{self._TEXT_JS}") or "")

    def wait_for_text(self, *needles: str, timeout_s: float = 60.0) -> str:
        """Wait until the page's visible text holds every needle; return that text."""
        checks = " && ".join(f"t.includes({json.dumps(n)})" for n in needles)
        js = f"(() => {{ const t = {self._TEXT_JS}; return ({checks}) ? t : ''; }})()"
        try:
            return str(self.wait_for(js, timeout_s=timeout_s, what=f"text {needles!r}"))
        except TimeoutError as exc:
            missing = [n for n in needles if n not in self.text()]
            raise TimeoutError(f"{exc}; missing {missing!r}; page text:\n{self.text()[:3000]}") from None

    def wait_for_selector(self, selector: str, timeout_s: float = 60.0, min_count: int = 1) -> int:
        """Wait until at least `min_count` elements match the CSS selector; return the count."""
        js = f"document.querySelectorAll({json.dumps(selector)}).length >= {min_count} && document.querySelectorAll({json.dumps(selector)}).length"
        return int(self.wait_for(js, timeout_s=timeout_s, what=f"selector {selector!r}"))

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        data = self.send("Page.captureScreenshot", **params)["data"]
        path = Path(path)
        path.write_bytes(base64.b64decode(data))
        return path

    def stop(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:  # noqa: BLE001 - best effort on shutdown
                pass
            self._ws = None
        if self._proc is not None:
            _terminate_group(self._proc, grace_s=5)
            self._proc = None
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
