"""How a training process ends: a script without close(), SIGTERM/SIGINT in the middle of an update, no
step() boundary within the grace period, a second signal. Each is checked against the record the trainer
itself wrote of every completed update (never against what the package read back for itself). The trainers
are forked from a pre-imported Python (tests/zygote.py) that ends them the way an interpreter ends (threads
joined, atexit handlers run)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from store_support import read_until
from zygote import Zygote

import mlflow_persist as mp
from mlflow_persist._store.mlflow_store import MlflowStore

pytestmark = pytest.mark.slow  # real subprocesses
# A hang guard, not a speed requirement: a trainer that waited out the 300 s grace period (or hung) exceeds it.
EXIT_GUARD_S = 120
PROC = Path(__file__).with_name("exit_proc.py")
ROOT = Path(__file__).resolve().parents[2]


def _start(zygote: Zygote, uri: str, record: Path, mode: str, grace: float = 30.0) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_DISABLE_TELEMETRY": "true"}
    return zygote.popen(
        [sys.executable, str(PROC), uri, str(record), mode, str(grace)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def _records(path: Path) -> dict[int, str]:
    return {r["step"]: r["digest"] for r in map(json.loads, path.read_text().splitlines())}


def _digest(state: mp.CheckpointState) -> str:
    return hashlib.sha256(state.model_state["w"].numpy().tobytes()).hexdigest()


def test_a_script_that_never_calls_close_still_saves_its_final_checkpoint(
    sqlite_uri: str, tmp_path: Path, zygote: Zygote
) -> None:
    """Regression (issue 11 #2): the atexit save hashed through a pool already shut down, for >= 1 MiB."""
    record = tmp_path / "record.jsonl"
    proc = _start(zygote, sqlite_uri, record, "no-close")
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    newest = MlflowStore(sqlite_uri).list_versions("big")[-1]
    assert newest.category == "final" and newest.step == 2, out
    state = mp.load_checkpoint("models:/big/latest", tracking_uri=sqlite_uri)
    assert _digest(state) == _records(record)[2]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_update_gives_a_final_checkpoint_of_a_completed_step(
    sqlite_uri: str, tmp_path: Path, signum: int, zygote: Zygote
) -> None:
    """Regression (issue 11 #3): the signal raised inside the update, so `final` held a half-applied one."""
    record = tmp_path / "record.jsonl"
    proc = _start(zygote, sqlite_uri, record, "slow-update")
    read_until(proc, "READY")
    read_until(proc, "STEP 2")
    time.sleep(0.05)  # well inside the next element-by-element update
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == (0 if signum == signal.SIGTERM else 128 + signum), out
    newest = MlflowStore(sqlite_uri).list_versions("flat")[-1]
    assert newest.category == "final"
    state = mp.load_checkpoint("models:/flat/latest", tracking_uri=sqlite_uri)
    weights = state.model_state["w"]
    assert bool((weights == weights[0]).all()), "the final checkpoint holds a half-applied update"
    assert _records(record)[state.step] == _digest(state)  # exactly the state recorded at that step boundary
    run = MlflowStore(sqlite_uri).client.get_run(newest.run_id)
    assert run.info.status == "FINISHED"


def _sigterm_a_stuck_trainer(zygote: Zygote, sqlite_uri: str, record: Path, grace: float, signals: int) -> None:
    """Start a trainer stuck inside one update and send it SIGTERM `signals` times, 0.5 s apart: it must exit
    with 143, within EXIT_GUARD_S (a hang guard: far below the 300 s grace a second signal cuts short)."""
    proc = _start(zygote, sqlite_uri, record, "stuck", grace=grace)
    read_until(proc, "STUCK")
    started = time.monotonic()
    for index in range(signals):
        if index:
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=EXIT_GUARD_S)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert time.monotonic() - started < EXIT_GUARD_S


def test_no_step_boundary_within_the_grace_period_exits_without_a_new_final(
    sqlite_uri: str, tmp_path: Path, zygote: Zygote
) -> None:
    record = tmp_path / "record.jsonl"
    _sigterm_a_stuck_trainer(zygote, sqlite_uri, record, grace=2.0, signals=1)
    store = MlflowStore(sqlite_uri)
    versions = store.list_versions("flat")
    assert versions and all(v.category != "final" for v in versions)  # no new (possibly torn) final checkpoint
    for info in versions:  # the saves taken at step boundaries before the signal finished and are intact
        state = store.load_version(info)
        assert _records(record)[state.step] == _digest(state)
    run_id = store.list_versions("flat")[-1].run_id
    assert store.client.get_run(run_id).info.status == "KILLED"  # never FINISHED with its final missing


def test_a_second_signal_exits_promptly(sqlite_uri: str, tmp_path: Path, zygote: Zygote) -> None:
    _sigterm_a_stuck_trainer(zygote, sqlite_uri, tmp_path / "record.jsonl", grace=300.0, signals=2)
    store = MlflowStore(sqlite_uri)
    assert store.client.get_run(store.list_versions("flat")[-1].run_id).info.status == "KILLED"
