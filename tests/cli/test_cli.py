"""The operator commands through the real command line, on a real store, including error paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

import mlflow_persist as mp
from mlflow_persist._store.mlflow_store import MlflowStore
from mlflow_persist.cli.main import main


def _registered(uri: str, name: str) -> dict[str, Any]:
    """`best` and each version's category of `name`, read with MLflow's own client."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    return {
        "best": int(client.get_registered_model(name).aliases["best"]),
        "categories": {
            int(v.version): v.tags["mlflow_persist.category"] for v in client.search_model_versions(f"name='{name}'")
        },
    }


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


@pytest.fixture
def populated(sqlite_uri: str) -> str:
    cfg = mp.PersistConfig(
        tracking_uri=sqlite_uri,
        keep_best=5,
        keep_periodic=5,
        periodic_every_steps=4,
        min_free_disk_mb=1,
        min_free_disk_percent=0,
    )
    with mp.Persistence(cfg) as persist:
        for name in ("dqn", "cnn"):
            handle = persist.track(name, torch.nn.Linear(3, 2))
            for value in (5.0, 4.0, 4.5, 3.0, 3.5, 3.6, 3.7, 3.8, 2.0):
                handle.step(loss=value)
                persist.flush(timeout=30)
    return sqlite_uri


def test_status_history_verify_and_gc(populated: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "status", "--tracking-uri", populated, "--json")
    assert code == 0
    status = json.loads(out)
    models = {m["model"]: m for m in status["models"]}
    assert set(models) == {"dqn", "cnn"}
    assert models["dqn"]["best"]["value"] == 2.0 and models["dqn"]["latest"]["category"] == "final"
    assert models["dqn"]["health"] == "ok" and status["disk"]["free_mb"] > 0
    for name, row in models.items():  # what status reports is what the registry holds
        registered = _registered(populated, name)
        assert row["best"]["version"] == registered["best"], name
        assert row["latest"]["version"] == max(registered["categories"]), name
        assert row["versions"] == dict(Counter(registered["categories"].values())), name

    code, out, _ = run_cli(capsys, "status", "--tracking-uri", populated)
    assert code == 0 and "dqn" in out and "best" in out

    code, out, _ = run_cli(capsys, "history", "dqn", "--tracking-uri", populated, "--json")
    data = json.loads(out)
    assert [v["version"] for v in data["versions"]] == sorted(_registered(populated, "dqn")["categories"])
    assert [e["to"] for e in data["alias_moves"] if e["alias"] == "best"][-1] == models["dqn"]["best"]["version"]
    assert len(data["sparkline"]) == len([v for v in data["versions"] if v["value"] is not None])
    code, out, _ = run_cli(capsys, "history", "dqn", "--tracking-uri", populated)
    assert code == 0 and "alias moves" in out

    code, out, _ = run_cli(capsys, "verify", "--tracking-uri", populated, "--json")
    assert code == 0 and json.loads(out)["corrupt"] == []

    config = Path(populated[len("sqlite:///") :]).parent / "gc.toml"
    config.write_text(f'tracking_uri = "{populated}"\nkeep_best = 1\nkeep_periodic = 1\nkeep_final = 1\n')
    code, out, _ = run_cli(capsys, "gc", "--config", str(config), "--dry-run", "--json")
    planned = json.loads(out)["deleted"]
    assert code == 0 and planned
    before = len(MlflowStore(populated).list_versions("dqn"))
    code, out, _ = run_cli(capsys, "gc", "--config", str(config))
    assert code == 0 and f"{len(planned)} versions deleted" in out
    remaining = MlflowStore(populated).list_versions("dqn")
    assert len(remaining) == before - len([p for p in planned if p["model"] == "dqn"])
    assert MlflowStore(populated).alias_version("dqn").version in [v.version for v in remaining]


