"""Runs headless Chromium: `Chromium`, Debian chromium driven over the DevTools protocol.

`chromium_path()` finds the binary. Only loopback URLs are opened; `stop()` / `__exit__`
end the browser's process group and delete its profile, also when the body raised.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from .common import LOOPBACK, HelperUnavailable, _tail, _terminate_group, subprocess_env

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
