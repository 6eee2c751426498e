"""One model's save health: failure counts, the `degraded` state (run tag `mlflow_persist.health`) and the
alert when consecutive failures reach the threshold. Called from the writer and training threads; the
alert sinks run on the alert thread."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from mlflow_persist._observe.alerts import Alert, AlertDispatcher
from mlflow_persist._observe.logs import package_logger
from mlflow_persist.errors import redact_credentials

__all__ = ["ModelHealth"]

log = package_logger("mlflow_persist")


class ModelHealth:
    def __init__(
        self,
        name: str,
        alerts: AlertDispatcher,
        threshold: int,
        set_run_tags: Callable[[Mapping[str, str]], None],
        record_metric: Callable[[int, str, float], None],
        health_tag: str,
    ) -> None:
        self.name = name
        self.failures = 0
        self.consecutive_failures = 0
        self.degraded = False
        self._alerts = alerts
        self._threshold = threshold
        self._set_run_tags = set_run_tags
        self._record_metric = record_metric
        self._health_tag = health_tag
        self._alerted = False
        self._lock = threading.Lock()
        self.max_wait = 0.5  # seconds a caller waits for the health tag write (Persistence sets its config's)

    def record_failure(self, category: str, step: int, exc: BaseException, attempts: int | None, final: bool) -> None:
        text = redact_credentials(str(exc))
        with self._lock:
            self.failures += 1
            self.consecutive_failures += 1
            failures, consecutive = self.failures, self.consecutive_failures
            alert_now = consecutive >= self._threshold and not self._alerted
            if alert_now:
                self._alerted = self.degraded = True
        attempt = f"attempt {attempts}" if attempts is not None else "registration from the outbox"
        outcome = "giving up" if final else "will retry"
        log.error(
            "%s: saving the %s checkpoint of step %d failed (%s, %s): %s",
            self.name,
            category,
            step,
            attempt,
            outcome,
            text,
            extra={"model": self.name, "category": category, "step": step, "outcome": "failed"},
        )
        self._record_metric(step, "checkpoint/failures", float(failures))
        if alert_now:
            self._safe_tag("degraded")
            self._alerts.fire(
                Alert(
                    "save_failures",
                    self.name,
                    f"{consecutive} consecutive checkpoint saves failed: {text}",
                    {"step": step, "category": category, "error": text[:500]},
                )
            )

    def alert(self, kind: str, message: str, details: Mapping[str, object]) -> None:
        """Log `message` as an error and send it to the alert sinks (something was given up)."""
        log.error("%s: %s", self.name, message, extra={"model": self.name, "outcome": kind})
        self._alerts.fire(Alert(kind, self.name, message, dict(details)))

    def record_success(self) -> None:
        with self._lock:
            recovered = self.degraded
            self.consecutive_failures = 0
            self.degraded = self._alerted = False
        if recovered:
            self._safe_tag("ok")
            log.warning("%s: saves succeed again; health back to ok", self.name)

    def _safe_tag(self, value: str) -> None:
        """Set the health tag on a thread of its own, waited for at most `max_wait`: a failure is also recorded
        from the training thread, which must never wait long on a hanging store."""

        def write() -> None:
            try:
                self._set_run_tags({self._health_tag: value})
            except Exception as exc:  # noqa: BLE001 - the health tag is informative; the log line says it all
                log.warning("%s: could not set the run's health tag to %s: %s", self.name, value, exc)

        thread = threading.Thread(target=write, name="mlflow-persist-health-tag", daemon=True)
        thread.start()
        thread.join(self.max_wait)
        if thread.is_alive():
            log.warning("%s: the health tag %s is still being written in the background (slow store)", self.name, value)
