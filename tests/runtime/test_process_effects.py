"""Process-wide side effects, each in its own process where it touches the process: real SIGTERM/SIGINT
(os.kill) against the installed handlers in a child Python, atexit hooks that run (or not) when a child
exits, and the `ProcessEffects` switches of a real `Persistence` over a MemoryStore. The test process's own
signal handlers are never touched. Checked against what the children printed and their exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import FrozenInstanceError
from pathlib import Path
from typing import Any

import pytest
from runtime_support import PYTHON, subprocess_env

from mlflow_persist._runtime.process_effects import (
    GracefulExit,
    ProcessEffects,
    SignalHandlers,
    apply_http_retry_defaults,
    make_sqlite_commits_durable,
)

HTTP_VARS = ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "MLFLOW_HTTP_REQUEST_TIMEOUT")

# Each scenario prints one JSON object per line. os.kill(os.getpid(), ...) delivers a real signal; Python
# runs the handler in the main thread, which polls with short sleeps (bounded) until it has.
SIGNAL_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, threading, time
    from mlflow_persist._runtime.process_effects import GracefulExit, SignalHandlers

    def emit(**values):
        print(json.dumps(values), flush=True)

    def wait_for(predicate, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    seen = []
    def earlier(signum, frame):  # the application's own handlers, there before ours
        seen.append(signum)
    signal.signal(signal.SIGTERM, earlier)
    signal.signal(signal.SIGINT, earlier)

    # 1. SIGTERM, then no step boundary within the grace period: on_timeout runs, once.
    timeouts = []
    handlers = SignalHandlers(0.2, timeouts.append)
    handlers.install()
    emit(scenario="grace", installed=signal.getsignal(signal.SIGTERM) is not earlier
         and signal.getsignal(signal.SIGINT) is not earlier, code_before=handlers.exit_code())
    os.kill(os.getpid(), signal.SIGTERM)
    emit(scenario="grace", stop=wait_for(handlers.stop.is_set), signum=handlers.signum,
         code=handlers.exit_code(), earlier_ran=list(seen))
    emit(scenario="grace", timed_out=wait_for(lambda: timeouts), timeouts=list(timeouts))
    handlers.uninstall()
    emit(scenario="grace", restored=signal.getsignal(signal.SIGTERM) is earlier
         and signal.getsignal(signal.SIGINT) is earlier)
    os.kill(os.getpid(), signal.SIGTERM)
    emit(scenario="grace", after_uninstall=wait_for(lambda: seen) and list(seen), timeouts_after=list(timeouts))
    seen.clear()

    # 2. A second signal calls on_timeout at once (the grace period is ten minutes).
    timeouts = []
    handlers = SignalHandlers(600.0, timeouts.append)
    handlers.install()
    os.kill(os.getpid(), signal.SIGTERM)
    emit(scenario="second", stop=wait_for(handlers.stop.is_set), timeouts_after_first=list(timeouts))
    os.kill(os.getpid(), signal.SIGTERM)
    emit(scenario="second", timed_out=wait_for(lambda: timeouts), timeouts=list(timeouts))
    handlers.uninstall()

    # 3. SIGINT, then a step boundary in time: no timeout, and GracefulExit unwinds with code 130.
    timeouts = []
    handlers = SignalHandlers(0.3, timeouts.append)
    handlers.install()
    before = set(threading.enumerate())
    os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt may interrupt the "update" below
    stopped = wait_for(handlers.stop.is_set)
    handlers.reached_boundary()
    for timer in set(threading.enumerate()) - before:
        timer.join(10)  # the grace timer ran out (and stood down)
    emit(scenario="boundary", stop=stopped, signum=handlers.signum, timeouts=list(timeouts),
         code=handlers.exit_code(), earlier_ran=list(seen))
    try:
        raise GracefulExit(handlers.exit_code())
    finally:
        emit(scenario="boundary", unwound=True)
    """
)

EXIT_SCRIPT = textwrap.dedent(
    """
    import atexit, json, signal
    import torch
    from mlflow_persist import Persistence, PersistConfig
    from mlflow_persist.testing import MemoryStore
    from mlflow_persist._runtime.process_effects import ProcessEffects, register_atexit

    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a foreground shell (a background one ignores it)
    store = MemoryStore()
    default = signal.getsignal(signal.SIGTERM)

    def report():  # registered first, so it runs last (atexit runs last-in first-out)
        versions = {name: [v.category for v in store.list_versions(name)] for name in ("kept", "skipped")}
        print("REPORT " + json.dumps({"versions": versions,
                                      "handler_restored": signal.getsignal(signal.SIGTERM) is default}), flush=True)
    atexit.register(report)

    register_atexit(lambda: print("HOOK registered", flush=True))
    unregister = register_atexit(lambda: print("HOOK unregistered", flush=True))
    unregister()

    config = PersistConfig(log_system_metrics=False)
    off = Persistence(config, store=store, effects=ProcessEffects(signal_handlers=False, atexit_close=False))
    off.track("skipped", torch.nn.Linear(2, 2))
    print("OFF " + json.dumps({"handler_untouched": signal.getsignal(signal.SIGTERM) is default
                                and signal.getsignal(signal.SIGINT) is signal.default_int_handler}), flush=True)
    on = Persistence(config, store=store, effects=ProcessEffects())
    on.track("kept", torch.nn.Linear(2, 2))
    print("ON " + json.dumps({"handler_installed": signal.getsignal(signal.SIGTERM) is not default}), flush=True)
    print("END", flush=True)  # neither is closed by the script
    """
)


