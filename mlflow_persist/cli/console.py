"""The console of a long-running command (`mlflow-persist run`): short lines on stderr, the detail in a file.

The console gets one short line per save, the restore and end-of-run summaries of the application and every
warning, each cut to one line of at most `CONSOLE_LINE_LIMIT` characters. The log file gets every record of
the package (and MLflow's own, and Python warnings) in the detailed text or JSON format of logging_setup.py.
At DEBUG the console gets the detail too.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TextIO

from mlflow_persist._observe.logs import LogFormat, detail_formatter, install_handlers, level_number, redact

__all__ = [
    "CONSOLE_LINE_LIMIT",
    "CONSOLE_LOGGERS",
    "CONSOLE_OUTCOMES",
    "THIRD_PARTY_LOGGERS",
    "ConsoleFilter",
    "ConsoleFormatter",
    "StderrHandler",
    "configure_run_logging",
]

CONSOLE_LINE_LIMIT = 160
#: Outcomes of checkpoint events that the console shows at INFO (logging_setup.EVENT_FIELDS `outcome`).
CONSOLE_OUTCOMES = frozenset({"saved", "restored", "cut_complete"})
#: Loggers whose INFO lines are summaries meant for the person at the console.
CONSOLE_LOGGERS = ("mlflow_persist.trading",)
#: Loggers of MLflow (and what it logs through) and Python warnings: their detail goes to the file, only their
#: warnings to the console (Python warnings not even those, unless at DEBUG).
THIRD_PARTY_LOGGERS = ("mlflow", "alembic", "py.warnings")


class ConsoleFilter(logging.Filter):
    """Passes warnings and errors, and at INFO only saves, restores and the application's summaries."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.WARNING:
            return True
        if getattr(record, "outcome", None) in CONSOLE_OUTCOMES:
            return True
        return record.levelno >= logging.INFO and record.name.startswith(CONSOLE_LOGGERS)


class ConsoleFormatter(logging.Formatter):
    """`17:21:59 dqn: mean_reward -10.93 -> -9.843 (+9.9%), saved v4 (performance, step 50, 0.1 MB, 47 ms)`:
    the time and the first line of the message, cut to `limit` characters; the level only when it is not INFO."""

    def __init__(self, limit: int = CONSOLE_LINE_LIMIT) -> None:
        super().__init__("%(asctime)s %(message)s", datefmt="%H:%M:%S")
        self.limit = limit

    def format(self, record: logging.LogRecord) -> str:
        message = redact(record.getMessage())
        first, _, rest = message.partition("\n")
        if record.exc_info or rest:
            first += " (more in the log file)"
        level = "" if record.levelno == logging.INFO else f"{record.levelname} "
        line = f"{self.formatTime(record, self.datefmt)} {level}{first}"
        return line if len(line) <= self.limit else line[: self.limit - 1] + "…"


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever `sys.stderr` is at the time, so a live display that redirects stderr (rich's `Live`)
    prints the line above itself instead of tearing it."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # logging.StreamHandler assigns it; the property ignores it
        pass


def configure_run_logging(
    log_file: Path, level: str | int = "INFO", fmt: LogFormat = "text", loggers: tuple[str, ...] = ("mlflow_persist",)
) -> Path:
    """Detail (at `level`) to `log_file`, appended; short lines to the console, or the detail at DEBUG.
    Returns the log file's absolute path. Replaces what an earlier call (or logging_setup) installed."""
    numeric = level_number(level)
    detail = detail_formatter(fmt)
    path = log_file.expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setFormatter(detail)
    console = StderrHandler()
    if numeric <= logging.DEBUG:
        console.setFormatter(detail)
    else:
        console.setFormatter(ConsoleFormatter())
        console.addFilter(ConsoleFilter())
    logging.captureWarnings(True)
    for name in loggers:
        install_handlers(name, [to_file, console], numeric)
    for name in THIRD_PARTY_LOGGERS:
        quiet = name == "py.warnings" and numeric > logging.DEBUG  # library deprecation notes: the file only
        install_handlers(
            name, [to_file] if quiet else [to_file, console], min(numeric, logging.INFO), replace_foreign=True
        )
    return path
