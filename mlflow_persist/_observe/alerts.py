"""Alert delivery: a CRITICAL log line at once, then the sinks (a Python callable, a shell command, an HTTP
webhook) on a background thread, through a bounded queue, so a slow or hanging sink never stalls training.

A failing sink is logged and never raises into the caller; when the queue is full the newest alert is
dropped with a warning (the log line was already written).
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from mlflow_persist._format.timestamps import utc_now_iso
from mlflow_persist._observe.logs import package_logger

__all__ = ["SENT_KEPT", "Alert", "AlertDispatcher", "AlertSink", "command_sink", "webhook_sink"]

log = package_logger("mlflow_persist.alerts")


@dataclass(frozen=True)
class Alert:
    kind: str  # save_failures | degradation | disk | revert_failed | cut_abandoned | outbox_entry_abandoned
    model: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    at: str = field(default_factory=utc_now_iso)


AlertSink = Callable[[Alert], None]
SENT_KEPT = 100


def command_sink(command: str, timeout: float = 30.0) -> AlertSink:
    """Run `command` in a shell with the alert as JSON on stdin."""

    def send(alert: Alert) -> None:
        subprocess.run(command, shell=True, input=json.dumps(asdict(alert)).encode(), timeout=timeout, check=True)

    return send


def webhook_sink(url: str, timeout: float = 10.0) -> AlertSink:
    """POST the alert as JSON to `url`."""

    def send(alert: Alert) -> None:
        request = urllib.request.Request(
            url, data=json.dumps(asdict(alert)).encode(), headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - operator-configured URL
            response.read()

    return send


_STOP = object()


class AlertDispatcher:
    """Logs each alert on the caller's thread and hands it to the sinks on the `mlflow-persist-alerts` thread."""

    def __init__(self, sinks: list[AlertSink] | None = None, queue_size: int = 100) -> None:
        self.sinks: list[AlertSink] = list(sinks or [])
        self.sent: deque[Alert] = deque(maxlen=SENT_KEPT)  # the newest alerts, for status and tests
        self.dropped = 0
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=queue_size)
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def fire(self, alert: Alert) -> None:
        log.critical(
            "ALERT %s for %s: %s",
            alert.kind,
            alert.model,
            alert.message,
            extra={"model": alert.model, "outcome": "alert"},
        )
        self.sent.append(alert)
        if not self.sinks:
            return
        self._ensure_thread()
        try:
            self._queue.put_nowait(alert)
        except queue.Full:
            self.dropped += 1
            log.warning(
                "alert queue full (%d waiting): %s for %s not delivered to the sinks",
                self._queue.qsize(),
                alert.kind,
                alert.model,
            )

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._deliver_forever, name="mlflow-persist-alerts", daemon=True)
                self._thread.start()

    def _deliver_forever(self) -> None:
        while True:
            alert = self._queue.get()
            try:
                if alert is _STOP:
                    return
                for sink in self.sinks:
                    try:
                        sink(alert)
                    except Exception as exc:  # noqa: BLE001
                        log.error("alert sink %r failed: %s", sink, exc)
            finally:
                self._queue.task_done()

    def wait_delivered(self, timeout: float | None = None) -> bool:
        """Wait until every queued alert went through the sinks; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to `timeout`), then stop the thread."""
        if self._thread is None or not self._thread.is_alive():
            return
        self.wait_delivered(timeout)
        try:
            self._queue.put(_STOP, timeout=1)
        except queue.Full:
            return
        self._thread.join(timeout=1)
