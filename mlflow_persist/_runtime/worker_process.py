"""The persistence worker: a child interpreter that runs MLflow's Python work for the training process.

Why a process: MLflow's SQLAlchemy store (a metric batch costs tens of µs per value) and the episode files'
Parquet encoding are pure Python. In a thread of the training process they hold the interpreter lock that the
training loop needs, so a loop that persists runs at a fraction of its speed even on an idle second core. In a
child they run on that core instead; the training process only pickles the arguments.

How: the child is started with `subprocess` (fork and exec: safe from a parent with threads, and unlike
multiprocessing's spawn it never re-runs the user's `__main__`). Requests and replies travel over its
stdin/stdout, framed and pickled by `multiprocessing.connection`. A request is a module-level function and
its arguments (pickle names the function; the child imports its module when it unpickles it); the child runs
each on a small thread pool and answers by request id.

Failure: the worker is an optimisation, never a place where work can be lost.
- Until the child reports ready (imports take seconds), `run` calls the function in this process.
- A child that dies fails the calls in flight with `StoreUnavailableError`: their callers keep their data and
  retry as they do when the store refuses (every function sent here is idempotent). The next `run` starts a
  new child; after `MAX_STARTS` starts the worker is given up for the process's lifetime (one warning) and
  every call runs in this process again.
- A call the child does not answer within `call_timeout` seconds is failed the same way and the child,
  presumably hung, is killed.
- The child exits when its stdin closes, so a training process that ends or is killed takes it along.
"""

from __future__ import annotations

import itertools
import os
import pickle
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from mlflow_persist._observe.logs import package_logger
from mlflow_persist.errors import StoreUnavailableError

__all__ = ["MAX_STARTS", "WorkerProcess", "worker_wanted"]

log = package_logger("mlflow_persist.worker")

_T = TypeVar("_T")

#: Child starts allowed per process lifetime; past them every call runs in the training process.
MAX_STARTS = 3
_CHILD = "from mlflow_persist._runtime.worker_main import main; main()"


def worker_wanted(setting: str, store_is_mlflow: bool, cpu_count: int | None) -> bool:
    """Whether to run MLflow's Python work in a worker process: `on` and `off` say so; `auto` does for an MLflow
    store on a machine with a second core (with one core the child would only compete with training)."""
    if setting == "on":
        return True
    if setting == "off":
        return False
    return store_is_mlflow and (cpu_count or 1) >= 2


