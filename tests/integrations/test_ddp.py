"""Two processes under torchrun (CPU, gloo): rank 0 alone writes and registers, restore puts the same
checkpoint into every rank, and a failing store or an unreachable server never leaves a rank waiting."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mlflow_persist as mp
from mlflow_persist.integrations.rank_zero_watch import EXIT_RANK_ZERO_LOST

from .support import DigestLog, env, lines_with, registry

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).with_name("ddp_proc.py")


def _torchrun(*args: str, cwd: Path, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(SCRIPT), *args],
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _by_rank(output: str, marker: str) -> dict[int, dict]:
    return {record["rank"]: record for record in lines_with(output, marker)}


def test_rank_zero_writes_and_every_rank_restores_the_same_checkpoint(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    log = DigestLog(tmp_path / "digests.jsonl")
    first = _torchrun(uri, str(log.path), "14", cwd=tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    done = _by_rank(first.stdout, "DONE")
    assert set(done) == {0, 1} and done[0]["digest"] == done[1]["digest"]  # DDP kept the ranks equal
    assert done[1]["mlflow_imported"] is False  # rank 1 never even imported MLflow, let alone the store
    saved = registry(uri, "ddp_net")
    assert len(saved["runs"]) == 1 and {t["mlflow_persist.category"] for t in saved["versions"].values()} >= {
        "periodic",
        "final",
    }

    second = _torchrun(uri, str(log.path), "3", cwd=tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    restored = _by_rank(second.stdout, "RESTORED")
    newest = max(saved["versions"])
    assert {r["version"] for r in restored.values()} == {newest}
    step = restored[0]["step"]
    assert step == 14 and restored[1]["step"] == step
    # both ranks hold exactly the state rank 0 recorded when it saved that step (its own independent record)
    assert restored[0]["digest"] == restored[1]["digest"] == log.digest_at(step)
    assert restored[1]["mlflow_imported"] is False
    # the tensors went by dist.broadcast: what was pickled is the state's outline, not the state
    assert restored[0]["state_bytes"] > 100_000 and restored[0]["pickled_bytes"] < 8_000, restored[0]
    assert len(registry(uri, "ddp_net")["runs"]) == 1


def test_failing_saves_on_rank_zero_never_stop_or_block_the_other_rank(tmp_path: Path) -> None:
    result = _torchrun(
        f"sqlite:///{tmp_path}/unused.db",
        str(tmp_path / "digests.jsonl"),
        "12",
        "--fail-saves",
        cwd=tmp_path,
        timeout=180,
    )
    done = _by_rank(result.stdout, "DONE")
    assert set(done) == {0, 1}, result.stdout[-3000:] + result.stderr[-3000:]
    assert done[0]["step"] == done[1]["step"] == 12
    assert done[0]["digest"] == done[1]["digest"]
    assert "could never be written" in done[0]["lost"] and done[1]["lost"] is None


def test_an_unreachable_server_stops_every_rank_with_the_same_error(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = _torchrun(f"http://127.0.0.1:{port}", str(tmp_path / "digests.jsonl"), "3", cwd=tmp_path, timeout=300)
    assert result.returncode != 0
    text = result.stdout + result.stderr
    assert "DONE" not in text
    assert "Rank 0 could not" in text, text[-3000:]


@pytest.mark.parametrize("signalled_rank", [1, 0])
def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step_with_a_final_checkpoint(
    tmp_path: Path, signalled_rank: int
) -> None:
    """SIGTERM reaches one rank only (as a scheduler may deliver it): the other would wait forever in its next
    collective, unless the stop is agreed at the step boundary."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(SCRIPT)]
    proc = subprocess.Popen(
        [*command, uri, str(tmp_path / "digests.jsonl"), "400", "--stop-on-signals"],
        cwd=tmp_path, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    pids: dict[int, int] = {}
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("PID "):
            record = json.loads(line[4:])
            pids[record["rank"]] = record["pid"]
        if line.startswith("STEP ") and json.loads(line[5:])["step"] >= 6 and len(pids) == 2:
            os.kill(pids[signalled_rank], signal.SIGTERM)
            break
    try:
        rest, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"a rank did not stop within 120 s of SIGTERM to rank {signalled_rank}:\n{''.join(lines)}")
    output = "".join(lines) + rest
    stopped = _by_rank(output, "STOPPED")
    assert set(stopped) == {0, 1}, output[-3000:]
    assert stopped[0]["step"] == stopped[1]["step"] and 6 <= stopped[0]["step"] < 400
    final = [
        int(tags["mlflow_persist.step"])
        for tags in registry(uri, "ddp_net")["versions"].values()
        if tags["mlflow_persist.category"] == "final"
    ]
    assert final == [stopped[0]["step"]]  # rank 0 took the final checkpoint at the agreed step


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("loss", ["killed", "hung"])
def test_a_lost_rank_zero_ends_the_other_rank_within_its_timeout_and_leaves_no_torn_version(
    tmp_path: Path, loss: str
) -> None:
    """Rank 0 is SIGKILLed, or stopped with SIGSTOP (a hung machine: its connections stay open and never
    answer). The ranks run without torchrun, whose agent would tear the others down itself: rank 1 must end on
    its own within the 5 s timeout (plus start-up slack), non-zero, and a relaunch resumes from a version that
    verifies."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    port = _free_port()
    ranks = []
    for rank in (0, 1):
        rank_env = {**env(), "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2"}
        rank_env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        arguments = [uri, str(tmp_path / "digests.jsonl"), "100000", "--rank-zero-timeout", "5"]
        ranks.append(
            subprocess.Popen(
                [sys.executable, str(SCRIPT), *arguments],
                cwd=tmp_path,
                env=rank_env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
        )
    rank_zero, rank_one = ranks
    try:
        assert rank_zero.stdout is not None
        for line in rank_zero.stdout:  # rank 0 saves every 4 steps: wait for a few registered versions
            if line.startswith("STEP ") and json.loads(line[5:])["step"] >= 14:
                break
        rank_zero.send_signal(signal.SIGKILL if loss == "killed" else signal.SIGSTOP)
        lost_at = time.monotonic()
        try:
            _, stderr = rank_one.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"rank 1 still runs 60 s after rank 0 was {loss}")
        waited = time.monotonic() - lost_at
    finally:
        for proc in ranks:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
    assert rank_one.returncode != 0, stderr[-3000:]
    if loss == "hung":  # only the watch can end it: the transport waits 30 minutes for a peer that never answers
        assert rank_one.returncode == EXIT_RANK_ZERO_LOST, stderr[-3000:]
        assert "rank 0 has given no sign of life" in stderr or "store stopped answering" in stderr, stderr[-3000:]
        assert waited < 5 + 15, waited
    # nothing torn: every registered version verifies and loads, and a relaunch resumes from the newest
    versions = registry(uri, "ddp_net")["versions"]
    assert versions
    for version in versions:
        assert mp.load_checkpoint(f"models:/ddp_net/{version}", tracking_uri=uri).step > 0
    if loss == "killed":
        return  # the relaunch is checked once, after the hang
    relaunched = _torchrun(uri, str(tmp_path / "digests.jsonl"), "2", cwd=tmp_path)
    assert relaunched.returncode == 0, relaunched.stdout[-3000:] + relaunched.stderr[-3000:]
    restored = _by_rank(relaunched.stdout, "RESTORED")
    assert restored[0]["version"] == restored[1]["version"] == max(versions)
