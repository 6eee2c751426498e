"""Exact resume: `run --until-step N` killed with SIGKILL at random moments and restarted ends bitwise where a
run that was never interrupted ends, and its episode store holds the same episodes.

The reference is a separate, uninterrupted run in its own store: the comparison never uses the code's own
idea of what the state should be. The kill schedule is random (printed, and reproducible with
MLFLOW_PERSIST_TEST_SEED); kills land during training, between and during cuts, and during start-up. The runs
are forked from a pre-imported Python (tests/zygote.py). MLFLOW_PERSIST_EXACT_RESUME_ROUNDS (1 in CI, times
MLFLOW_PERSIST_SOAK_FACTOR) interrupted runs, each with its own kill schedule, are compared with the reference.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from zygote import Zygote

pytestmark = [pytest.mark.slow, pytest.mark.soak]

N = 600
SEED = 5
MODELS = ("dqn", "cnn", "cob_rl", "extrema")
HORIZON = 4


def _env() -> dict[str, str]:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _command(workdir: Path, progress: bool = False) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mlflow_persist.cli",
        "run",
        "--until-step",
        str(N),
        "--seed",
        str(SEED),
        "--progress" if progress else "--no-progress",
        "--tracking-uri",
        f"sqlite:///{workdir}/mlflow.db",
    ]


def _run_to_end(zygote: Zygote, workdir: Path) -> str:
    result = zygote.run(_command(workdir), cwd=workdir, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Traceback" not in result.stderr, result.stderr[-4000:]
    return result.stderr


def _run_and_kill(zygote: Zygote, workdir: Path, target: int | None, delay: float) -> tuple[bool, str]:
    """Start a run and SIGKILL it `delay` seconds after its progress passed bar `target` (None: `delay`
    seconds after start, during start-up and restore); False when it finished before the kill."""
    proc = zygote.popen(
        _command(workdir, progress=True),
        cwd=workdir,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    moment = f"{delay:.2f} s after start"
    if target is not None:
        moment = f"{delay:.2f} s after bar {target}"
        deadline = time.monotonic() + 300
        while (
            not any(line.startswith(f"step {target} |") for line in list(lines))
            and proc.poll() is None
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
    time.sleep(delay)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    print(f"  kill {moment}: {'killed' if killed else 'had finished'}")
    return killed, "".join(lines)


def _finals(workdir: Path) -> dict[str, Any]:
    from mlflow_persist._store.mlflow_store import MlflowStore

    store = MlflowStore(f"sqlite:///{workdir}/mlflow.db", "mlflow-persist", None)
    out = {}
    for name in MODELS:
        final = [v for v in store.list_versions(name) if v.category == "final"][-1]
        out[name] = store.load_version(final)
    return out


def _episodes(workdir: Path) -> dict[str, tuple[float, str]]:
    """Per episode id, the newest record's reward and action (a re-recorded id replaces the older record)."""
    import mlflow

    from mlflow_persist.episodes import EpisodeStore

    client = mlflow.MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    experiment = client.get_experiment_by_name("mlflow-persist")
    run = next(
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("mlflow_persist.run_key") == "trading-system"
    )
    index = EpisodeStore(client, run.info.run_id).index.sort_values(["flush_seq", "row"])
    newest = index.drop_duplicates("episode_id", keep="last")
    return {row.episode_id: (row.reward, row.action) for row in newest.itertuples()}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def test_sigkilled_and_resumed_run_ends_bitwise_where_an_uninterrupted_run_ends(
    tmp_path: Path, zygote: Zygote, soak_count: Callable[[str, int], int]
) -> None:
    test_seed = int(os.environ.get("MLFLOW_PERSIST_TEST_SEED", time.time_ns() % 100_000))
    rng = random.Random(test_seed)
    print(f"kill schedule seed {test_seed} (MLFLOW_PERSIST_TEST_SEED)")
    reference = tmp_path / "reference"
    reference.mkdir()
    _run_to_end(zygote, reference)
    expected, episodes_expected = _finals(reference), _episodes(reference)
    assert len(episodes_expected) == N - HORIZON
    for round_ in range(soak_count("MLFLOW_PERSIST_EXACT_RESUME_ROUNDS", 1)):
        interrupted = tmp_path / f"interrupted-{round_}"
        interrupted.mkdir()
        _interrupt_and_resume(zygote, interrupted, rng)
        actual = _finals(interrupted)
        for name in MODELS:
            assert actual[name].step == expected[name].step == N - HORIZON, name
            assert _same(dict(actual[name].model_state), dict(expected[name].model_state)), f"{name} weights differ"
            assert _same(actual[name].optimizer_state, expected[name].optimizer_state), f"{name} optimizer differs"
            assert _same(actual[name].extra_state, expected[name].extra_state), f"{name} extra state differs"
        assert _episodes(interrupted) == episodes_expected  # no bar recorded twice, none lost, the same outcomes


def _interrupt_and_resume(zygote: Zygote, interrupted: Path, rng: random.Random) -> None:
    # Three kills at increasing bars (the progress lines come every 100 bars), each up to ~90 bars later;
    # sometimes one of them lands in start-up instead.
    targets: list[int | None] = sorted(rng.sample(range(100, N, 100), 3))  # type: ignore[arg-type]
    if rng.random() < 0.3:
        targets.insert(rng.randrange(3), None)
    kills = 0
    for target in targets:
        killed, _ = _run_and_kill(
            zygote, interrupted, target, rng.uniform(0.3, 3.0) if target is None else rng.uniform(0.0, 2.5)
        )
        kills += killed and target is not None
    last = _run_to_end(zygote, interrupted)
    assert kills >= 2, f"only {kills} kill(s) landed during training"
    assert "resumed the system checkpoint" in last or "restored system checkpoint" in last
