"""`close()` and the exit path tell the truth (issue "Trust, round 3", defect 5), on `MemoryStore`.

`close()` returns the outcome of every final save (registered, durable in the outbox, failed, not finished)
and raises `FinalCheckpointError` when one is missing; `close(timeout=...)` bounds the whole wait; a process
that ends without its final checkpoint says so in one line and exits with its own code. The records checked:
`MemoryStore`'s versions, the subprocess's exit code and output.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import mlflow_persist as mp
from mlflow_persist._runtime.close_report import STORED, CloseReport, FinalSave
from mlflow_persist._runtime.closing import Closing
from mlflow_persist.cli.schema import EXIT_NO_FINAL_CHECKPOINT
from mlflow_persist.errors import FinalCheckpointError
from mlflow_persist.testing import MemoryStore

ROOT = Path(__file__).resolve().parents[2]


def _config(**fields: object) -> mp.PersistConfig:
    return mp.PersistConfig(log_system_metrics=False, save_retry_max_wait_seconds=0.05, **fields)  # type: ignore[arg-type]


def test_a_healthy_close_reports_each_final_version() -> None:
    assert mp.Persistence.close is Closing.close  # the close() under test is closing.py's
    store = MemoryStore()
    with mp.Persistence(_config(), store=store, install_signal_handlers=False) as persist:
        for name in ("a", "b"):
            persist.track(name, torch.nn.Linear(2, 2)).step(3, loss=1.0)
        report = persist.close()
    assert isinstance(report, CloseReport) and report.ok and set(report.finals) == {"a", "b"}
    for name, final in report.finals.items():
        newest = store.list_versions(name)[-1]
        assert newest.category == "final"
        assert (final.outcome, final.version, final.step) == ("registered", newest.version, 3)
    assert report.cut is not None and report.cut_outcome == "complete"


def test_a_final_save_that_fails_is_reported_and_raised() -> None:
    store = MemoryStore()
    persist = mp.Persistence(_config(save_retry_attempts=2), store=store, install_signal_handlers=False)
    persist.track("net", torch.nn.Linear(2, 2)).step(1, loss=1.0)
    assert persist.flush(timeout=30)
    store.fail("write", times=None)
    with pytest.raises(FinalCheckpointError) as raised:
        persist.close()
    report = raised.value.report
    assert report.finals["net"].outcome == "failed" and not report.ok
    assert "net" in str(raised.value) and "final" in str(raised.value)
    assert all(v.category != "final" for v in store.list_versions("net"))


@pytest.mark.slow  # seconds of work: in `make test`, not in `make test-fast`
def test_close_with_a_hanging_registry_returns_within_its_timeout_and_says_what_is_missing() -> None:
    store = MemoryStore()
    persist = mp.Persistence(_config(), store=store, install_signal_handlers=False)
    persist.track("net", torch.nn.Linear(2, 2)).step(1, loss=1.0)
    assert persist.flush(timeout=30)
    store.hang("register", 60.0, times=None)
    store.hang("metrics", 60.0, times=None)
    started = time.monotonic()
    with pytest.raises(FinalCheckpointError) as raised:
        persist.close(timeout=3.0)
    elapsed = time.monotonic() - started
    assert elapsed < 3.0 + 5.0, f"close(timeout=3) took {elapsed:.1f} s"  # a hang guard, not a speed test
    assert raised.value.report.finals["net"].outcome == "not_finished"
    assert raised.value.report.timed_out
    store.heal()


@pytest.mark.slow  # seconds of work: in `make test`, not in `make test-fast`
def test_behind_a_server_that_is_down_the_final_checkpoint_waits_in_the_outbox_and_counts(tmp_path: Path) -> None:
    store = MemoryStore(remote=True)
    persist = mp.Persistence(_config(outbox_dir=str(tmp_path / "outbox")), store=store, install_signal_handlers=False)
    persist.track("net", torch.nn.Linear(2, 2)).step(2, loss=1.0)
    assert persist.flush(timeout=30)
    store.fail("register", times=None)
    report = persist.close(timeout=20)
    assert report.finals["net"].outcome == "outbox" and report.ok
    assert len(list((tmp_path / "outbox").rglob("checkpoint.pt"))) >= 1


@pytest.mark.slow  # a fresh interpreter: seconds of imports
def test_a_process_that_ends_without_its_final_checkpoint_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import torch
        import mlflow_persist as mp
        from mlflow_persist.testing import MemoryStore

        store = MemoryStore()
        cfg = mp.PersistConfig(log_system_metrics=False, save_retry_attempts=1)
        persist = mp.Persistence(cfg, store=store, install_signal_handlers=False)
        persist.track("net", torch.nn.Linear(2, 2)).step(1, loss=1.0)
        persist.flush(timeout=30)
        store.fail("write", times=None)
        print("training done", flush=True)
        # the script ends without close(): the exit path takes the final checkpoint, which fails
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert "training done" in proc.stdout
    assert proc.returncode == EXIT_NO_FINAL_CHECKPOINT, (proc.returncode, proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if line.startswith("mlflow-persist:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert "final checkpoint" in lines[0] and "net" in lines[0], lines[0]


def test_the_report_counts_only_stored_final_checkpoints_as_present() -> None:
    finals = {
        "a": FinalSave("a", "registered", 3, 1),
        "b": FinalSave("b", "outbox", step=1),
        "c": FinalSave("c", "not_finished", step=1, detail="still running"),
        "d": FinalSave("d", "skipped"),
    }
    report = CloseReport(finals=finals)
    assert STORED == {"registered", "outbox"}
    assert report.missing == ["c"] and not report.ok
    assert "c (not_finished: still running)" in report.describe()
    assert CloseReport(finals={k: v for k, v in finals.items() if k != "c"}).ok


def test_the_command_line_exits_with_its_own_code_without_a_final_checkpoint(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import typer

    from mlflow_persist.cli import run_app

    app = typer.Typer()

    @app.command()
    def train() -> None:
        raise FinalCheckpointError("close(): no final checkpoint for net (failed)", CloseReport())

    @app.command()
    def other() -> None:
        """a second command, so typer keeps the subcommand name"""

    assert run_app(app, ["train"]) == EXIT_NO_FINAL_CHECKPOINT == 5
    assert capsys.readouterr().err.strip() == "mlflow-persist: close(): no final checkpoint for net (failed)"
