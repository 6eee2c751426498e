"""Logging for mlflow-persist: readable text or one JSON object per line, never a credential.

Checkpoint operations log one event each with structured fields passed through `extra`::

    log.info("dqn: loss 0.412 -> 0.398 (-3.4%), saved v17",
             extra=event_fields(model="dqn", category="performance", version=17, step=1200,
                                value=0.398, improvement=-0.014, bytes=2_097_152,
                                duration_s=0.022, outcome="saved"))

`configure_logging()` installs one handler on the given loggers (by default the
`mlflow_persist` package logger); calling it again replaces that handler instead of
adding a second one. Every formatted line passes through `redact()`, which hides the
values of MLflow's credential variables, `user:password@` in URIs and `password=`-style
query parameters.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, Literal, TextIO

__all__ = [
    "EVENT_FIELDS",
    "REDACTED",
    "SECRET_ENV_VARS",
    "JsonFormatter",
    "LogFormat",
    "RedactingFilter",
    "TextFormatter",
    "configure_logging",
    "detail_formatter",
    "event_fields",
    "install_handlers",
    "level_number",
    "package_logger",
    "redact",
]

EVENT_FIELDS: tuple[str, ...] = (
    "model", "category", "version", "step", "value", "improvement", "bytes", "duration_s", "outcome",
)  # fmt: skip
"""Structured fields of a checkpoint-operation log event, in output order."""

SECRET_ENV_VARS: tuple[str, ...] = (
    "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN", "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AZURE_STORAGE_ACCESS_KEY", "AZURE_STORAGE_CONNECTION_STRING",
)  # fmt: skip
"""Environment variables whose values never appear in a log line."""

REDACTED = "***"
LogFormat = Literal["text", "json"]
_HANDLER_MARK = "_mlflow_persist_handler"
_DEFAULT_LOGGERS = ("mlflow_persist",)

_URI_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:@/\s]*):(?P<secret>[^@/\s]+)@")
_SECRET_PARAM = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|token|access_token|secret|api_key|apikey)\b\s*[=:]\s*)(?P<val>[^\s&;,'\"]+)",
    re.IGNORECASE,
)
_AUTH_HEADER = re.compile(
    r"(?P<key>\bAuthorization\s*[:=]\s*(?:Basic|Bearer|Token)\s+)(?P<val>[A-Za-z0-9+/=._\-]+)", re.IGNORECASE
)

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class RedactingFilter(logging.Filter):
    """Redacts each record at the package's own loggers, before any handler (ours or an application's) sees
    it: the message with its arguments, and the text of an attached exception."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record whose arguments do not fit its format: leave it be
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return True


_REDACTING_FILTER = RedactingFilter()


def package_logger(name: str) -> logging.Logger:
    """The logger `name` of this package, with credential redaction on it (a filter on the parent logger would
    not see the records of its children)."""
    logger = logging.getLogger(name)
    if _REDACTING_FILTER not in logger.filters:
        logger.addFilter(_REDACTING_FILTER)
    return logger


def event_fields(**fields: Any) -> dict[str, Any]:
    """`extra=` mapping for a checkpoint event; unknown field names raise `ValueError`, None values are dropped."""
    unknown = set(fields) - set(EVENT_FIELDS)
    if unknown:
        raise ValueError(f"unknown log event field(s) {sorted(unknown)}; allowed: {', '.join(EVENT_FIELDS)}")
    return {k: v for k, v in fields.items() if v is not None}


def redact(text: str) -> str:
    """Hide credentials: secret env var values, URI passwords, password/token parameters, auth headers."""
    for name in SECRET_ENV_VARS:
        value = os.environ.get(name)
        if value and len(value) >= 3:
            text = text.replace(value, REDACTED)
    text = _URI_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{REDACTED}@", text)
    text = _SECRET_PARAM.sub(lambda m: f"{m['key']}{REDACTED}", text)
    return _AUTH_HEADER.sub(lambda m: f"{m['key']}{REDACTED}", text)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """Event fields first (in EVENT_FIELDS order), then any other `extra=` attributes."""
    extra = {k: getattr(record, k) for k in EVENT_FIELDS if hasattr(record, k)}
    for key, value in vars(record).items():
        if key not in _STANDARD_ATTRS and key not in extra and not key.startswith("_"):
            extra[key] = value
    return extra


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy / torch scalars
        try:
            return _jsonable(value.item())
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO 8601 UTC), level, logger, message, the extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            payload.setdefault(key, _jsonable(value))
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return redact(json.dumps(payload, ensure_ascii=False, allow_nan=True))


class TextFormatter(logging.Formatter):
    """`2026-01-02 03:04:05,678 INFO  mlflow_persist.writer: message [model=dqn version=17 ...]`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-5s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = _extras(record)
        if extra:
            fields = " ".join(f"{k}={_short(v)}" for k, v in extra.items())
            first, sep, rest = line.partition("\n")
            line = f"{first} [{fields}]{sep}{rest}"
        return redact(line)


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    text = str(_jsonable(value))
    return text if " " not in text else json.dumps(text)


def configure_logging(
    level: str | int = "INFO",
    fmt: LogFormat = "text",
    stream: TextIO | None = None,
    loggers: Iterable[str] = _DEFAULT_LOGGERS,
) -> logging.Handler:
    """Install (or replace) the mlflow-persist handler on `loggers`; return the handler.

    Idempotent: a second call swaps the handler it installed before, so lines are never
    doubled. `stream` defaults to stderr. Raises `ValueError` on an unknown level or format.
    """
    numeric = level_number(level)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(detail_formatter(fmt))
    for name in loggers:
        install_handlers(name, [handler], numeric)
    return handler


def detail_formatter(fmt: LogFormat) -> logging.Formatter:
    """The formatter of the detailed log: `text` (TextFormatter) or `json` (JsonFormatter)."""
    if fmt not in ("text", "json"):
        raise ValueError(f"log format {fmt!r} is not allowed; use 'text' or 'json'")
    return JsonFormatter() if fmt == "json" else TextFormatter()


def install_handlers(
    logger_name: str, handlers: Iterable[logging.Handler], level: int, replace_foreign: bool = False
) -> None:
    """Put `handlers` on `logger_name` in place of the ones an earlier call installed (with `replace_foreign`,
    of all its handlers: a library's own stderr handler), at `level`, without propagation."""
    handlers = list(handlers)
    for handler in handlers:
        setattr(handler, _HANDLER_MARK, True)
    logger = logging.getLogger(logger_name)
    for old in [h for h in logger.handlers if replace_foreign or getattr(h, _HANDLER_MARK, False)]:
        logger.removeHandler(old)
    for handler in handlers:
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


def level_number(level: str | int) -> int:
    """The numeric level of `level` (a name in any case, or a number); ValueError for an unknown name."""
    if isinstance(level, int):
        return level
    value = logging.getLevelName(level.strip().upper())
    if not isinstance(value, int):
        raise ValueError(f"log level {level!r} is not allowed; use DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value
