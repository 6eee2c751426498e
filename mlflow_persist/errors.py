"""The package's whole error hierarchy, plus the helpers that turn a foreign exception into one sentence.

Every error a user can meet is a `PersistError` whose message says what failed and what to do. Store adapters
translate their backend's exceptions (for MLflow: `MlflowException`, connection errors) into these at their
boundary, so nothing of MLflow reaches the runtime or the user.
"""

from __future__ import annotations

import re

_URI_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:@/\s]*):[^@/\s]+@")


class PersistError(Exception):
    """Base class: the message says what failed and what to do about it."""


class ConfigError(PersistError, ValueError):
    """A configuration value is wrong; the message names the field, the value and what is allowed."""


class CheckpointCorruptError(PersistError):
    """A stored checkpoint's bytes failed verification (checksum, missing files, unreadable payload)."""


class CheckpointMismatchError(PersistError):
    """A stored checkpoint is intact but does not fit the tracked objects (a changed architecture)."""


class StoreError(PersistError):
    """The checkpoint store refused or failed an operation. `code` is the backend's error code, if any."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class StoreUnavailableError(StoreError):
    """The checkpoint store could not be reached (connection refused, timed out, login or permission missing)."""


class CheckpointUnavailableError(StoreUnavailableError):
    """A stored checkpoint's files cannot be reached (a moved folder, a missing mount, a permission error, a full
    temporary directory): nothing is known about its bytes, so it is never tagged corrupt."""


class FinalCheckpointError(PersistError):
    """`close()` ended without every final checkpoint stored (registered, or durable in the outbox), or with
    checkpoints that could never be written; `report` (a `CloseReport`) says what happened to each."""

    def __init__(self, message: str, report: object) -> None:
        super().__init__(message)
        self.report = report


class NotFoundError(PersistError):
    """A model, version, run, episode or data file that was asked for does not exist."""


class DiskFullError(PersistError, OSError):
    """The checkpoint disk stays short of the configured free space even after cleanup."""


def redact_credentials(text: str) -> str:
    """`text` with the password of every `scheme://user:password@host` URI in it replaced by `***`."""
    return _URI_PASSWORD.sub(r"\g<head>:***@", text)


_UNREACHABLE_MARKERS = (
    "Max retries exceeded",
    "Connection refused",
    "NewConnectionError",
    "ConnectionError",
    "Read timed out",
    "ConnectTimeout",
)


_SERVER_ERROR_STATUS = re.compile(r"too many (?P<code>5\d\d) error responses")


def from_object_store(exc: BaseException) -> bool:
    """Whether `exc` came from the S3 client (boto3/botocore/s3transfer) uploading or downloading artifacts."""
    return any(cls.__module__.split(".")[0] in ("botocore", "boto3", "s3transfer") for cls in type(exc).__mro__)


def store_hint(exc: BaseException) -> str:
    """What to check after a store failure: the S3 settings, the server's own log, or the tracking URI."""
    if from_object_store(exc):
        return "check MLFLOW_S3_ENDPOINT_URL and the AWS credentials on this machine, and that the object store is up"
    if _SERVER_ERROR_STATUS.search(str(exc)):
        return "check the tracking server's log (its database or artifact store may be down)"
    return "check the tracking URI and that the server is running and accepts this login"


def is_unreachable(exc: BaseException) -> bool:
    """Whether `exc` says the store could not be reached at all (as opposed to refusing a request)."""
    if isinstance(exc, StoreUnavailableError):
        return True
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    text = str(exc)
    return any(marker in text for marker in _UNREACHABLE_MARKERS) or any(
        cls.__name__ in ("ConnectionError", "Timeout", "ConnectTimeout", "ReadTimeout") for cls in type(exc).__mro__
    )


def describe_store_error(exc: BaseException) -> str:
    """One redacted line that classifies a store failure: unreachable, login wanted, permission missing,
    or else the first line of the backend's own message."""
    raw = redact_credentials(str(exc))
    lines = raw.strip().splitlines()
    first_line = lines[0][:300] if lines else type(exc).__name__
    if from_object_store(exc):
        return f"the object store failed ({type(exc).__name__}: {first_line})"
    status = _SERVER_ERROR_STATUS.search(raw)
    if status:
        return f"the tracking server kept answering HTTP {status['code']}"
    if is_unreachable(exc) and not isinstance(exc, StoreUnavailableError):
        return "connection refused or timed out"
    if "error code 403" in raw or "PERMISSION_DENIED" in raw:
        return (
            "the tracking server denied permission (HTTP 403): ask its administrator for EDIT permission on "
            "the experiment and the registered models"
        )
    if "error code 401" in raw or "UNAUTHENTICATED" in raw:
        return "the tracking server wants a login (HTTP 401): set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"
    return first_line


__all__ = [
    "CheckpointCorruptError",
    "CheckpointMismatchError",
    "CheckpointUnavailableError",
    "ConfigError",
    "DiskFullError",
    "FinalCheckpointError",
    "NotFoundError",
    "PersistError",
    "StoreError",
    "StoreUnavailableError",
    "describe_store_error",
    "from_object_store",
    "is_unreachable",
    "redact_credentials",
    "store_hint",
]