def test_status_shows_what_checkpoint_writing_costs_training_as_the_run_logged_it(
    sqlite_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow import MlflowClient

    cfg = mp.PersistConfig(tracking_uri=sqlite_uri, log_system_metrics=True, max_overhead=0.01, min_free_disk_mb=1)
    with mp.Persistence(cfg) as persist:
        handle = persist.track("dqn", torch.nn.Linear(64, 64))
        # A new best every step: more saves than 1 % of the time allows. The budget is charged once the writer
        # has written a save, which on a loaded machine may be after 30 steps: go on until it has held one back.
        step = 0
        while step < 30 or (persist.writer.deferred == 0 and step < 1000):
            step += 1
            handle.step(loss=1.0 / step)
            time.sleep(0.01)  # time for the writer to take each one, so that only the budget holds any back
        assert persist.flush(timeout=60)
        persist.tick()  # logs the overhead metrics, as the scheduler does every interval
        persist.flush_metrics()
    client = MlflowClient(sqlite_uri)
    logged_overhead, logged_held_back = (  # MLflow's latest value: the highest step, then the newest
        max(client.get_metric_history(handle.run_id, key), key=lambda m: (m.step, m.timestamp, m.value)).value
        for key in ("system/persistence_overhead", "system/performance_saves_held_back")
    )
    assert 0 < logged_overhead < 1 and logged_held_back >= 1

    code, out, _ = run_cli(capsys, "status", "--tracking-uri", sqlite_uri, "--json")
    (row,) = json.loads(out)["models"]
    assert code == 0
    assert row["overhead"] == pytest.approx(logged_overhead) and row["held_back"] == logged_held_back
    code, out, _ = run_cli(capsys, "status", "--tracking-uri", sqlite_uri)
    assert code == 0 and f"{100 * logged_overhead:.1f}%, {logged_held_back:.0f}" in out and "held back" in out


def test_verify_names_corrupt_versions_and_fails(populated: str, capsys: pytest.CaptureFixture[str]) -> None:
    store = MlflowStore(populated)
    victim = store.list_versions("cnn")[1]
    with store.checkpoint_dir(victim) as directory:
        (directory / "checkpoint.pt").write_bytes(b"garbage")
    code, out, _ = run_cli(capsys, "verify", "--tracking-uri", populated)
    assert code == 3 and f"CORRUPT cnn v{victim.version}" in out and "1 corrupt" in out
    assert store.get_version("cnn", victim.version).corrupt


def test_damaged_best_moves_best_and_false_corrupt_tags_are_cleared(
    populated: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = MlflowStore(populated)
    best = store.alias_version("dqn")
    assert best is not None and best.value == 2.0
    with store.checkpoint_dir(best) as directory:
        (directory / "checkpoint.pt").write_bytes(b"garbage")
    code, out, _ = run_cli(capsys, "verify", "dqn", "--tracking-uri", populated)
    assert code == 3 and f"CORRUPT dqn v{best.version}" in out
    moved = store.alias_version("dqn")
    assert moved is not None and not moved.corrupt and moved.value == 3.0  # the next best valid version
    healthy = store.list_versions("cnn")[0]  # what an older release did: a healthy version tagged corrupt
    store.mark_corrupt("cnn", healthy.version, "checkpoint does not fit the tracked objects")
    code, out, _ = run_cli(capsys, "verify", "cnn", "--tracking-uri", populated)
    assert code == 0 and f"TAGGED CORRUPT BUT VERIFIES cnn v{healthy.version}" in out
    assert "--clear-false-corrupt" in out and store.get_version("cnn", healthy.version).corrupt
    code, out, _ = run_cli(capsys, "verify", "cnn", "--clear-false-corrupt", "--json", "--tracking-uri", populated)
    assert code == 0 and [r["version"] for r in json.loads(out)["false_corrupt"]] == [healthy.version]
    assert not store.get_version("cnn", healthy.version).corrupt


def test_error_paths_print_one_line_and_exit_non_zero(
    populated: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run_cli(capsys, "history", "nope", "--tracking-uri", populated)
    assert code == 1 and err.count("\n") == 1 and "has no checkpoints" in err
    code, _, err = run_cli(capsys, "verify", "nope", "--tracking-uri", populated)
    assert code == 1 and "nope" in err
    bad = tmp_path / "bad.toml"
    bad.write_text("keep_best = 0\n")
    code, _, err = run_cli(capsys, "gc", "--config", str(bad))
    assert code == 1 and "keep_best=0" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "--log-level", "LOUD", "status", "--tracking-uri", populated)
    assert code == 1 and "LOUD" in err


@pytest.mark.slow  # a fresh interpreter: seconds of imports
def test_unreachable_server_is_a_one_line_error() -> None:
    env = dict(os.environ, MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="5")
    proc = subprocess.run(
        [sys.executable, "-m", "mlflow_persist.cli", "status", "--tracking-uri", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 4
    assert proc.stderr.strip().count("\n") == 0 and "cannot be used" in proc.stderr and "127.0.0.1:9" in proc.stderr


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "status", "--bogus")
    assert code == 2 and "--bogus" in err
