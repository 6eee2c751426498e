"""Simulated power loss while a trainer saves: the MLflow sqlite store and its artifacts live on LazyFS
(lazyfs.py), a trainer is SIGKILLed at a random moment and the power is cut right after, so only what was
fsynced survives. After each cut a fresh process checks that every registered version verifies and loads,
that every save the trainer saw acknowledged is still registered with the state it handed over (an
independent record, fsynced outside the mount), that no staging directory is a version's source, and that
`models:/net/latest` loads. The next trial resumes from what survived.

Trainers and checkers are forked from one server process that imported torch and MLflow once
(forkserver.py); a trial costs a fork, not an interpreter start. A checker does not load again a version an
earlier checker verified when neither its registry record nor any of its files changed since (same inode,
size, mode and mtime: forkserver.version_signature), so a trial's check costs the versions that are new or
touched, not all of them; the last trial checks every version in full.

MLFLOW_PERSIST_POWERLOSS_TRIALS (default 32, times MLFLOW_PERSIST_SOAK_FACTOR) and MLFLOW_PERSIST_POWERLOSS_SEED
(default: random, printed) make a run longer or repeatable.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mlflow_persist._format.atomic import fsync_path
from powerloss.lazyfs import LazyMount, log_tail

FORKSERVER = Path(__file__).with_name("forkserver.py")


class ForkServer:
    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.process: subprocess.Popen[str] | None = None
        self.hello: dict[str, Any] | None = None

    def start(self) -> ForkServer:
        repo = Path(__file__).resolve().parents[2]
        env = {
            **os.environ,
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])),
        }
        with open(self.log_path, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(FORKSERVER)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                bufsize=1,
                env=env,
                cwd=str(self.log_path.parent),
            )
        return self

    def _reply(self) -> dict[str, Any]:
        assert self.process is not None and self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server died: {self.log_tail()}")
        return json.loads(line)

    def wait_ready(self) -> dict[str, Any]:
        if self.hello is None:
            self.hello = self._reply()
        return self.hello

    def call(self, **cmd: Any) -> dict[str, Any]:
        self.wait_ready()
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps(cmd) + "\n")
        self.process.stdin.flush()
        return self._reply()

    def log_tail(self, chars: int = 4000) -> str:
        return log_tail(self.log_path, chars)

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            if self.process.poll() is None and self.process.stdin is not None:
                self.process.stdin.write(json.dumps({"op": "exit"}) + "\n")
                self.process.stdin.close()
            self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None


def read_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def wait_for_ready(progress: Path, trial: int, pid: int, timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for record in read_records(progress):
            if record["trial"] == trial and record["event"] == "ready":
                return record
        time.sleep(0.02)
    return None


@pytest.fixture(scope="module")
def forkserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForkServer]:
    """Started first: it imports torch and MLflow while the test process makes the template store."""
    server = ForkServer(tmp_path_factory.mktemp("forkserver") / "forkserver.log").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def store_on_lazyfs(forkserver: ForkServer, lazyfs: LazyMount, request: pytest.FixtureRequest) -> str:
    """A fresh, migrated MLflow sqlite store on the LazyFS mount, made durable; returns its tracking URI."""
    template = request.getfixturevalue("template_db")  # ~9 s once per session, made outside the mount
    db = lazyfs.mountpoint / "mlflow.db"
    shutil.copyfile(template, db)
    fsync_path(db)
    fsync_path(lazyfs.mountpoint)
    hello = forkserver.wait_ready()
    assert hello.get("threads") == 1, f"the fork server must not run threads before forking: {hello}"
    return f"sqlite:///{db}"


def verify(
    server: ForkServer,
    uri: str,
    acks: Path,
    work: Path,
    trial: int,
    already_lost: list[dict[str, Any]],
    full: bool = True,
) -> dict[str, Any]:
    """Fork a checker (forkserver.checker). Unless `full`, versions verified by an earlier checker of this
    `work` directory whose record and files did not change since are not loaded again."""
    reply = server.call(
        op="verify",
        uri=uri,
        acks=str(acks),
        out=str(work / f"verify-{trial}.json"),
        log=str(work / f"verify-{trial}.log"),
        already_lost=already_lost,
        cache=str(work / "verified.json"),
        full=full,
    )
    result = reply["result"]
    assert result is not None, (
        f"trial {trial}: the checker crashed:\n" + (work / f"verify-{trial}.log").read_text(errors="replace")[-4000:]
    )
    return result


@pytest.mark.slow
def test_checkpoint_acknowledged_right_before_a_power_cut_survives(
    lazyfs: LazyMount, forkserver: ForkServer, store_on_lazyfs: str, tmp_path: Path
) -> None:
    """The sharpest moment, made deterministic: the trainer SIGKILLs itself as soon as its save is
    acknowledged, and the power goes right after. Three rounds: the first save of a run (it creates the
    run's artifact directories) and later saves (the registration is the store's last transaction)."""
    work = tmp_path / "record"
    work.mkdir()
    acks = work / "acks.jsonl"
    lost: list[dict[str, Any]] = []
    failing: list[dict[str, Any]] = []
    for trial in range(3):
        pid = forkserver.call(
            op="train",
            mode="ack_then_die",
            uri=store_on_lazyfs,
            acks=str(acks),
            progress=str(work / "progress.jsonl"),
            log=str(work / f"trainer-{trial}.log"),
            seed=trial,
            trial=trial,
        )["pid"]
        forkserver.call(op="wait", pid=pid)
        lazyfs.cut()
        hot_journal = (lazyfs.mountpoint / "mlflow.db-journal").exists()  # sqlite will roll its transaction back
        assert any(a["trial"] == trial for a in read_records(acks)), (
            f"round {trial}: no save was acknowledged:\n" + (work / f"trainer-{trial}.log").read_text()[-4000:]
        )
        result = verify(forkserver, store_on_lazyfs, acks, work, trial, lost)
        lost += [
            {
                **item,
                "round": trial,
                "registered_versions_after_cut": result["max_version"],
                "hot_sqlite_journal_after_cut": hot_journal,
            }
            for item in result["lost"]
        ]
        failing += [{**item, "round": trial} for item in result["failing"]]
    assert not lost and not failing, (
        "acknowledged checkpoints did not survive a power cut right after their acknowledgement:\n"
        + json.dumps({"lost": lost, "failing": failing}, indent=1)[:6000]
    )


@pytest.mark.slow
@pytest.mark.soak
@pytest.mark.timeout(900)
def test_power_cuts_while_saving_lose_no_acknowledged_checkpoint(
    lazyfs: LazyMount,
    forkserver: ForkServer,
    store_on_lazyfs: str,
    tmp_path: Path,
    soak_count: Callable[[str, int], int],
) -> None:
    trials = soak_count("MLFLOW_PERSIST_POWERLOSS_TRIALS", 32)
    began = time.monotonic()
    seed = int(os.environ.get("MLFLOW_PERSIST_POWERLOSS_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    uri, server = store_on_lazyfs, forkserver
    work = tmp_path / "record"  # the independent record and the logs: normal disk, outside the mount
    work.mkdir()
    acks, progress = work / "acks.jsonl", work / "progress.jsonl"
    trainer_pid: int | None = None
    try:
        lost: list[dict[str, Any]] = []
        failing: dict[int, dict[str, Any]] = {}  # version -> its first failure
        staging: list[dict[str, Any]] = []
        latest_errors: list[dict[str, Any]] = []
        restore_problems: list[str] = []
        early_kills = hot_journals = 0
        startup_s = 1.0
        newest_ack_before: dict[str, Any] | None = None
        result: dict[str, Any] = {}
        loaded = reused = 0
        for trial in range(trials):
            trainer_pid = server.call(
                op="train",
                uri=uri,
                acks=str(acks),
                progress=str(progress),
                log=str(work / f"trainer-{trial}.log"),
                seed=seed + trial,
                trial=trial,
            )["pid"]
            forked = time.monotonic()
            if trial % 5 == 4:  # now and then during start-up: opening the run, restore, sweeping leftovers
                early_kills += 1
                time.sleep(rng.uniform(0.0, startup_s))
                ready = None
            else:
                ready = wait_for_ready(progress, trial, trainer_pid, timeout=60)
                assert ready is not None, (
                    f"trial {trial}: the trainer never got ready:\n"
                    + (work / f"trainer-{trial}.log").read_text(errors="replace")[-4000:]
                )
                startup_s = time.monotonic() - forked
                time.sleep(rng.uniform(0.0, 1.5))
            server.call(op="kill", pid=trainer_pid)
            trainer_pid = None
            lazyfs.cut()  # nothing writes after the kill; the filesystem now holds only what was durable
            hot_journals += (lazyfs.mountpoint / "mlflow.db-journal").exists()

            if ready is not None and newest_ack_before is not None:
                restored = ready["restored"]
                if restored is None or restored < newest_ack_before["version"]:
                    restore_problems.append(
                        f"trial {trial} restored v{restored}, older than the acknowledged "
                        f"v{newest_ack_before['version']}"
                    )
                elif (
                    restored == newest_ack_before["version"] and ready["restored_digest"] != newest_ack_before["digest"]
                ):
                    restore_problems.append(
                        f"trial {trial} restored v{restored} with a different state than was acknowledged"
                    )

            result = verify(server, uri, acks, work, trial, lost, full=trial == trials - 1)
            loaded, reused = loaded + result["loaded"], reused + result["reused"]
            lost += [
                {**item, "detected_after_trial": trial, "registered_versions_after_cut": result["max_version"]}
                for item in result["lost"]
            ]
            for item in result["failing"]:
                failing.setdefault(item["version"], {**item, "first_failed_after_trial": trial})
            staging += [{**s, "trial": trial} for s in result["staging_sources"]]
            if "error" in result["latest"]:
                latest_errors.append({"trial": trial, **result["latest"]})
            gone = {(a["trial"], a["version"]) for a in lost}
            remaining = [a for a in read_records(acks) if (a["trial"], a["version"]) not in gone]
            newest_ack_before = max(remaining, key=lambda a: a["version"], default=None)

        stats = lazyfs.stats()
        acknowledged = len(read_records(acks))
        fsyncs = stats["fsync"] + stats["fdatasync"] + stats["fsyncdir"] + stats["fsync_on_dir"]
        print(
            f"\npower-loss report (seed {seed}): trials {trials} (killed during start-up: {early_kills}), "
            f"acknowledged checkpoints {acknowledged}, lost {len(lost)}, versions that failed to load "
            f"{len(failing)}, staging sources {len(staging)}, latest errors {len(latest_errors)}, "
            f"restore problems {len(restore_problems)}, registered versions at the end {result.get('versions')}, "
            f"fsyncs seen {fsyncs} (fsync {stats['fsync']}, fdatasync {stats['fdatasync']}, "
            f"fsyncdir {stats['fsyncdir']}), cuts {stats['cuts']}, reverted files {stats['reverted_files']}, "
            f"reverted dirs {stats['reverted_dirs']}, cuts that left a hot sqlite journal {hot_journals}, "
            f"versions loaded by the checkers {loaded} (unchanged since verified, not loaded again: {reused}), "
            f"wall {time.monotonic() - began:.1f} s"
        )
        for item in lost:
            print("LOST", json.dumps(item))
        for item in list(failing.values())[:20]:
            print("FAILING", json.dumps(item))
        problems = {
            "lost": lost,
            "failing": list(failing.values())[:10],
            "staging sources": staging[:10],
            "latest": latest_errors[:10],
            "restore": restore_problems[:10],
        }
        assert acknowledged >= trials, f"too few acknowledged saves to mean anything ({acknowledged})"
        assert not any(problems.values()), f"seed {seed}: " + json.dumps(problems, indent=1)[:6000]
    finally:
        if trainer_pid is not None:
            try:
                server.call(op="kill", pid=trainer_pid)
            except Exception:  # noqa: BLE001 - the server may be the thing that failed
                pass
