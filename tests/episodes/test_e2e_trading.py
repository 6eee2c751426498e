"""End to end through the real CLI: `mlflow-persist run` records every decision, `replay` reproduces them.

One temp-dir sqlite store: `run --steps 300`, replay 25 random episodes and one by id, a SIGTERM'd
second run that resumes and still stores its episodes, then a damaged part file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from zygote import Zygote

# The CLI processes are forked from a pre-imported Python (tests/zygote.py).
pytestmark = pytest.mark.slow
CLI = [sys.executable, "-c", "from mlflow_persist.cli.main import main; main()"]
RUN_KEY = "trading-system"


def _env() -> dict[str, str]:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _uri(workdir: Path) -> str:
    return f"sqlite:///{workdir}/mlflow.db"


def _cli(zygote: Zygote, workdir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return zygote.run(
        [*CLI, *args, "--tracking-uri", _uri(workdir)],
        cwd=workdir,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _replay(zygote: Zygote, workdir: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    result = _cli(zygote, workdir, "replay", *args, "--json")
    assert "Traceback" not in result.stderr, result.stderr
    report = json.loads(result.stdout)
    assert report.pop("schema_version") == 1, report
    return result.returncode, report, result.stderr


def _store(workdir: Path) -> Any:
    from mlflow import MlflowClient

    from mlflow_persist.episodes import EpisodeStore
    from mlflow_persist.episodes.cli import find_episodes_run

    client = MlflowClient(tracking_uri=_uri(workdir), registry_uri=_uri(workdir))
    return EpisodeStore(client, find_episodes_run(client))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, template_db: Path, zygote: Zygote) -> Path:
    path = tmp_path_factory.mktemp("episodes-e2e")
    shutil.copy(template_db, path / "mlflow.db")
    # Cuts every 50 bars and a periodic window of one: serving switches to versions that retention deletes later.
    (path / "persist.toml").write_text("periodic_every_steps = 50\nkeep_periodic = 1\n", encoding="utf-8")
    result = _cli(
        zygote, path, "run", "--steps", "300", "--seed", "2", "--no-progress", "--config", str(path / "persist.toml")
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    return path


def test_run_records_every_trained_decision_in_the_trading_system_run(workdir: Path) -> None:
    store = _store(workdir)
    run = store.client.get_run(store.run_id)
    assert run.info.run_name == RUN_KEY and run.info.status == "FINISHED"
    assert run.data.tags["mlflow_persist.run_key"] == RUN_KEY
    assert run.inputs.dataset_inputs, "no mlflow.log_input lineage on the trading-system run"
    assert len(store) == 300 - 4  # the last HORIZON decisions are not trained, so not recorded
    versions = store.index["checkpoint_versions"].map(json.loads)
    assert any(v.get("dqn") is not None for v in versions)  # decisions by registered versions, not only initial
    episode = store.get(store.index["episode_id"].iloc[-1])
    assert set(episode.model_fingerprints) == {"dqn", "cnn", "cob_rl", "extrema"}
    assert {"bars", "cob", "draws"} <= set(episode.frames)


def test_replay_sample_of_25_reproduces_all(workdir: Path, zygote: Zygote) -> None:
    code, report, stderr = _replay(zygote, workdir, "--sample", "25")
    assert report == {"replayed": 25, "reproduced": 25, "failed": []}, stderr
    assert code == 0


def test_replay_one_episode_by_id_whose_version_retention_deleted(workdir: Path, zygote: Zygote) -> None:
    store = _store(workdir)
    registered = {
        (v.name, int(v.version))
        for name in ("dqn", "cnn", "cob_rl", "extrema")
        for v in store.client.search_model_versions(f"name='{name}'")
    }
    deleted = [
        eid
        for eid, versions in zip(
            store.index["episode_id"], store.index["checkpoint_versions"].map(json.loads), strict=True
        )
        if any(v is not None and (name, v) not in registered for name, v in versions.items())
    ]
    assert deleted, "retention deleted no version that decided; nothing exercises the kept weights"
    code, report, stderr = _replay(zygote, workdir, "--episode", str(deleted[len(deleted) // 2]))
    assert (code, report) == (0, {"replayed": 1, "reproduced": 1, "failed": []}), stderr


class _Background:
    """A `run` subprocess whose stderr is read on a thread, so the test can wait for a progress line."""

    def __init__(self, zygote: Zygote, workdir: Path, *args: str) -> None:
        self.proc = zygote.popen(
            [*CLI, "run", "--tracking-uri", _uri(workdir), *args],
            cwd=workdir,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        self.lines.extend(self.proc.stderr)

    def wait_for(self, text: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if any(text in line for line in self.lines):
                return
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never appeared; stderr:\n{''.join(self.lines)}")


def test_sigterm_stores_the_buffered_episodes_and_finishes_the_run(workdir: Path, zygote: Zygote) -> None:
    before = len(_store(workdir))
    run = _Background(zygote, workdir, "--minutes", "10", "--seed", "2")
    run.wait_for("step 400 |")  # 100 bars after the 300 the first run left off at
    run.proc.send_signal(signal.SIGTERM)
    code = run.proc.wait(timeout=300)
    run._reader.join(timeout=10)
    assert code == 0, "".join(run.lines)
    store = _store(workdir)
    assert len(store) >= before + 100 - 4  # fewer than flush_rows: all of them came from the close() flush
    assert store.client.get_run(store.run_id).info.status == "FINISHED"


def test_damaged_part_file_is_named_and_the_other_episodes_still_replay(workdir: Path, zygote: Zygote) -> None:
    store = _store(workdir)
    index = store.index
    counts = index.groupby("file")["episode_id"].count()
    damaged = str(counts[counts >= 2].index[0])
    bad = index.loc[index["file"] == damaged, "episode_id"].tolist()[:2]
    others = index[index["file"] != damaged]
    good = [str(e) for e in others["episode_id"].iloc[[0, len(others) // 2, -1]]]  # -1: after the SIGTERM restart
    path = Path(store.client.get_run(store.run_id).info.artifact_uri.removeprefix("file://")) / damaged
    original = path.read_bytes()
    try:
        corrupt = bytearray(original)
        corrupt[len(corrupt) // 2] ^= 0xFF
        path.write_bytes(bytes(corrupt))
        args = [arg for eid in [*bad, *good] for arg in ("--episode", eid)]
        code, report, stderr = _replay(zygote, workdir, *args)
    finally:
        path.write_bytes(original)
    assert code != 0
    assert report["replayed"] == 5 and report["reproduced"] == 3, report
    assert sorted(f["episode_id"] for f in report["failed"]) == sorted(bad)
    for failure in report["failed"]:
        assert damaged in failure["reason"] and failure["episode_id"] in failure["reason"], failure
