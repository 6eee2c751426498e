"""A loopback HTTP proxy that loses the server's reply to some requests: `FaultProxy`.

It sits between MLflow clients and an `mlflow server` and forwards every request unchanged. For every
`every`-th *new* request to `fault_path` (by default POST /api/2.0/mlflow/model-versions/create) it still
forwards the request and reads the server's complete reply (so the server did the work), then, instead of
passing the reply on, either closes the client's connection without a response (`"drop"`) or answers
`502 Bad Gateway` (`"bad_gateway"`), alternating between the modes given. Both are what a load balancer does
when the upstream answered too late, and both are failures MLflow's HTTP client retries, also for POST
(mlflow.utils.request_utils: urllib3 `Retry` with `allowed_methods=None`, `read` retries for a connection
closed before the response, `status_forcelist` 408/429/500/502/503/504). A body it faulted once is never
faulted again, so the client's retry always gets through.

Every request to `fault_path` or one of `record_paths` is kept in `records` (and appended as a JSON line to
`log_path`): method, path, the request body's JSON, the upstream status and JSON reply, what the proxy did
with it (`forwarded`, `drop`, `bad_gateway`) and whether the same body was seen before (`repeat`). That list
is the test's independent record of what the server was asked to do and did.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

from .common import LOOPBACK

CREATE_MODEL_VERSION = "/api/2.0/mlflow/model-versions/create"
DELETE_MODEL_VERSION = "/api/2.0/mlflow/model-versions/delete"
FAULT_MODES = ("drop", "bad_gateway")
# Hop-by-hop headers (RFC 9110 7.6.1) and the framing the proxy sets itself.
_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
    "content-length",
    "host",
}


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


class FaultProxy:
    """HTTP proxy on 127.0.0.1 in front of `upstream` (e.g. `http://127.0.0.1:5000`), in this process's
    threads. `uri` is where clients point instead of the server."""

    def __init__(
        self,
        upstream: str,
        *,
        fault_path: str = CREATE_MODEL_VERSION,
        fault_method: str = "POST",
        every: int = 3,
        modes: Iterable[str] = FAULT_MODES,
        record_paths: Iterable[str] = (DELETE_MODEL_VERSION,),
        log_path: Path | None = None,
        upstream_timeout_s: float = 120.0,
    ) -> None:
        parts = urlsplit(upstream)
        if parts.hostname not in (LOOPBACK, "localhost"):
            raise ValueError(f"FaultProxy forwards to loopback only, not {upstream}")
        self.upstream_host, self.upstream_port = LOOPBACK, int(parts.port or 80)
        self.fault_path, self.fault_method = fault_path, fault_method.upper()
        if every < 1:
            raise ValueError("every must be >= 1")
        self.every = every
        self.modes = tuple(modes)
        unknown = set(self.modes) - set(FAULT_MODES)
        if not self.modes or unknown:
            raise ValueError(f"modes must be a non-empty subset of {FAULT_MODES}, not {self.modes}")
        self.record_paths = {fault_path, *record_paths}
        self.log_path = log_path
        self.upstream_timeout_s = upstream_timeout_s
        self.records: list[dict[str, Any]] = []
        self.requests_forwarded = 0
        self._seen: set[str] = set()
        self._new = 0  # new (never seen) bodies sent to fault_path
        self._faults = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "FaultProxy not started"
        return int(self._server.server_address[1])

    @property
    def uri(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def faulted(self) -> list[dict[str, Any]]:
        """The records of requests whose reply the proxy withheld."""
        with self._lock:
            return [r for r in self.records if r["action"] != "forwarded"]

    def start(self) -> Self:
        if self._server is not None:
            return self
        proxy = self

        class Handler(_Handler):
            owner = proxy

        server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------------------ called by the handler

    def _decide(self, method: str, path: str, body: bytes) -> tuple[str | None, bool]:
        """(fault mode or None, whether this body was seen before) for one request."""
        if method != self.fault_method or path != self.fault_path:
            return None, False
        key = hashlib.sha256(body).hexdigest()
        with self._lock:
            repeat = key in self._seen
            self._seen.add(key)
            if repeat:
                return None, True
            self._new += 1
            if self._new % self.every:
                return None, False
            mode = self.modes[self._faults % len(self.modes)]
            self._faults += 1
            return mode, False

    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            entry["n"] = len(self.records)
            self.records.append(entry)
            if self.log_path is not None:
                with open(self.log_path, "a", encoding="utf-8") as log:
                    log.write(json.dumps(entry) + "\n")


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._proxy()

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = do_GET  # noqa: N815

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _proxy(self) -> None:
        owner = self.owner
        body = self._read_body()
        path = urlsplit(self.path).path
        mode, repeat = owner._decide(self.command, path, body)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        started = time.time()
        upstream = http.client.HTTPConnection(
            owner.upstream_host, owner.upstream_port, timeout=owner.upstream_timeout_s
        )
        try:
            upstream.request(self.command, self.path, body=body or None, headers=headers)
            resp = upstream.getresponse()
            reply = resp.read()
            status, reason, reply_headers = resp.status, resp.reason, resp.getheaders()
        except OSError as exc:
            self.send_error(502, f"upstream unreachable: {exc}")
            return
        finally:
            upstream.close()
        with owner._lock:
            owner.requests_forwarded += 1
        if path in owner.record_paths:
            owner._record({
                "time": started, "method": self.command, "path": path, "request": _json(body),
                "status": status, "reply": _json(reply), "action": mode or "forwarded", "repeat": repeat,
            })  # fmt: skip
        if mode == "drop":
            self.close_connection = True  # no response at all: the client sees the connection closed
            return
        if mode == "bad_gateway":
            message = b'{"error_code": "BAD_GATEWAY", "message": "fault proxy withheld the reply"}'
            self.send_response(502, "Bad Gateway")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(message)))
            self.end_headers()
            self.wfile.write(message)
            return
        self.send_response(status, reason)
        for key, value in reply_headers:
            if key.lower() not in _HOP and key.lower() not in ("server", "date"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply)
