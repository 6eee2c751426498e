"""SIGKILL at random moments while a trainer saves continuously: every restart restores the newest
registered version, byte for byte, and leftovers of the interrupted save are swept at the next start.

Starting a Python process with torch and mlflow costs 5-10 s here, so the trainers are forked from this
pre-imported process (before it opens any MLflow client), one per trial. RELIABILITY_KILL_TRIALS (30, times
MLFLOW_PERSIST_SOAK_FACTOR) kills.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import mlflow_persist as mp
from mlflow_persist._store.mlflow_store import CHECKPOINTS_DIR, MlflowStore
from reliability.support import LineLog, digest, fork_child, make_model, train_step, warm_up_torch

NAME = "dqn"
warm_up_torch()


def _leftovers(store: MlflowStore) -> list[str]:
    run_id = store.find_run(NAME)
    if run_id is None:
        return []
    folder = store.local_artifact_dir(run_id) / CHECKPOINTS_DIR
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-")) if folder.is_dir() else []


def _trainer(events: LineLog, uri: str, seed: int, check_only: bool) -> None:
    # 1. What the killed predecessor left: the newest registered version and its content, read independently.
    store = MlflowStore(uri)
    versions = store.list_versions(NAME)
    before = {"newest": None, "leftovers": _leftovers(store)}
    if versions:
        newest = versions[-1]
        state = mp.load_checkpoint(f"models:/{NAME}/{newest.version}", tracking_uri=uri)
        before["newest"] = {
            "version": newest.version,
            "step": state.step,
            "model": digest(dict(state.model_state)),
            "optimizer": digest(state.optimizer_state["state"]),
        }
    events.emit("BEFORE", before)
    # 2. Restart the way a trainer does, and report what was restored.
    model, opt = make_model(seed)
    cfg = mp.PersistConfig(
        tracking_uri=uri,
        keep_best=3,
        min_free_disk_mb=0,
        min_free_disk_percent=0,
        scheduler_interval_seconds=1.0,
        log_system_metrics=False,
        partial_sweep_age_seconds=0,
    )
    persist = mp.Persistence(cfg, install_signal_handlers=False)
    handle = persist.track(NAME, model, optimizer=opt)
    info = handle.restore()
    events.emit(
        "RESTORED",
        None
        if info is None
        else {
            "version": info.version,
            "step": info.step,
            "run_id": handle.run_id,
            "model": digest(model.state_dict()),
            "optimizer": digest(opt.state_dict()["state"]),
            "leftovers": _leftovers(persist.store),
        },
    )
    if check_only:
        persist.close(final_checkpoints=False)
        return
    # 3. Train with an improvement (a performance save) at every step until killed.
    saved = handle.last_version  # SAVED events report new versions only
    while True:
        train_step(model, opt)
        handle.step(loss=1.0 / (handle.current_step + 2))
        # The independent record: the live state at the moment step() took its snapshot.
        events.emit(
            "STATE",
            {
                "step": handle.current_step,
                "model": digest(model.state_dict()),
                "optimizer": digest(opt.state_dict()["state"]),
            },
        )
        if handle.last_version != saved:
            saved = handle.last_version
            events.emit("SAVED", {"version": saved})
        time.sleep(0.002)


@pytest.mark.slow
@pytest.mark.soak
def test_sigkill_at_random_moments_always_restores_the_newest_complete_checkpoint(
    sqlite_uri: str, tmp_path: Path, soak_count: Callable[[str, int], int]
) -> None:
    trials = soak_count("RELIABILITY_KILL_TRIALS", 30)
    rng = random.Random(20240611)
    logs = []
    for trial in range(trials + 1):
        events = LineLog(tmp_path / f"trial-{trial:03d}.log")
        proc = fork_child(_trainer, events, sqlite_uri, trial, trial == trials)
        events.wait_for("RESTORED", proc)
        if trial < trials:
            events.wait_for("SAVED", proc)
            time.sleep(rng.uniform(0.0, 0.8))
            os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout=120)
        assert proc.exitcode in (-signal.SIGKILL, 0), events.read()[-3:]
        logs.append(events)

    run_ids, with_leftovers = set(), 0
    for trial in range(1, trials + 1):
        before, restored = logs[trial].first("BEFORE"), logs[trial].first("RESTORED")
        acknowledged = [e["version"] for e in logs[trial - 1].all("SAVED") if e["version"] is not None]
        newest = before["newest"]
        assert newest is not None and restored is not None, f"trial {trial}: nothing to restore"
        # The newest registered version is the one restored, with exactly its content...
        assert restored["version"] == newest["version"], f"trial {trial}: {restored} vs {newest}"
        assert (restored["step"], restored["model"], restored["optimizer"]) == (
            newest["step"],
            newest["model"],
            newest["optimizer"],
        ), f"trial {trial}"
        # ... and that content is what the killed trainer itself recorded of its live state at that step.
        live = {e["step"]: e for e in logs[trial - 1].all("STATE")}[restored["step"]]
        assert (restored["model"], restored["optimizer"]) == (live["model"], live["optimizer"]), f"trial {trial}"
        # No save the killed trainer had completed was lost.
        assert not acknowledged or newest["version"] >= acknowledged[-1], f"trial {trial}"
        # Partial directories of the interrupted save are gone after the restart.
        assert restored["leftovers"] == [], f"trial {trial}: {restored['leftovers']}"
        with_leftovers += bool(before["leftovers"])
        run_ids.add(restored["run_id"])
    assert len(run_ids) == 1  # one continuous run across all restarts
    store = MlflowStore(sqlite_uri)
    best = store.alias_version(NAME)
    assert best is not None and not any(v.corrupt for v in store.list_versions(NAME))
    print(
        f"\nFAULT sigkill-during-save trials={trials} restored_newest={trials} "
        f"partial_dirs_swept={with_leftovers} newest_version={store.list_versions(NAME)[-1].version}"
    )