class WorkerProcess:
    """One persistence worker child (see the module docstring). Thread-safe: any thread may call `run`."""

    def __init__(self, call_timeout: float = 600.0, max_starts: int = MAX_STARTS) -> None:
        self.call_timeout = call_timeout
        self.max_starts = max_starts
        self.starts = 0
        self.calls_in_worker = 0
        self.calls_in_process = 0
        self.lost_calls = 0
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, Future[Any]] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._requests: Connection | None = None
        self._ready = threading.Event()
        self._closed = False
        self._given_up = False

    # ------------------------------------------------------------------------------------------ state

    @property
    def pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    def wait_ready(self, timeout: float) -> bool:
        """Start the child if needed and wait until it can take calls (tests and benchmarks)."""
        self.start()
        return self._ready.wait(timeout)

    def start(self) -> None:
        """Start the child in the background (no-op while one runs, after `close`, or once given up)."""
        with self._lock:
            if self._closed or self._given_up or (self._proc is not None and self._proc.poll() is None):
                return
            if self.starts >= self.max_starts:
                self._given_up = True
                log.warning(
                    "the persistence worker process failed %d times; MLflow's work runs in the training process "
                    "from now on (slower, nothing is lost)",
                    self.starts,
                )
                return
            self.starts += 1
            self._ready.clear()
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-c", _CHILD],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    close_fds=True,
                    start_new_session=True,  # a Ctrl-C in the terminal goes to training, which closes us
                    # What this process imports from, so that the child finds the same modules and functions.
                    env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
                )
            except OSError as exc:
                log.warning("could not start the persistence worker process (%s); working in-process", exc)
                self._given_up = True
                return
            assert proc.stdin is not None and proc.stdout is not None
            self._proc = proc
            self._requests = Connection(os.dup(proc.stdin.fileno()), readable=False)
            replies = Connection(os.dup(proc.stdout.fileno()), writable=False)
            proc.stdin.close()
            proc.stdout.close()
        threading.Thread(
            target=self._read_replies, args=(proc, replies), name="mlflow-persist-worker-replies", daemon=True
        ).start()

    # ------------------------------------------------------------------------------------------ calls

    def run(self, func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """`func(*args, **kwargs)`, in the worker when it is ready, else here. Raises what `func` raises, or
        `StoreUnavailableError` when the worker was lost during the call (the caller retries as for the store)."""
        if not self._ready.is_set():
            self.start()
            self.calls_in_process += 1
            return func(*args, **kwargs)
        future: Future[Any] = Future()
        request_id = next(self._ids)
        with self._lock:
            requests = self._requests
            self._pending[request_id] = future
        try:
            if requests is None:
                raise OSError("no worker")
            call = pickle.dumps((func, args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
            with self._send_lock:
                requests.send_bytes(request_id.to_bytes(8, "little") + call)
        except (OSError, ValueError) as exc:
            with self._lock:
                self._pending.pop(request_id, None)
            self._lost(f"could not send to it ({exc})")
            self.calls_in_process += 1
            return func(*args, **kwargs)  # not sent: nothing ran in the child, so run it here
        try:
            result: _T = future.result(timeout=self.call_timeout)
        except FutureTimeout:
            with self._lock:
                self._pending.pop(request_id, None)
            self._kill(f"it did not answer a call of {getattr(func, '__name__', func)} in {self.call_timeout:.0f} s")
            raise StoreUnavailableError(
                f"The persistence worker did not answer in {self.call_timeout:.0f} s and was stopped; the work is "
                "kept and retried."
            ) from None
        self.calls_in_worker += 1
        return result

    # ------------------------------------------------------------------------------------------ child

    def _read_replies(self, proc: subprocess.Popen[bytes], replies: Connection) -> None:
        try:
            while True:
                message = replies.recv()
                if message[0] == "ready":
                    if self._proc is proc:
                        self._ready.set()
                        log.info("persistence worker process %d ready (start %d)", proc.pid, self.starts)
                    continue
                kind, request_id, value = message
                with self._lock:
                    future = self._pending.pop(request_id, None)
                if future is None:
                    continue  # its caller timed out
                if kind == "ok":
                    future.set_result(value)
                else:
                    future.set_exception(value)
        except (EOFError, OSError):
            pass
        finally:
            replies.close()
            code = proc.wait()
            if self._proc is proc:  # not one `_kill` already reported
                self._lost(f"it exited with code {code}")

    def _lost(self, why: str) -> None:
        """The child is gone (or unusable): fail its calls in flight; the next `run` starts a new one."""
        with self._lock:
            self._ready.clear()
            pending, self._pending = self._pending, {}
            requests, self._requests = self._requests, None
        if requests is not None:
            requests.close()
        self.lost_calls += len(pending)
        for future in pending.values():
            future.set_exception(
                StoreUnavailableError(f"The persistence worker process was lost ({why}); the work is kept and retried.")
            )
        if not self._closed:
            log.warning("the persistence worker process was lost (%s); %d call(s) will be retried", why, len(pending))

    def _kill(self, why: str) -> None:
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
        self._lost(why)

    def close(self, timeout: float = 10.0) -> None:
        """Let the child finish its calls in flight and exit (killed after `timeout` seconds)."""
        with self._lock:
            self._closed = True
            self._ready.clear()
            requests, self._requests = self._requests, None
            proc = self._proc
        if requests is not None:
            requests.close()  # the child sees end of input, finishes what it runs and exits
        if proc is not None:
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
