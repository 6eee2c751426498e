"""Python subprocesses forked from a pre-imported parent: `Zygote`.

A test that starts `python script.py ...` pays 4-7 s here for importing torch, MLflow and the rest before the
script does anything. A zygote is a process that imports those libraries once (never `mlflow_persist`, whose
import a child does itself, so it reads its own environment) and then forks one child per command. The child
becomes the program the test asked for: its own stdin/stdout/stderr (the test's pipes, passed over a Unix
socket), environment, working directory, session, `sys.argv`, `sys.path` and a fresh `__main__`; Python's
default signal handlers; reseeded `random`; and it ends the way an interpreter ends (non-daemon threads
joined, atexit handlers run, the exit code of `SystemExit`).

`Zygote.popen(args, ...)` and `Zygote.run(args, ...)` take the arguments of `subprocess.Popen` / `run` that the
tests use. `args` is `[sys.executable, ("-u",) ("-c", CODE | "-m", MODULE | SCRIPT), *argv]` or a console
script of this venv (`.../bin/mlflow-persist`, run as the script it is). The process object answers `pid`,
`stdin`/`stdout`/`stderr`, `poll()`, `wait()`, `communicate()`, `send_signal()`, `terminate()`, `kill()` and
`returncode` like a `Popen` (a signal death is `-signum`); `maxrss_kb` is the child's peak RSS from wait4.

What a fork cannot give: a child has the zygote's already-imported modules (whatever they did at import time
happened once, in the zygote's environment), so tests about imports or interpreter start-up keep real
subprocesses. The zygote checks that importing its modules printed nothing (a child's stdout and stderr are
then what a fresh interpreter's would be). The zygote runs no Python thread and no torch operation before it forks (the native threads that
importing torch and pyarrow start, such as jemalloc's, are fork-safe), so its children may use everything.

Run as `python zygote.py SOCKET_NAME MODULE...` (an abstract Unix socket name) by `Zygote`; it prints `READY {json}` once imported.
"""

from __future__ import annotations

import importlib
import io
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

_MAX_MESSAGE = 1 << 20
_STD = (0, 1, 2)
TESTS_DIR = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------- the zygote


def _own_threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _python_args(argv: list[str]) -> tuple[str, str, list[str], bool]:
    """(kind, target, argv, unbuffered) of a Python command line without the executable: kind is "script",
    "module" or "code"; argv is the child's sys.argv."""
    unbuffered = False
    rest = list(argv)
    while rest and rest[0].startswith("-") and rest[0] not in ("-c", "-m", "-"):
        flag = rest.pop(0)
        if flag != "-u":
            raise ValueError(f"the zygote runs no Python flag {flag!r}")
        unbuffered = True
    if not rest:
        raise ValueError("no program to run")
    if rest[0] == "-c":
        return "code", rest[1], ["-c", *rest[2:]], unbuffered
    if rest[0] == "-m":
        return "module", rest[1], [rest[1], *rest[2:]], unbuffered
    return "script", rest[0], rest, unbuffered


def _stdio(unbuffered: bool) -> None:
    """New sys.stdin/stdout/stderr on fds 0-2, buffered as a fresh interpreter buffers them."""
    encoding = os.environ.get("PYTHONIOENCODING", "utf-8").split(":")[0] or "utf-8"

    def text(fd: int, mode: str, errors: str) -> Any:
        raw = io.FileIO(fd, mode, closefd=False)
        tty = raw.isatty()
        if mode == "rb":
            return io.TextIOWrapper(io.BufferedReader(raw), encoding=encoding, errors=errors, line_buffering=tty)
        buffer: Any = raw if unbuffered else io.BufferedWriter(raw)
        return io.TextIOWrapper(
            buffer,
            encoding=encoding,
            errors=errors,
            line_buffering=not unbuffered and (tty or fd == 2),
            write_through=unbuffered,
        )

    sys.stdin = sys.__stdin__ = text(0, "rb", "strict")
    sys.stdout = sys.__stdout__ = text(1, "wb", "strict")
    sys.stderr = sys.__stderr__ = text(2, "wb", "backslashreplace")


