"""Two ranks under torchrun (CPU, gloo), sharded with FSDP2 (every rank writes and reads its own shards) or
replicated with DDP: a run killed with SIGKILL (the launcher and both ranks at once) and resumed ends bit for bit
where an uninterrupted run ends, also when a damaged newest version makes it fall back to the one before."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import pytest
import torch

from mlflow_persist import Persistence
from mlflow_persist.errors import ConfigError
from mlflow_persist.integrations.sharded import ShardChannel, track_sharded
from mlflow_persist.testing import MemoryStore

from .support import env, lines_with, registry

SCRIPT = Path(__file__).with_name("sharded_proc.py")
NAME = "fsdp_net"
STEP_TAG, CATEGORY_TAG = "mlflow_persist.step", "mlflow_persist.category"
TOTAL = 21


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(SCRIPT), *args]


def _run(*args: str, cwd: Path) -> str:
    result = subprocess.run(_command(*args), cwd=cwd, env=env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result.stdout


def _run_and_kill(*args: str, cwd: Path, after_step: int) -> str:
    """Start the launcher in its own process group; once both ranks finished `after_step`, SIGKILL both ranks
    and the launcher at once (as a lost machine)."""
    proc = subprocess.Popen(
        _command(*args), cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    deadline = time.monotonic() + 240
    while len({r["rank"] for r in lines_with("".join(lines), "STEP") if r["step"] >= after_step}) < 2:
        assert proc.poll() is None, f"ended before step {after_step}:\n{''.join(lines)[-5000:]}"
        assert time.monotonic() < deadline, f"step {after_step} never came:\n{''.join(lines)[-5000:]}"
        time.sleep(0.02)
    for rank in _by_rank("".join(lines), "PID").values():  # the launcher starts each rank in its own session
        os.kill(rank["pid"], signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    return "".join(lines)


def _by_rank(output: str, marker: str) -> dict[int, dict]:
    return {record["rank"]: record for record in lines_with(output, marker)}


def _newest_registered_step(uri: str) -> int:
    """The step of the newest registered version (0 when a kill came before the first registration)."""
    found = mlflow.MlflowClient(tracking_uri=uri).search_model_versions(f"name='{NAME}'")
    newest = max(found, key=lambda version: int(version.version), default=None)
    return int(newest.tags[STEP_TAG]) if newest is not None else 0


def _checkpoint_dirs(root: Path) -> list[Path]:
    return [p for p in root.rglob("checkpoints/fsdp_net-*") if p.is_dir()]


def _version_dir(uri: str, root: Path, version: int) -> Path:
    source = mlflow.MlflowClient(tracking_uri=uri).get_model_version(NAME, str(version)).source
    return next(d for d in _checkpoint_dirs(root) if source.endswith(f"/checkpoints/{d.name}"))


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["fsdp", "ddp"])
def test_a_2_rank_run_killed_twice_and_damaged_resumes_and_ends_bitwise_where_an_uninterrupted_run_ends(
    tmp_path: Path, parallel: str
) -> None:
    """FSDP2 (sharded: every rank writes and reads its own shards) and DDP (replicated: rank 0 saves, the restore
    reaches both ranks by broadcast), each killed twice and then given a damaged newest version."""
    mode = ("--ddp",) if parallel == "ddp" else ()
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    reference_dir.mkdir()
    resumed_dir.mkdir()
    reference = _by_rank(
        _run(f"sqlite:///{reference_dir}/mlflow.db", str(TOTAL), "--plain", *mode, cwd=reference_dir), "DONE"
    )

    seed = random.randrange(2**32)
    rng = random.Random(seed)
    uri = f"sqlite:///{resumed_dir}/mlflow.db"
    restored_steps, newest_at_kill = [], []
    for kill_range in ((4, 9), (12, 17)):
        after_step = rng.randint(*kill_range)
        output = _run_and_kill(uri, str(TOTAL), "--slow", *mode, cwd=resumed_dir, after_step=after_step)
        assert "DONE" not in output, f"seed {seed}: the run finished before the kill after step {after_step}"
        restored_steps.append(_by_rank(output, "RESTORED")[0]["step"])
        newest_at_kill.append(_newest_registered_step(uri))  # from the registry, before the next start reads it
    # each start resumed at the newest step the registry held when the run before it was killed
    assert restored_steps == [0, newest_at_kill[0]], f"seed {seed}: {restored_steps}, registry {newest_at_kill}"
    assert newest_at_kill[0] <= newest_at_kill[1] < TOTAL and newest_at_kill[1] > 0, f"seed {seed}: {newest_at_kill}"
    # the newest version is damaged (FSDP: rank 1's shard file): rank 0 must notice and fall back to the one before
    versions = registry(uri, NAME)["versions"]
    damaged = max(versions)
    newest_dir = _version_dir(uri, resumed_dir, damaged)
    _flip_a_byte(newest_dir / "shards" / "__1_0.distcp" if parallel == "fsdp" else newest_dir / "checkpoint.pt")
    output = _run(uri, str(TOTAL), *mode, cwd=resumed_dir)
    restored = _by_rank(output, "RESTORED")
    assert restored[0]["version"] == restored[1]["version"] == damaged - 1, f"seed {seed}: {restored}"
    assert restored[0]["step"] == restored[1]["step"] == int(versions[damaged - 1][STEP_TAG]), f"seed {seed}"
    assert registry(uri, NAME)["versions"][damaged].get("mlflow_persist.corrupt") == "true"

    done = _by_rank(output, "DONE")
    assert done[0]["weights"] == reference[0]["weights"], f"seed {seed}: the weights differ from the uninterrupted run"
    assert done[0]["optimizer"] == reference[0]["optimizer"], f"seed {seed}: the AdamW state differs"
    assert done[0]["lr"] == done[1]["lr"] == reference[0]["lr"]  # the scheduler reached rank 1 too
    saved = registry(uri, NAME)
    assert len(saved["runs"]) == 1  # one run across the three starts
    if parallel == "ddp":
        return
    assert all(done[r]["held"] * 2 == done[r]["total"] for r in (0, 1))  # each rank held half the parameters
    for directory in _checkpoint_dirs(resumed_dir):
        shards = sorted(p.name for p in (directory / "shards").iterdir())
        assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"], directory  # each rank wrote its own file


def test_a_store_the_ranks_cannot_write_as_files_is_refused_before_anything_is_tracked() -> None:
    persistence = Persistence(store=MemoryStore(), install_signal_handlers=False)
    model = torch.nn.Linear(3, 2)
    try:
        with pytest.raises(ConfigError, match="sharded checkpoints need the run's artifacts as files"):
            track_sharded(persistence, ShardChannel(), NAME, model, None, None, None, None)
        assert persistence.handles == {}  # nothing tracked, so close() owes no final checkpoint
    finally:
        persistence.close()
