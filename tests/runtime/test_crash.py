"""Real training processes killed with SIGKILL and stopped with SIGTERM (forked from a pre-imported Python,
tests/zygote.py, so a trial costs a fork rather than 5-7 s of imports)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from store_support import read_until
from zygote import Zygote

import mlflow_persist as mp
from mlflow_persist._store.mlflow_store import MlflowStore

pytestmark = pytest.mark.slow  # subprocesses killed at random moments, several trials

TRAINER = Path(__file__).with_name("trainer_proc.py")


def start_trainer(
    zygote: Zygote, uri: str, name: str, steps: int, sleep: float = 0.01, record: Path | None = None
) -> subprocess.Popen[str]:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
    extra = [str(record)] if record is not None else []
    return zygote.popen(
        [sys.executable, str(TRAINER), uri, name, str(steps), str(sleep), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def trainer_digest(tensors: dict) -> str:
    """The trainer's own digest function (sha256 over sorted keys and tensor bytes)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("trainer_proc", TRAINER)
    trainer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(trainer)  # type: ignore[union-attr]
    return trainer.digest(tensors)


def recorded_states(record: Path) -> dict[int, dict[str, str]]:
    """What the trainer itself recorded of its live state at each step, independent of any checkpoint."""
    rows = [json.loads(line) for line in record.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {row["step"]: row for row in rows}


@pytest.mark.soak
def test_sigkill_at_random_moments_restores_the_last_complete_checkpoint(
    tracking_uri: str, tmp_path: Path, zygote: Zygote, soak_count: Callable[[str, int], int]
) -> None:
    uri = tracking_uri  # both deployments: the embedded store and a real `mlflow server`
    rng = random.Random(7)
    run_id = None
    record = tmp_path / "record.jsonl"
    # tests/reliability kills 50 times; here both deployments, twice each (in CI)
    for trial in range(soak_count("MLFLOW_PERSIST_CRASH_TRIALS", 2)):
        proc = start_trainer(zygote, uri, "dqn", steps=10_000, record=record)
        restored = json.loads(read_until(proc, "RESTORED"))
        current_run = read_until(proc, "RUN")
        run_id = run_id or current_run
        assert current_run == run_id
        if trial > 0:
            assert restored is not None
        read_until(proc, "STEP")
        time.sleep(rng.uniform(0.5, 2.5))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        registered = MlflowStore(uri).list_versions("dqn")
        newest_version, newest_step = (registered[-1].version, registered[-1].step or 0) if registered else (0, 0)
        restart = start_trainer(zygote, uri, "dqn", steps=2)
        restored = json.loads(read_until(restart, "RESTORED"))
        if uri.startswith("sqlite"):
            assert restored["version"] == newest_version
        else:  # checkpoints the kill left in the durable outbox are registered before the restore
            assert restored["version"] >= newest_version
        expected = recorded_states(record)[restored["step"]]  # the live state when that snapshot was taken
        assert restored["step"] >= newest_step
        assert (restored["model"], restored["optimizer"], restored["rng"]) == (
            expected["model"],
            expected["optimizer"],
            expected["rng"],
        )
        assert read_until(restart, "RUN") == run_id
        read_until(restart, "DONE")
        assert restart.wait(timeout=60) == 0, restart.stderr.read() if restart.stderr else ""


def test_sigterm_saves_a_final_checkpoint_and_exits_cleanly(tracking_uri: str, tmp_path: Path, zygote: Zygote) -> None:
    uri = tracking_uri
    record = tmp_path / "record.jsonl"
    proc = start_trainer(zygote, uri, "cnn", steps=100_000, record=record)
    read_until(proc, "RESTORED")
    for _ in range(20):
        last_step = int(read_until(proc, "STEP"))
    proc.send_signal(signal.SIGTERM)
    remaining = proc.communicate(timeout=120)[0]
    steps = [int(line.split()[1]) for line in remaining.splitlines() if line.startswith("STEP")]
    printed = steps[-1] if steps else last_step
    assert proc.returncode == 0
    newest = MlflowStore(uri).list_versions("cnn")[-1]
    # The step() that honoured the signal raised before printing its STEP line: the final holds that step.
    assert newest.category == "final" and newest.step == printed + 1
    state = mp.load_checkpoint("models:/cnn/latest", tracking_uri=uri)
    assert state.category == "final" and state.step == newest.step
    opt_tensors = {f"{i}.{k}": v for i, s in state.optimizer_state["state"].items() for k, v in s.items()}
    expected = recorded_states(record)[newest.step]
    assert (trainer_digest(dict(state.model_state)), trainer_digest(opt_tensors)) == (
        expected["model"],
        expected["optimizer"],
    )