def _become(request: dict[str, Any], base_path: list[str]) -> int:
    """In the forked child: turn into the requested program, run it, return its exit code."""
    import random
    import tempfile
    import traceback
    import types

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    tempfile.tempdir = None  # gettempdir() reads this child's TMPDIR
    importlib.invalidate_caches()
    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()
    kind, target, argv, unbuffered = _python_args(request["argv"])
    unbuffered = unbuffered or bool(os.environ.get("PYTHONUNBUFFERED"))
    _stdio(unbuffered)
    pythonpath = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if kind == "script":
        first = os.path.dirname(os.path.realpath(target))
    elif kind == "module":
        first = os.getcwd()
    else:
        first = ""
    sys.path[:] = [first, *pythonpath, *base_path]
    sys.argv[:] = argv
    main = types.ModuleType("__main__")  # a fresh __main__, not the zygote's
    main.__dict__["__builtins__"] = __builtins__
    sys.modules["__main__"] = main
    code = 0
    try:
        if kind == "module":
            import runpy

            runpy._run_module_as_main(target, alter_argv=True)  # type: ignore[attr-defined]  # what `-m` runs
        else:
            if kind == "script":
                main.__file__ = os.path.abspath(target)
                source, filename = Path(target).read_bytes(), target
            else:
                source, filename = target.encode(), "<string>"
            exec(compile(source, filename, "exec"), main.__dict__)
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        traceback.print_exc()
        code = 128 + signal.SIGINT
    except BaseException:  # noqa: BLE001 - reported like an uncaught exception
        traceback.print_exc()
        code = 1
    return code


