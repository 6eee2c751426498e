"""MLflow's exceptions as the package's own, and local artifact paths: helpers every MLflow store part uses."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

from mlflow_persist.errors import (
    NotFoundError,
    PersistError,
    StoreError,
    StoreUnavailableError,
    describe_store_error,
    is_unreachable,
    store_hint,
)

__all__ = ["local_path", "translate", "translated"]

_F = TypeVar("_F", bound=Callable[..., Any])


def translate(exc: BaseException, doing: str) -> PersistError:
    """The package's error for an exception MLflow (or its HTTP client) raised while `doing` something."""
    if isinstance(exc, PersistError):
        return exc
    reason = describe_store_error(exc)
    if is_unreachable(exc) or "error code 401" in str(exc) or "error code 403" in str(exc):
        return StoreUnavailableError(f"Could not {doing}: {reason}; {store_hint(exc)}.")
    code = str(getattr(exc, "error_code", "") or "")
    if code == "RESOURCE_DOES_NOT_EXIST":
        return NotFoundError(f"Could not {doing}: {reason}.")
    return StoreError(f"Could not {doing}: {reason}; check the store, then retry.", code=code)


def translated(doing: str) -> Callable[[_F], _F]:
    """A method decorator: anything but our own errors and the local disk's is raised as `translate` says."""

    def wrap(method: _F) -> _F:
        @functools.wraps(method)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return method(*args, **kwargs)
            except PersistError:
                raise
            except OSError as exc:
                if exc.errno is not None and not is_unreachable(exc):
                    raise  # the local disk's own error (ENOSPC, EACCES): callers react to its errno
                raise translate(exc, doing) from exc
            except Exception as exc:  # noqa: BLE001 - MLflow, requests and sqlalchemy errors alike
                raise translate(exc, doing) from exc

        return call  # type: ignore[return-value]

    return wrap


def local_path(uri: str) -> Path | None:
    """The filesystem path of a local artifact URI, None for remote ones."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(unquote(parsed.path))
    if len(parsed.scheme) == 1:  # a Windows drive letter
        return Path(uri)
    return None