def _lines(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def children(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, subprocess.CompletedProcess[str]]]:
    """Run both child scripts at the same time (each costs seconds of imports) and keep what they did."""
    cwd = tmp_path_factory.mktemp("children")
    procs = {
        name: subprocess.Popen(
            [PYTHON, "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=subprocess_env(),
            cwd=cwd,
        )
        for name, script in (("signals", SIGNAL_SCRIPT), ("exit", EXIT_SCRIPT))
    }
    results = {}
    try:
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=120)
            results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    yield results


def _scenario(result: subprocess.CompletedProcess[str], name: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for line in _lines(result.stdout):
        record = json.loads(line)
        if record.pop("scenario") == name:
            merged.update(record)
    assert merged, f"the child printed nothing for {name!r}: {result.stdout}\n{result.stderr[-3000:]}"
    return merged


def test_sigterm_requests_a_stop_and_a_missed_boundary_calls_on_timeout(
    children: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    grace = _scenario(children["signals"], "grace")
    assert grace["installed"] and grace["code_before"] == 0
    assert grace["stop"] and grace["signum"] == signal.SIGTERM
    assert grace["code"] == 0  # a SIGTERM stop is an orderly exit
    assert grace["earlier_ran"] == [], "the application's earlier handler ran while ours was installed"
    assert grace["timed_out"] and grace["timeouts"] == [signal.SIGTERM]


def test_uninstall_gives_the_signals_back_to_the_earlier_handlers(
    children: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    grace = _scenario(children["signals"], "grace")
    assert grace["restored"]
    assert grace["after_uninstall"] == [signal.SIGTERM]  # a real SIGTERM now reaches the earlier handler
    assert grace["timeouts_after"] == [signal.SIGTERM]  # and no longer ours


def test_a_second_signal_calls_on_timeout_at_once(children: dict[str, subprocess.CompletedProcess[str]]) -> None:
    second = _scenario(children["signals"], "second")
    assert second["stop"] and second["timeouts_after_first"] == []
    assert second["timed_out"] and second["timeouts"] == [signal.SIGTERM]


def test_sigint_reaching_a_step_boundary_unwinds_with_graceful_exit(
    children: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    result = children["signals"]
    boundary = _scenario(result, "boundary")
    assert boundary["stop"] and boundary["signum"] == signal.SIGINT
    assert boundary["timeouts"] == [], "the grace timer fired although the step boundary was reached"
    assert boundary["earlier_ran"] == [] and "KeyboardInterrupt" not in result.stderr
    assert boundary["code"] == 128 + signal.SIGINT and boundary["unwound"]
    assert result.returncode == 128 + signal.SIGINT, result.stderr[-3000:]  # GracefulExit is a SystemExit


def test_register_atexit_runs_at_exit_unless_unregistered(
    children: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    result = children["exit"]
    assert result.returncode == 0, result.stderr[-3000:]
    lines = _lines(result.stdout)
    assert "HOOK registered" in lines and "HOOK unregistered" not in lines
    assert lines.index("END") < lines.index("HOOK registered")


def test_the_switches_decide_signal_handlers_and_the_atexit_close(
    children: dict[str, subprocess.CompletedProcess[str]],
) -> None:
    result = children["exit"]
    lines = _lines(result.stdout)
    values = {
        line.split(" ", 1)[0]: json.loads(line.split(" ", 1)[1]) for line in lines if line[:3] in ("OFF", "ON ", "REP")
    }
    assert values["OFF"] == {"handler_untouched": True}, result.stderr[-3000:]
    assert values["ON"] == {"handler_installed": True}
    report = values["REPORT"]
    # The default Persistence was closed at exit (its final checkpoint exists) and gave SIGTERM back; the one
    # with atexit_close=False was left alone.
    assert report["versions"] == {"kept": ["final"], "skipped": []}
    assert report["handler_restored"]


def test_the_default_effects_are_all_on_except_signal_handlers_in_an_interactive_session_and_fixed() -> None:
    effects = ProcessEffects()
    assert (effects.http_retry_defaults, effects.atexit_close) == (True, True)
    assert effects.wants_signal_handlers(interactive=False) and not effects.wants_signal_handlers(interactive=True)
    assert ProcessEffects(signal_handlers=True).wants_signal_handlers(interactive=True)  # opted in
    assert not ProcessEffects(signal_handlers=False).wants_signal_handlers(interactive=False)
    with pytest.raises(FrozenInstanceError):
        effects.signal_handlers = False  # type: ignore[misc]


# A Jupyter kernel, as `interactive_session` sees one: IPython imported and `get_ipython()` giving the shell.
NOTEBOOK_SCRIPT = textwrap.dedent(
    """
    import json, os, signal, sys, time, types
    signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a kernel (a background shell ignores SIGINT)
    fake = types.ModuleType("IPython")
    fake.get_ipython = lambda: object()  # the kernel's shell
    sys.modules["IPython"] = fake
    import torch
    from mlflow_persist import Persistence, PersistConfig
    from mlflow_persist.testing import MemoryStore

    def emit(**values):
        print(json.dumps(values), flush=True)

    def wait_until(condition, seconds=10.0):
        deadline = time.monotonic() + seconds
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.01)

    config = PersistConfig(log_system_metrics=False, shutdown_grace_seconds=0.3)
    default = Persistence(config, store=MemoryStore())
    emit(scenario="default", handler_untouched=signal.getsignal(signal.SIGINT) is signal.default_int_handler)
    default.close(final_checkpoints=False)

    opted = Persistence(config, store=MemoryStore(), install_signal_handlers=True)
    handle = opted.track("net", torch.nn.Linear(2, 2))
    emit(scenario="opted_in", installed=signal.getsignal(signal.SIGINT) is not signal.default_int_handler)
    os.kill(os.getpid(), signal.SIGINT)  # the kernel's "interrupt"
    wait_until(opted._signals.stop.is_set)
    interrupted = False
    try:
        os.kill(os.getpid(), signal.SIGINT)  # a second one
        wait_until(lambda: False, 2.0)
    except KeyboardInterrupt:
        interrupted = True
    emit(scenario="second", keyboard_interrupt=interrupted, stop_after=opted._signals.stop.is_set())
    handle.step(loss=1.0)  # the stop request is gone: training goes on
    os.kill(os.getpid(), signal.SIGINT)
    wait_until(opted._signals.stop.is_set)
    time.sleep(0.3)
    wait_until(lambda: not opted._signals.stop.is_set(), 5.0)  # no step() within the grace period
    emit(scenario="expired", stop_after=opted._signals.stop.is_set())
    handle.step(loss=0.5)
    opted.close()
    emit(scenario="alive", final=[v.category for v in opted.store.list_versions("net")][-1])
    """
)


def test_in_a_notebook_signal_handlers_are_opt_in_and_never_end_the_kernel(tmp_path: Path) -> None:
    result = subprocess.run(
        [PYTHON, "-c", NOTEBOOK_SCRIPT], capture_output=True, text=True, env=subprocess_env(), cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]  # before: a second Ctrl-C ended the process with 130
    assert _scenario(result, "default") == {"handler_untouched": True}
    assert _scenario(result, "opted_in") == {"installed": True}
    assert _scenario(result, "second") == {"keyboard_interrupt": True, "stop_after": False}
    assert _scenario(result, "expired") == {"stop_after": False}
    assert _scenario(result, "alive") == {"final": "final"}


def test_graceful_exit_is_a_system_exit_with_its_code() -> None:
    with pytest.raises(SystemExit) as raised:
        raise GracefulExit(130)
    assert raised.value.code == 130


def test_handlers_are_left_alone_outside_the_main_thread() -> None:
    before = (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT))
    errors: list[BaseException] = []

    def install_and_uninstall() -> None:
        try:
            handlers = SignalHandlers(1.0, lambda signum: None)
            handlers.install()
            handlers.uninstall()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=install_and_uninstall)
    thread.start()
    thread.join(10)
    assert errors == []
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_http_retry_defaults_fill_in_but_leave_a_users_own_value(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in HTTP_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "11")
    apply_http_retry_defaults()
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "11"
    for name in HTTP_VARS[1:]:
        assert float(os.environ[name]) > 0, name
    # MLflow's own defaults retry an unreachable server for about four minutes; these must be far shorter.
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    apply_http_retry_defaults()
    retries = int(os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"])
    backoff = float(os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"])
    assert 0 < retries and backoff * (2**retries - 1) < 60


def test_durable_sqlite_commits_touch_only_the_named_database(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, text

    durable, other = tmp_path / "mlflow.db", tmp_path / "someone-else.db"
    make_sqlite_commits_durable(durable)

    def synchronous(path: Path) -> int:
        engine = create_engine(f"sqlite:///{path}")
        try:
            with engine.connect() as connection:
                return int(connection.execute(text("PRAGMA synchronous")).scalar_one())
        finally:
            engine.dispose()

    assert synchronous(durable) == 3  # EXTRA
    assert synchronous(other) == 2  # SQLite's default FULL, untouched