def serve(socket_name: str, preload: list[str]) -> int:
    """The zygote's loop; returns only in a forked child, with that child's exit code."""
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints go to the log, never into the protocol
    started = time.monotonic()
    for name in preload:
        importlib.import_module(name)
    base_path = [p for p in sys.path[1:] if p not in os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind("\0" + socket_name)
    listener.listen(64)
    zygote, parent = os.getpid(), os.getppid()
    children: dict[int, socket.socket] = {}
    hello = {
        "threads": threading.active_count(),
        "native_threads": _own_threads(),
        "import_s": round(time.monotonic() - started, 2),
        "pid": zygote,
    }
    replies.write("READY " + json.dumps(hello) + "\n")
    replies.flush()
    while True:
        readable, _, _ = select.select([listener], [], [], 0.05)
        if os.getppid() != parent:  # the test session that started the zygote is gone: so is the zygote
            return 0
        while children:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = children.pop(pid, None)
            if conn is not None:
                try:
                    conn.send(json.dumps({"status": status, "maxrss_kb": usage.ru_maxrss}).encode())
                except OSError:
                    pass
                conn.close()
        if not readable:
            continue
        conn, _ = listener.accept()
        try:
            message, fds, _, _ = socket.recv_fds(conn, _MAX_MESSAGE, 3)
        except OSError:
            conn.close()
            continue
        if not message:
            conn.close()
            continue
        request = json.loads(message)
        if request.get("op") == "exit":
            conn.close()
            return 0
        pid = os.fork()
        if pid == 0:
            listener.close()
            for other in children.values():
                other.close()
            conn.close()
            replies.close()
            if request.get("new_session"):
                os.setsid()
            for target, fd in zip(_STD, fds):
                os.dup2(fd, target)
            for fd in fds:
                if fd not in _STD:
                    os.close(fd)
            return _become(request, base_path)
        for fd in fds:
            os.close(fd)
        children[pid] = conn
        try:
            conn.send(json.dumps({"pid": pid}).encode())
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------- the test side


class ZygoteProcess(subprocess.Popen):  # type: ignore[type-arg]
    """A child of the zygote, used like a `subprocess.Popen` (only the parts the tests use)."""

    def __init__(
        self,
        zygote: Zygote,
        args: Sequence[str],
        *,
        stdin: Any = None,
        stdout: Any = None,
        stderr: Any = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        text: bool | None = None,
        universal_newlines: bool | None = None,
        encoding: str | None = None,
        errors: str | None = None,
        bufsize: int = -1,
        start_new_session: bool = False,
    ) -> None:
        # subprocess.Popen.__init__ is not called: nothing of it is used (poll/wait/communicate are our own).
        self._child_created = False
        self.args = list(args)
        self.returncode: int | None = None
        self.maxrss_kb: int | None = None
        self.stdin = self.stdout = self.stderr = None
        self._stdout_chunks: list[Any] = []
        self._stderr_chunks: list[Any] = []
        self._readers: list[threading.Thread] = []
        text_mode = bool(text or universal_newlines or encoding or errors)
        ours: list[int] = []  # child-side ends to close here once sent
        closers: list[int] = []

        def child_end(spec: Any, fd: int, readable_by_child: bool) -> tuple[int, IO[Any] | None]:
            if spec is None:
                return fd, None
            if spec == subprocess.DEVNULL:
                null = os.open(os.devnull, os.O_RDONLY if readable_by_child else os.O_WRONLY)
                closers.append(null)
                return null, None
            if spec == subprocess.PIPE:
                read, write = os.pipe()
                mine, theirs = (write, read) if readable_by_child else (read, write)
                ours.append(theirs)
                mode = "wb" if readable_by_child else "rb"
                stream: IO[Any] = open(mine, mode, -1 if text_mode or bufsize == 1 else bufsize)
                if text_mode:
                    stream = io.TextIOWrapper(
                        stream,  # type: ignore[arg-type]
                        encoding=encoding or "utf-8",
                        errors=errors or "strict",
                        line_buffering=readable_by_child and bufsize == 1,
                        write_through=readable_by_child,
                    )
                return theirs, stream
            if isinstance(spec, int):
                return spec, None
            return spec.fileno(), None

        in_fd, self.stdin = child_end(stdin, 0, True)
        out_fd, self.stdout = child_end(stdout, 1, False)
        if stderr == subprocess.STDOUT:
            err_fd, self.stderr = out_fd, None
        else:
            err_fd, self.stderr = child_end(stderr, 2, False)
        program = list(args)
        request = {
            "argv": zygote.python_argv(program),
            "env": dict(os.environ if env is None else env),
            "cwd": os.fspath(cwd) if cwd is not None else os.getcwd(),
            "new_session": start_new_session,
        }
        self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._conn.settimeout(120)
            self._conn.connect(zygote.socket_path)
            socket.send_fds(self._conn, [json.dumps(request).encode()], [in_fd, out_fd, err_fd])
            reply = json.loads(self._conn.recv(_MAX_MESSAGE))
        finally:
            for fd in ours + closers:
                os.close(fd)
        self.pid: int = reply["pid"]

    # -- waiting

    def _take_status(self, message: bytes) -> int:
        if not message:  # the zygote went away without a status: report it as killed
            self.returncode = -signal.SIGKILL
            return self.returncode
        reply = json.loads(message)
        status = reply["status"]
        self.maxrss_kb = reply["maxrss_kb"]
        self.returncode = os.waitstatus_to_exitcode(status)
        self._conn.close()
        return self.returncode

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        self._conn.setblocking(False)
        try:
            message = self._conn.recv(_MAX_MESSAGE)
        except (BlockingIOError, InterruptedError):
            return None
        finally:
            if self.returncode is None:
                self._conn.setblocking(True)
        return self._take_status(message)

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is not None:
            return self.returncode
        self._conn.settimeout(timeout)
        try:
            message = self._conn.recv(_MAX_MESSAGE)
        except TimeoutError:
            raise subprocess.TimeoutExpired(self.args, timeout) from None
        return self._take_status(message)

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:  # noqa: A002
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._readers:
            for stream, chunks in ((self.stdout, self._stdout_chunks), (self.stderr, self._stderr_chunks)):
                if stream is not None:
                    reader = threading.Thread(target=lambda s=stream, c=chunks: c.append(s.read()), daemon=True)
                    reader.start()
                    self._readers.append(reader)
            if self.stdin is not None:
                try:
                    if input is not None:
                        self.stdin.write(input)
                    self.stdin.close()
                except BrokenPipeError:
                    pass
        for reader in self._readers:
            reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))

        def joined(chunks: list[Any], stream: Any) -> Any:
            if stream is None:
                return None
            return chunks[0] if chunks else ("" if isinstance(stream, io.TextIOBase) else b"")

        out, err = joined(self._stdout_chunks, self.stdout), joined(self._stderr_chunks, self.stderr)
        for stream in (self.stdout, self.stderr):
            if stream is not None:
                stream.close()
        return out, err

    # -- signals

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __enter__(self) -> ZygoteProcess:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self.wait()

    def __del__(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()


class Zygote:
    """A pre-imported Python to fork children from (see the module docstring). Start with `start()` (the
    imports run in the background until the first `popen`), stop with `stop()`."""

    def __init__(self, directory: Path, preload: Sequence[str], console_scripts_dir: Path | None = None) -> None:
        self.directory = Path(directory)
        self.preload = list(preload)
        self.socket_name = f"mlflow-persist-zygote-{uuid.uuid4().hex}"
        self.socket_path = "\0" + self.socket_name  # abstract namespace: no file to clean up
        self.log_path = self.directory / "zygote.log"
        self.bin_dir = console_scripts_dir or Path(sys.executable).parent
        self._proc: subprocess.Popen[str] | None = None
        self.hello: dict[str, Any] | None = None

    def start(self) -> Zygote:
        self.directory.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MLFLOW_TRACKING_URI")}
        env.update(MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true", PYTHONUNBUFFERED="1")
        with open(self.log_path, "w") as log:
            self._proc = subprocess.Popen(
                [sys.executable, str(Path(__file__).resolve()), self.socket_name, *self.preload],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=env,
                cwd=self.directory,
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout: float = 180.0) -> dict[str, Any]:
        if self.hello is None:
            assert self._proc is not None and self._proc.stdout is not None, "start() the zygote first"
            deadline = time.monotonic() + timeout
            line = ""
            while not line.startswith("READY "):
                line = self._proc.stdout.readline()
                if not line or time.monotonic() > deadline:
                    raise RuntimeError(f"the zygote did not start: {self.log_tail()}")
            self.hello = json.loads(line[len("READY ") :])
            assert self.hello["threads"] == 1, f"the zygote runs threads, forking it is unsafe: {self.hello}"
            # What a fresh interpreter would print while importing these modules (a warning, say), a child never
            # prints: there must be nothing, or the children's output would differ from a real start's.
            printed = self.log_tail()
            assert printed == "", f"importing {self.preload} printed, so children would not: {printed}"
        return self.hello

    def python_argv(self, args: Sequence[str]) -> list[str]:
        """The Python arguments (after the executable) of `args`: a Python command line of this interpreter
        or a console script of this venv."""
        program = os.fspath(args[0])
        if os.path.realpath(program) == os.path.realpath(sys.executable) or program == sys.executable:
            argv = [os.fspath(a) for a in args[1:]]
        elif Path(program).parent.resolve() == self.bin_dir.resolve():
            argv = [program, *(os.fspath(a) for a in args[1:])]  # a console script is a Python script
        else:
            raise ValueError(f"the zygote runs Python, not {program!r}")
        _python_args(argv)  # raises for what a child cannot be
        return argv

    def popen(self, args: Sequence[str], **kwargs: Any) -> ZygoteProcess:
        self.wait_ready()
        return ZygoteProcess(self, args, **kwargs)

    def run(
        self,
        args: Sequence[str],
        *,
        input: Any = None,  # noqa: A002
        capture_output: bool = False,
        timeout: float | None = None,
        check: bool = False,
        **kwargs: Any,
    ) -> subprocess.CompletedProcess[Any]:
        if capture_output:
            kwargs.update(stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if input is not None:
            kwargs["stdin"] = subprocess.PIPE
        proc = self.popen(args, **kwargs)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        result = subprocess.CompletedProcess(
            proc.args, proc.returncode if proc.returncode is not None else -9, out, err
        )
        if check:
            result.check_returncode()
        return result

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGKILL the zygote and whatever of its process group still runs (it holds no state to finish)."""
        if self._proc is None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._proc.wait(timeout=30)
        self._proc = None


# What every zygote imports before it forks: most of a test subprocess's 4-7 s of start-up. Never mlflow_persist
# itself (each child imports the package in its own environment).
BASE_PRELOAD = (
    "torch",
    "torch._dynamo",
    "mlflow",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "pandas",
    "pyarrow",
)


class Zygotes:
    """A test session's zygotes, one per set of extra modules on top of BASE_PRELOAD, each started at first use
    (the `zygotes` fixture of tests/conftest.py)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.started: dict[tuple[str, ...], Zygote] = {}

    def get(self, *extra: str) -> Zygote:
        if extra not in self.started:
            name = "-".join(("zygote", *extra)).replace(".", "_")[:80]
            self.started[extra] = Zygote(self.directory / name, [*BASE_PRELOAD, *extra]).start()
        return self.started[extra]

    def stop(self) -> None:
        for zygote in self.started.values():
            zygote.stop()


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1], sys.argv[2:]))
