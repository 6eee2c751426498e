"""Alert delivery: CRITICAL log line plus optional sinks (a Python callable, a shell command, an HTTP webhook).

A failing sink is logged and never raises into the caller: alerts must not break training.
"""

from __future__ import annotations

import json
import logging
import subprocess
import urllib.request
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from mlflow_persist.payload import utc_now_iso

log = logging.getLogger("mlflow_persist.alerts")


@dataclass(frozen=True)
class Alert:
    kind: str  # save_failures | degradation | disk
    model: str
    message: str
    details: dict[str, Any] = field(default_factory=dict)
    at: str = field(default_factory=utc_now_iso)


AlertSink = Callable[[Alert], None]


def command_sink(command: str, timeout: float = 30.0) -> AlertSink:
    """Run `command` in a shell with the alert as JSON on stdin."""
    def send(alert: Alert) -> None:
        subprocess.run(command, shell=True, input=json.dumps(asdict(alert)).encode(), timeout=timeout, check=True)
    return send


def webhook_sink(url: str, timeout: float = 10.0) -> AlertSink:
    """POST the alert as JSON to `url`."""
    def send(alert: Alert) -> None:
        request = urllib.request.Request(url, data=json.dumps(asdict(alert)).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - operator-configured URL
            response.read()
    return send


class AlertDispatcher:
    def __init__(self, sinks: list[AlertSink] | None = None) -> None:
        self.sinks: list[AlertSink] = list(sinks or [])
        self.sent: list[Alert] = []

    def fire(self, alert: Alert) -> None:
        log.critical("ALERT %s for %s: %s", alert.kind, alert.model, alert.message,
                     extra={"model": alert.model, "outcome": "alert"})
        self.sent.append(alert)
        for sink in self.sinks:
            try:
                sink(alert)
            except Exception as exc:  # noqa: BLE001
                log.error("alert sink %r failed: %s", sink, exc)
