"""The persistence worker child (worker_process.py starts it): runs the calls its parent sends, answers each.

Standard output carries the replies, so anything else printed to it goes to standard error instead. The child
exits when its standard input ends (the parent closed it, exited or was killed), after the calls it is running
have finished."""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Any

from mlflow_persist.errors import StoreError

__all__ = ["main", "portable_error"]

#: Calls run side by side, so that a slow metric batch does not hold an episode flush up (and the reverse).
THREADS = 4


def portable_error(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling, else a `StoreError` with its type and message."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any exception type may refuse to pickle
        return StoreError(f"{type(exc).__name__}: {exc}")


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    requests = Connection(os.dup(0), writable=False)
    replies = Connection(os.dup(1), readable=False)
    os.dup2(2, 1)  # a stray print must not corrupt the replies
    sys.stdout = sys.stderr
    send_lock = threading.Lock()

    def reply(message: tuple[Any, ...]) -> None:
        with send_lock:
            try:
                replies.send(message)
            except (OSError, ValueError):
                pass  # the parent is gone; nobody is waiting for this answer
            except Exception as exc:  # noqa: BLE001 - a result that does not pickle
                replies.send(("error", message[1], StoreError(f"the worker's answer could not be sent: {exc}")))

    def serve(request_id: int, call: bytes) -> None:
        try:
            func, args, kwargs = pickle.loads(call)
            result = func(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - every failure goes back to the caller
            reply(("error", request_id, portable_error(exc)))
        else:
            reply(("ok", request_id, result))

    import mlflow_persist._store  # noqa: F401 - MLflow's environment defaults, as in the parent

    reply(("ready", None, os.getpid()))
    with ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="mlflow-persist-worker") as pool:
        while True:
            try:
                message = requests.recv_bytes()
            except (EOFError, OSError):
                break
            pool.submit(serve, int.from_bytes(message[:8], "little"), message[8:])
