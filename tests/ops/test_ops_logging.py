"""Unit tests of mlflow_persist._observe.logs: JSON and text output, idempotence, redaction."""

from __future__ import annotations

import io
import json
import logging
import math
import subprocess
import sys
from collections.abc import Iterator

import pytest

from mlflow_persist._observe.logs import EVENT_FIELDS, REDACTED, configure_logging, event_fields, redact

EVENT = dict(model="dqn", category="performance", version=17, step=1200, value=0.398,
             improvement=-0.014, bytes=2_097_152, duration_s=0.022, outcome="saved")  # fmt: skip


@pytest.fixture
def logger_name(request: pytest.FixtureRequest) -> Iterator[str]:
    name = f"mlflow_persist.test_{request.node.name}"
    yield name
    logger = logging.getLogger(name)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


def test_json_line_carries_every_event_field(logger_name: str) -> None:
    out = io.StringIO()
    configure_logging("INFO", "json", stream=out, loggers=[logger_name])
    logging.getLogger(logger_name).info("dqn: loss 0.412 -> 0.398 (-3.4%%), saved v%d", 17, extra=event_fields(**EVENT))
    record = json.loads(out.getvalue())
    assert record["message"] == "dqn: loss 0.412 -> 0.398 (-3.4%), saved v17"
    assert record["level"] == "INFO" and record["logger"] == logger_name
    assert record["ts"].endswith("Z")
    for key in EVENT_FIELDS:
        assert record[key] == EVENT[key], key


def test_json_handles_exceptions_non_json_values_and_nan(logger_name: str) -> None:
    out = io.StringIO()
    configure_logging("DEBUG", "json", stream=out, loggers=[logger_name])
    log = logging.getLogger(logger_name)
    try:
        raise OSError(28, "No space left on device")
    except OSError:
        log.exception("save failed", extra=event_fields(model="cnn", outcome="failed", value=math.nan, bytes=None))
    record = json.loads(out.getvalue().strip())
    assert record["outcome"] == "failed" and "bytes" not in record
    assert math.isnan(record["value"])
    assert "No space left on device" in record["exc"]


def test_text_line_is_readable_with_fields(logger_name: str) -> None:
    out = io.StringIO()
    configure_logging("INFO", "text", stream=out, loggers=[logger_name])
    logging.getLogger(logger_name).info("saved", extra=event_fields(**EVENT))
    line = out.getvalue().strip()
    assert line.count("\n") == 0
    assert " INFO  " in line and f"{logger_name}: saved [" in line
    assert "model=dqn category=performance version=17 step=1200 value=0.398" in line
    assert "outcome=saved]" in line


def test_level_filters_and_reconfigure_is_idempotent(logger_name: str) -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("WARNING", "text", stream=first, loggers=[logger_name])
    configure_logging("DEBUG", "json", stream=second, loggers=[logger_name])
    configure_logging("DEBUG", "json", stream=second, loggers=[logger_name])
    log = logging.getLogger(logger_name)
    assert len(log.handlers) == 1
    log.debug("store op", extra={"op": "create_model_version"})
    assert first.getvalue() == ""
    lines = second.getvalue().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["op"] == "create_model_version"
    configure_logging("ERROR", "text", stream=second, loggers=[logger_name])
    log.warning("hidden")
    assert len(second.getvalue().splitlines()) == 1


def test_bad_level_format_and_field_are_refused() -> None:
    with pytest.raises(ValueError, match="log level 'LOUD'"):
        configure_logging("LOUD")
    with pytest.raises(ValueError, match="'xml'"):
        configure_logging("INFO", "xml")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown log event field"):
        event_fields(modle="dqn")


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_credentials_never_reach_the_output(fmt: str, logger_name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok-abc123xyz")
    out = io.StringIO()
    configure_logging("DEBUG", fmt, stream=out, loggers=[logger_name])  # type: ignore[arg-type]
    log = logging.getLogger(logger_name)
    log.info("connecting to %s", "http://alice:s3cr%40t@127.0.0.1:5000/api")
    log.info("backend postgresql+psycopg2://mlflow:pgpass@127.0.0.1:5432/mlflow?sslmode=disable&password=qwerty")
    log.debug("env password is hunter2-secret, token tok-abc123xyz", extra={"uri": "https://bob:pw@host/x"})
    log.debug("header Authorization: Basic YWxpY2U6aHVudGVyMg==")
    text = out.getvalue()
    for secret in ("hunter2-secret", "tok-abc123xyz", "s3cr%40t", "pgpass", "qwerty", ":pw@", "YWxpY2U6aHVudGVyMg"):
        assert secret not in text, secret
    assert "alice:***@127.0.0.1" in text and "mlflow:***@127.0.0.1" in text
    assert text.count(REDACTED) >= 7


def test_redact_leaves_ordinary_text_alone() -> None:
    plain = "dqn: loss 0.412 -> 0.398 (-3.4%), saved v17 at http://127.0.0.1:5000 models:/dqn@best"
    assert redact(plain) == plain


def test_configuring_does_not_touch_other_loggers() -> None:
    code = (
        "import io, logging; from mlflow_persist._observe.logs import configure_logging;"
        "root_before = list(logging.getLogger().handlers);"
        "configure_logging('INFO', 'json', stream=io.StringIO());"
        "assert logging.getLogger().handlers == root_before;"
        "assert len(logging.getLogger('mlflow_persist').handlers) == 1;"
        "print('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
