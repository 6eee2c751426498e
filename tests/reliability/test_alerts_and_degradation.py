"""Alerts after repeated save failures (callable, shell command and webhook sinks; the run's health tag) and
degradation handling (one alert; optional revert of the live model to `best`)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

import mlflow_persist as mp
from mlflow_persist._observe.alerts import Alert
from mlflow_persist._store.mlflow_store import HEALTH_TAG
from reliability.support import digest, make_model, train_step


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/alert", received
    finally:
        server.shutdown()
        server.server_close()


def _wait(predicate: Any, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def test_five_failures_fire_every_sink_once_and_success_clears_health(
    sqlite_uri: str, tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url, posted = webhook
    command_out = tmp_path / "alerts.jsonl"
    cfg = mp.PersistConfig(
        tracking_uri=sqlite_uri,
        min_free_disk_mb=0,
        min_free_disk_percent=0,
        log_system_metrics=False,
        failure_alert_threshold=5,
        save_retry_attempts=100,
        save_retry_max_wait_seconds=0.05,
        alert_command=f"cat >> {command_out}; echo >> {command_out}",
        alert_webhook=url,
    )
    called: list[Alert] = []
    model, opt = make_model(5)
    with mp.Persistence(cfg, alert_sinks=[called.append], install_signal_handlers=False) as persist:
        handle = persist.track("dqn", model, optimizer=opt)
        store = persist.store
        handle.step(loss=1.0)
        assert persist.flush(timeout=60) and handle.saves == 1

        # The store's write path fails until `failing` is cleared: far more than 5 consecutive attempts.
        failing = threading.Event()
        failing.set()
        attempts: list[int] = []
        real_write = store.write_checkpoint

        def broken_write(*args: Any, **kwargs: Any) -> Any:
            if failing.is_set():
                attempts.append(1)
                raise OSError("injected store failure")
            return real_write(*args, **kwargs)

        monkeypatch.setattr(store, "write_checkpoint", broken_write)
        train_step(model, opt)
        handle.step(loss=0.5)
        failed_step = handle.current_step
        assert _wait(lambda: len(attempts) >= 12)
        health = store.client.get_run(handle.run_id).data.tags.get(HEALTH_TAG)
        assert health == "degraded"
        assert len(called) == 1 and called[0].kind == "save_failures" and called[0].model == "dqn"
        failing.clear()
        assert persist.flush(timeout=60)
        assert handle.saves == 2 and store.list_versions("dqn")[-1].step == failed_step  # retried, not lost
        assert store.client.get_run(handle.run_id).data.tags.get(HEALTH_TAG) == "ok"
        persist.close(final_checkpoints=False)
    assert len(called) == 1  # exactly once for the whole failure streak
    assert _wait(lambda: len(posted) == 1, 10) and posted[0]["kind"] == "save_failures" and posted[0]["model"] == "dqn"
    lines = [json.loads(line) for line in command_out.read_text().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0]["kind"] == "save_failures" and "injected store failure" in lines[0]["message"]
    print(f"\nFAULT injected-save-failures attempts={len(attempts)} alerts=1 sinks=callable,command,webhook")


def _degrading_run(uri: str, revert: bool, degraded_steps: int) -> tuple[list[Alert], mp.ModelHandle, str, str]:
    cfg = mp.PersistConfig(
        tracking_uri=uri,
        min_free_disk_mb=0,
        min_free_disk_percent=0,
        log_system_metrics=False,
        degradation_margin=0.2,
        degradation_margin_mode="rel",
        degradation_patience=10,
        revert_on_degradation=revert,
    )
    alerts: list[Alert] = []
    model, opt = make_model(6)
    persist = mp.Persistence(cfg, alert_sinks=[alerts.append], install_signal_handlers=False)
    handle = persist.track("cnn", model, optimizer=opt)
    for loss in (3.0, 2.0, 1.0):
        train_step(model, opt)
        handle.step(loss=loss)
    assert persist.flush(timeout=60)
    best_content = digest(model.state_dict())
    for loss in [1.1] * 5 + [1.5] * degraded_steps:  # 5 steps within the 20% margin, then beyond it
        train_step(model, opt)  # the live weights drift away from the best checkpoint
        handle.step(loss=loss)
    live = digest(model.state_dict())
    persist.close(final_checkpoints=False)
    return alerts, handle, best_content, live


def test_degradation_alerts_once_without_revert(sqlite_uri: str) -> None:
    alerts, handle, best_content, live = _degrading_run(sqlite_uri, revert=False, degraded_steps=25)
    assert [a.kind for a in alerts] == ["degradation"] and alerts[0].details["steps"] == 10
    assert handle.reverts == 0 and live != best_content


def test_degradation_reverts_the_live_model_to_best(sqlite_uri: str) -> None:
    # The 10th degraded step fires the alert and reverts; nothing trains after it.
    alerts, handle, best_content, live = _degrading_run(sqlite_uri, revert=True, degraded_steps=10)
    assert [a.kind for a in alerts] == ["degradation"] and handle.reverts == 1
    best = mp.load_checkpoint("models:/cnn@best", tracking_uri=sqlite_uri)
    assert digest(dict(best.model_state)) == best_content
    assert live == best_content
    print("\nFAULT degradation alerts=1 reverted_to_best=1")
