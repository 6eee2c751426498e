"""Simulated power loss while a trainer saves: the MLflow sqlite store and its artifacts live on LazyFS
(lazyfs.py), which keeps written data only once fsynced and directory entries only once their directory is
fsynced. Each trial makes one cut of one of four kinds (KIND_CYCLE):

- time: the trainer is SIGKILLed at a random moment after it is ready and the power is cut right after;
- startup: the same during its start-up (opening the run, restore, sweeping leftovers);
- torn_write: the power goes in the middle of the n-th write to checkpoint.pt, manifest.json, mlflow.db or
  mlflow.db-journal: that file keeps its unsynced writes up to a random prefix of the write in flight,
  everything else not durable is lost (a cut armed inside the filesystem, exact to the operation);
- store_sync: the power goes right after the n-th fsync of the sqlite store (database, journal, or their
  directory), so the store is rolled back to the state of that fsync: a hot journal takes the database back
  to its last durable commit.

After each cut a fresh process checks that every save the trainer saw acknowledged is still registered with
exactly the state it handed over, unless retention deleted it as it should (a periodic save with at least
`KEEP_PERIODIC` newer periodic versions registered: the window is small, so deletions are cut too) (an independent record, fsynced outside the mount), that every registered
version verifies its digest and loads, that no staging directory is a version's source and that
`models:/net/latest` loads; the next trial restores from what survived and must not get less than the newest
acknowledged save. A summary line gives trials, cuts per kind, acknowledged saves and lost ones.

Seeds: every trial draws all its randomness (kind, moment, file, n, torn length, the trainer's data) from its
own seed, printed with the trial's line and in the failure message. MLFLOW_PERSIST_POWERLOSS_SEED=<seed>
starts the run with that seed (the next seeds follow from it): with MLFLOW_PERSIST_POWERLOSS_TRIALS=1 it
replays that one trial on a fresh store, with the run's first seed and k+1 trials the run up to trial k.
MLFLOW_PERSIST_POWERLOSS_KINDS=torn_write,store_sync (say) makes only those kinds. The timing of the trainer's
threads is not replayed: a time cut lands at the same delay after ready, a startup cut at the same fraction of
the start-up (as the run last measured it, 1 s before any), an armed cut at the same write or fsync (counted
from the trainer's fork), which on the same store state is the same moment of the save protocol.

Trainers and checkers are forked from one server process that imported torch and MLflow once
(forkserver.py); a trial costs a fork, not an interpreter start. The check is incremental: a checker does not
load again a version an earlier checker verified when neither its registry record nor any of its files
changed since (same inode, size, mode and mtime: forkserver.version_signature), so a trial's check costs the
versions that are new or touched, not all of them (which grew quadratically); acknowledged saves are compared
by version, step and digest every trial; the last trial checks every version in full.

MLFLOW_PERSIST_POWERLOSS_TRIALS (default 32, times MLFLOW_PERSIST_SOAK_FACTOR) makes a run longer.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mlflow_persist._format.atomic import fsync_path
from powerloss.forkserver import KEEP_PERIODIC
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


# ---------------------------------------------------------------------------------------------- the trials

#: The kinds of cut, in the order the trials cycle through them (a trial's kind is its seed modulo 7):
#: "time" kills the trainer at a random moment after it is ready, then cuts; "startup" kills it while it
#: starts (opening the run, restore, sweeping leftovers), then cuts; "torn_write" and "store_sync" arm a cut
#: inside the filesystem (lazyfs.Trigger) that fires in the middle of a write of a checkpoint, manifest or
#: sqlite file, or right after an fsync of the sqlite store, the trainer being killed once it fired.
KIND_CYCLE = ("time", "torn_write", "store_sync", "time", "torn_write", "store_sync", "startup")
KINDS = ("time", "torn_write", "store_sync", "startup")
#: The files a torn_write cut may tear, each with the largest n for "the n-th write to it" (counted from the
#: fork of the trainer, start-up included): a trainer here writes about 15 checkpoint.pt and manifest.json
#: (one write each), 250 mlflow.db pages and 700 journal writes a second once ready (about 1 s), so the cut
#: comes within ~1 s of it (as a time cut's does: 0-1.5 s).
TORN_TARGETS = {"checkpoint.pt": 20, "manifest.json": 20, "mlflow.db": 250, "mlflow.db-journal": 600}
#: The metadata store: the sqlite database, its journal or WAL, and the directory holding them (the mount's
#: root). A store_sync cut fires right after the n-th fsync of one of them (1 <= n <= STORE_SYNC_MAX; a
#: trainer here makes about 100 a second, 4-5 per sqlite commit).
STORE_NAMES = ("mlflow.db", "mlflow.db-journal", "mlflow.db-wal", "/")
STORE_SYNC_MAX = 120
ARMED_WAIT_SECONDS = 8.0  # an armed cut that did not fire by then is replaced by a plain cut (counted)


def kind_of(seed: int) -> str:
    return KIND_CYCLE[seed % len(KIND_CYCLE)]


def next_seed(seed: int, kinds: tuple[str, ...] = KINDS) -> int:
    """The seed of the trial after the one of `seed`: drawn from `seed` itself (so a run is replayed from its
    first seed, and the run from trial k on from trial k's seed), of the next kind of KIND_CYCLE in `kinds`."""
    base = random.Random(seed).randrange(1 << 30) // len(KIND_CYCLE) * len(KIND_CYCLE)
    for step in range(1, len(KIND_CYCLE) + 1):
        position = (seed + step) % len(KIND_CYCLE)
        if KIND_CYCLE[position] in kinds:
            return base + position
    raise ValueError(f"no kind of {KIND_CYCLE} in {kinds}")


@dataclass(frozen=True)
class TrialPlan:
    """Everything a trial decides at random, drawn from its seed alone (so the seed replays the trial)."""

    seed: int
    kind: str
    delay: float  # time: seconds after ready; startup: a fraction of the start-up time last measured
    target: str  # torn_write: the file torn
    nth: int  # torn_write: the n-th write to `target`; store_sync: the n-th fsync of the store
    keep: float  # torn_write: the fraction of the write in flight that reaches the disk

    @classmethod
    def of(cls, seed: int) -> TrialPlan:
        rng = random.Random(seed)
        delay = rng.uniform(0.0, 1.5)
        target = rng.choice(sorted(TORN_TARGETS))
        nth = rng.randint(1, TORN_TARGETS[target])
        sync_nth = rng.randint(1, STORE_SYNC_MAX)
        keep = rng.random()
        kind = kind_of(seed)
        if kind == "startup":
            delay /= 1.5
        return cls(seed, kind, delay, target, nth if kind == "torn_write" else sync_nth, keep)

    def describe(self) -> str:
        if self.kind == "time":
            return f"kill {self.delay:.2f} s after ready, then cut"
        if self.kind == "startup":
            return f"kill at {self.delay:.0%} of the start-up, then cut"
        if self.kind == "torn_write":
            return f"cut in write #{self.nth} to {self.target}, {self.keep:.0%} of it written"
        return f"cut right after fsync #{self.nth} of the sqlite store"


def replay_hint(seeds: list[int], trial: int) -> str:
    return (
        f"replay trial {trial} alone on a fresh store: MLFLOW_PERSIST_POWERLOSS_SEED={seeds[trial]} "
        f"MLFLOW_PERSIST_POWERLOSS_TRIALS=1; the run up to it: MLFLOW_PERSIST_POWERLOSS_SEED={seeds[0]} "
        f"MLFLOW_PERSIST_POWERLOSS_TRIALS={trial + 1}"
    )


def find_ready(progress: Path, trial: int) -> dict[str, Any] | None:
    return next((r for r in read_records(progress) if r["trial"] == trial and r["event"] == "ready"), None)


def wait_for_fired(lazyfs: LazyMount, timeout: float) -> dict[str, Any] | None:
    """Wait until the armed cut fired (then return what it did) or `timeout` passed (then None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        fired = lazyfs.fired()
        if fired is not None:
            return fired
        time.sleep(0.05)  # each look is a few requests to the single-threaded filesystem the trainer uses
    return None


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
    """Trials of the kinds of KIND_CYCLE, each from its own seed (printed; MLFLOW_PERSIST_POWERLOSS_SEED
    replays it). After every cut: every acknowledged save is registered with its recorded state, every
    registered version verifies and loads, `latest` loads, and a restore never returns less than the newest
    acknowledged save."""
    trials = soak_count("MLFLOW_PERSIST_POWERLOSS_TRIALS", 32)
    kinds = tuple(k for k in os.environ.get("MLFLOW_PERSIST_POWERLOSS_KINDS", ",".join(KINDS)).split(",") if k)
    assert kinds and set(kinds) <= set(KINDS), f"MLFLOW_PERSIST_POWERLOSS_KINDS: {kinds} (known: {KINDS})"
    began = time.monotonic()
    given = os.environ.get("MLFLOW_PERSIST_POWERLOSS_SEED")
    seeds = [int(given) if given else next_seed(random.randrange(1 << 30), kinds)]
    while len(seeds) < trials:
        seeds.append(next_seed(seeds[-1], kinds))
    print(
        f"\npower-loss: {trials} trials, seeds {seeds[0]} ... (replay the run: MLFLOW_PERSIST_POWERLOSS_SEED={seeds[0]})"
    )
    uri, server = store_on_lazyfs, forkserver
    work = tmp_path / "record"  # the independent record and the logs: normal disk, outside the mount
    work.mkdir()
    acks, progress = work / "acks.jsonl", work / "progress.jsonl"
    trainer_pid: int | None = None
    cuts: Counter[str] = Counter()  # kind -> cuts made (an armed cut that did not fire counts as "time")
    armed: Counter[str] = Counter()  # kind -> armed cuts that fired
    missed: Counter[str] = Counter()  # kind -> armed cuts that did not fire in time
    torn: Counter[str] = Counter()  # "<file>" / "<file> kept": torn writes, and those whose file survived
    synced: Counter[str] = Counter()  # the store file whose fsync a store_sync cut followed
    hot_journals: Counter[str] = Counter()  # kind -> cuts after which sqlite had a hot journal to roll back
    try:
        lost: list[dict[str, Any]] = []
        failing: dict[int, dict[str, Any]] = {}  # version -> its first failure
        staging: list[dict[str, Any]] = []
        latest_errors: list[dict[str, Any]] = []
        restore_problems: list[str] = []
        restores_checked = 0
        startup_s = 1.0
        newest_ack_before: dict[str, Any] | None = None
        result: dict[str, Any] = {}
        loaded = reused = unstated = 0
        spent = {"trainer": 0.0, "check": 0.0}  # seconds: fork to kill, checkers
        checker_parts: Counter[str] = Counter()  # seconds inside the checkers, by part (forkserver.checker)
        counted = lazyfs.stats()
        for trial, seed in enumerate(seeds):
            plan = TrialPlan.of(seed)
            if plan.kind == "torn_write":
                lazyfs.arm("write", [plan.target], plan.nth, plan.keep)
            elif plan.kind == "store_sync":
                lazyfs.arm("sync", STORE_NAMES, plan.nth)
            trainer_pid = server.call(
                op="train",
                uri=uri,
                acks=str(acks),
                progress=str(progress),
                log=str(work / f"trainer-{trial}.log"),
                seed=seed,
                trial=trial,
            )["pid"]
            forked = time.monotonic()
            fired: dict[str, Any] | None = None
            if plan.kind == "startup":
                time.sleep(plan.delay * startup_s)
            elif plan.kind == "time":
                ready = wait_for_ready(progress, trial, trainer_pid, timeout=60)
                assert ready is not None, (
                    f"trial {trial} (seed {seed}): the trainer never got ready:\n"
                    + (work / f"trainer-{trial}.log").read_text(errors="replace")[-4000:]
                )
                startup_s = time.monotonic() - forked
                time.sleep(plan.delay)
            else:
                wait_for_fired(lazyfs, ARMED_WAIT_SECONDS)
            server.call(op="kill", pid=trainer_pid)
            trainer_pid = None
            spent["trainer"] += time.monotonic() - forked
            kind = plan.kind
            if kind in ("torn_write", "store_sync"):
                lazyfs.disarm()
                fired = lazyfs.fired()
                if fired is not None:
                    lazyfs.revive()  # the cut happened inside the filesystem; nothing ran after it
                    armed[kind] += 1
                    if kind == "torn_write":
                        torn[fired["name"]] += 1
                        torn[f"{fired['name']} kept"] += fired["torn_file_kept"]
                    else:
                        synced[fired["name"]] += 1
                else:
                    missed[kind] += 1
                    kind = "time"
            if fired is None:
                lazyfs.cut()  # nothing writes after the kill; the filesystem now holds only what was durable
            cuts[kind] += 1
            hot = (lazyfs.mountpoint / "mlflow.db-journal").exists()  # sqlite will roll its transaction back
            hot_journals[kind] += hot

            ready = find_ready(progress, trial)
            if ready is not None and fired is not None and ready["at"] > fired["at"]:
                ready = None  # restored after the power went (its reads failed): nothing to compare
            if ready is not None and newest_ack_before is not None:
                restores_checked += 1
                restored = ready["restored"]
                if restored is None or restored < newest_ack_before["version"]:
                    restore_problems.append(
                        f"trial {trial} (seed {seed}) restored v{restored}, older than the acknowledged "
                        f"v{newest_ack_before['version']}"
                    )
                elif (
                    restored == newest_ack_before["version"] and ready["restored_digest"] != newest_ack_before["digest"]
                ):
                    restore_problems.append(
                        f"trial {trial} (seed {seed}) restored v{restored} with a different state than was acknowledged"
                    )

            checking = time.monotonic()
            result = verify(server, uri, acks, work, trial, lost, full=trial == trials - 1)
            spent["check"] += time.monotonic() - checking
            for part, value in result["seconds"].items():
                checker_parts[part] += value
            loaded, reused = loaded + result["loaded"], reused + result["reused"]
            unstated += result["reused_without_stat"]
            lost += [
                {
                    **item,
                    "detected_after_trial": trial,
                    "seed": seed,
                    "cut": kind,
                    "fired": fired,
                    "registered_versions_after_cut": result["max_version"],
                }
                for item in result["lost"]
            ]
            for item in result["failing"]:
                failing.setdefault(item["version"], {**item, "first_failed_after_trial": trial, "seed": seed})
            staging += [{**s, "trial": trial, "seed": seed} for s in result["staging_sources"]]
            if "error" in result["latest"]:
                latest_errors.append({"trial": trial, "seed": seed, **result["latest"]})
            gone = {(a["trial"], a["version"]) for a in lost}
            remaining = [a for a in read_records(acks) if (a["trial"], a["version"]) not in gone]
            newest_ack_before = max(remaining, key=lambda a: a["version"], default=None)
            outcome = f"LOST {len(result['lost'])}" if result["lost"] else "ok"
            now = lazyfs.stats()
            io = {  # the trial's writes (w) and fsyncs (s) of the watched files, to size TORN_TARGETS and STORE_SYNC_MAX
                **{f"w:{k}": v - counted["named_writes"][k] for k, v in now["named_writes"].items()},
                **{f"s:{k}": v - counted["named_syncs"][k] for k, v in now["named_syncs"].items()},
            }
            counted = now
            detail = "" if fired is None else " " + json.dumps({k: v for k, v in fired.items() if k != "at"})
            started = "" if ready is None else f"; ready after {ready['startup_s']} s"
            print(
                f"trial {trial} seed {seed} {plan.kind}: {plan.describe()}{started}; cut {kind}{detail}; hot journal {hot}; "
                f"acknowledged so far {len(remaining) + len(gone)} ({result['retired']} of them retired by retention), "
                f"versions {result['versions']}: {outcome}; "
                f"{ {k: v for k, v in io.items() if v} }"
            )

        stats = lazyfs.stats()
        acknowledged = len(read_records(acks))
        fsyncs = stats["fsync"] + stats["fdatasync"] + stats["fsyncdir"] + stats["fsync_on_dir"]
        wall = time.monotonic() - began
        by_kind = ", ".join(f"{k} {cuts[k]}" for k in KINDS)
        print(
            f"power-loss summary (first seed {seeds[0]}): trials {trials}, cuts {sum(cuts.values())} ({by_kind}; "
            f"armed cuts that fired: torn_write {armed['torn_write']}, store_sync {armed['store_sync']}, that did "
            f"not fire in {ARMED_WAIT_SECONDS:.0f} s and were made as time cuts: {sum(missed.values())}), "
            f"acknowledged saves {acknowledged} ({result.get('retired')} of them deleted by retention as it should, "
            f"the periodic window being {KEEP_PERIODIC}), lost {len(lost)}, wall {wall:.1f} s (trainers {spent['trainer']:.1f} s, "
            f"checkers {spent['check']:.1f} s: {', '.join(f'{k} {v:.1f}' for k, v in checker_parts.items())})\n"
            f"  torn writes: {dict(sorted(torn.items()))}; store fsyncs cut after: {dict(sorted(synced.items()))}; "
            f"cuts that left a hot sqlite journal (the store rolled back to an earlier fsync): "
            f"{dict(sorted(hot_journals.items()))}\n"
            f"  versions that failed to load {len(failing)}, staging sources {len(staging)}, latest errors "
            f"{len(latest_errors)}, restores checked {restores_checked}, restore problems {len(restore_problems)}, "
            f"registered versions at the end {result.get('versions')}, versions loaded by the checkers {loaded} "
            f"(unchanged since verified, not loaded again: {reused}, {unstated} of them without a stat); fsyncs seen "
            f"{fsyncs} (fsync {stats['fsync']}, "
            f"fdatasync {stats['fdatasync']}, fsyncdir {stats['fsyncdir']}), reverted files "
            f"{stats['reverted_files']}, reverted dirs {stats['reverted_dirs']}"
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
        failed_trials = sorted(
            {p["detected_after_trial"] for p in lost}
            | {p["first_failed_after_trial"] for p in failing.values()}
            | {p["trial"] for p in staging + latest_errors}
        )
        replay = "; ".join(replay_hint(seeds, t) for t in failed_trials[:3])
        assert not any(problems.values()), (
            f"first seed {seeds[0]}, failed after trials {failed_trials} ({replay}): "
            + json.dumps(problems, indent=1)[:6000]
        )
        assert acknowledged >= trials, f"too few acknowledged saves to mean anything ({acknowledged})"
        if trials >= len(KIND_CYCLE) and "MLFLOW_PERSIST_POWERLOSS_KINDS" not in os.environ:
            assert armed["torn_write"] and armed["store_sync"] and cuts["startup"], (
                f"a kind of cut was never made: {dict(cuts)}, armed cuts that fired {dict(armed)}"
            )
    finally:
        if trainer_pid is not None:
            try:
                server.call(op="kill", pid=trainer_pid)
            except Exception:  # noqa: BLE001 - the server may be the thing that failed
                pass
        with contextlib.suppress(OSError):  # a failed trial may have left the filesystem dead
            lazyfs.disarm()
            lazyfs.revive()
