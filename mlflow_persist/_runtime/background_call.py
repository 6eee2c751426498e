"""A call the training thread starts on a thread of its own and waits for only so long: work that touches the
store (a revert's registry read and load) must never stall training when the store is slow or hangs."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["BackgroundCall"]

T = TypeVar("T")


class BackgroundCall(Generic[T]):
    """Runs `work` at once on a daemon thread; `wait(seconds)` waits for it at most that long, `result()`
    returns its value or raises its exception once `done`."""

    def __init__(self, work: Callable[[], T], name: str) -> None:
        self._work = work
        self._finished = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._run, name=name, daemon=True).start()

    def _run(self) -> None:
        try:
            self._value = self._work()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by result()
            self._error = exc
        finally:
            self._finished.set()

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def wait(self, seconds: float | None) -> bool:
        return self._finished.wait(seconds)

    def result(self) -> T:
        if not self._finished.is_set():
            raise RuntimeError("the background call has not finished")
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]
