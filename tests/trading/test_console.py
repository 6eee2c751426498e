"""The console of `mlflow-persist run`: the path of the detailed log first, one short line per save, the detail
in the log file (or on the console at DEBUG), no long lines; and on a terminal, the live display.

The registry is the independent record: every version it holds must have been announced on the console."""

from __future__ import annotations

import os
import pty
import re
import select
import sys
import time
from pathlib import Path

import pytest
from zygote import Zygote

CLI = Path(sys.executable).with_name("mlflow-persist")
SAVE_LINE = re.compile(
    r"^\d\d:\d\d:\d\d (?P<model>\w+): .*, saved v(?P<version>\d+) \((?P<category>\w+), step (?P<step>\d+),"
)
ALSO = re.compile(r", also v(?P<version>\d+) (?P<category>\w+)")  # the same bytes under another category
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LONGEST_LINE = 200

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "COLUMNS": "120"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _registered(workdir: Path) -> set[tuple[str, int, str, int]]:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    return {
        (v.name, int(v.version), v.tags["mlflow_persist.category"], int(v.tags["mlflow_persist.step"]))
        for v in client.search_model_versions(max_results=1000)
    }


def _run(zygote: Zygote, workdir: Path, *args: str) -> list[str]:
    result = zygote.run(
        [str(CLI), *args, "run", "--steps", "120"], cwd=workdir, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout == ""
    return result.stderr.splitlines()


def test_the_console_shows_one_short_line_per_save_and_the_detail_goes_to_the_printed_log_file(
    tmp_path: Path, zygote: Zygote
) -> None:
    lines = _run(zygote, tmp_path)
    assert lines[0] == f"mlflow-persist run: detailed log in {tmp_path.resolve() / 'mlflow-persist.log'}"
    log_file = tmp_path / "mlflow-persist.log"
    detail = log_file.read_text().splitlines()

    assert max(len(line) for line in lines) <= LONGEST_LINE, max(lines, key=len)
    announced = {
        (m["model"], int(m["version"]), m["category"], int(m["step"])) for m in map(SAVE_LINE.match, lines) if m
    }
    announced |= {
        (m["model"], int(also["version"]), also["category"], int(m["step"]))
        for line in lines
        if (m := SAVE_LINE.match(line))
        for also in ALSO.finditer(line)
    }
    registered = _registered(tmp_path)
    assert registered and registered <= announced, sorted(registered - announced)
    saves = sum(1 for line in lines if SAVE_LINE.match(line))
    assert len(announced) == saves + sum(len(ALSO.findall(line)) for line in lines)  # one line per save, none twice
    # The log file holds the structured event of every save the console announced, and MLflow's own lines.
    assert sum(1 for line in detail if "outcome=saved" in line) == saves
    assert any("mlflow.store.db.utils" in line for line in detail)
    assert any("mlflow_persist.best" in line for line in detail)
    # None of that detail is on the console.
    assert not any("[model=" in line or "mlflow.store" in line or "best ->" in line for line in lines)
    assert any(line.startswith("step 100 |") for line in lines)  # the plain progress line (no terminal here)


def test_at_debug_the_console_carries_the_detail(tmp_path: Path, zygote: Zygote) -> None:
    lines = _run(zygote, tmp_path, "--log-level", "DEBUG")
    saves = [line for line in lines if "outcome=saved" in line]
    assert saves and all("[model=" in line for line in saves)
    assert len(saves) == sum(
        1 for line in (tmp_path / "mlflow-persist.log").read_text().splitlines() if "outcome=saved" in line
    )


def test_on_a_terminal_the_live_display_runs_with_the_save_lines_above_it(tmp_path: Path) -> None:
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI on a pseudo-terminal
        os.chdir(tmp_path)
        os.execve(str(CLI), [str(CLI), "run", "--steps", "120"], _env())
    output = b""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 5)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    text = ANSI.sub("", output.decode(errors="replace"))
    lines = text.replace("\r", "\n").splitlines()
    assert "Traceback" not in text
    assert any("steps/s" in line and line.lstrip().startswith("steps ") for line in lines)  # the live header
    assert any("last save" in line for line in lines)  # the live table
    announced = {(m["model"], int(m["version"])) for m in map(SAVE_LINE.match, lines) if m}
    announced |= {
        (m["model"], int(also["version"]))
        for line in lines
        if (m := SAVE_LINE.match(line))
        for also in ALSO.finditer(line)
    }
    assert {(name, version) for name, version, _, _ in _registered(tmp_path)} <= announced
    assert max(len(line) for line in lines) <= LONGEST_LINE
