"""Many trainers, one tracking server: 3 trainer processes run concurrently against one
`mlflow server` on PostgreSQL, each with its own model plus one model all three share.

Each process gets its own TMPDIR and XDG_CACHE_HOME, so the core's machine-local file
locks and outbox are not shared:
the processes behave like trainers on three machines. Afterwards every checkpoint the
processes logged as saved is a registered version with matching tags, no version is
unaccounted for, `best` sits on the truly best valid version, every version verifies,
and no metric step of the own models is missing."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from machines import finish, killed_at_exit, machine_env, start_on
from mlflow import MlflowClient
from servers import MlflowServer, subprocess_env
from zygote import Zygote

TRAINER = Path(__file__).with_name("multi_trainer_proc.py")
N_TRAINERS = 3
STEPS = 120

mp = pytest.importorskip("mlflow_persist", reason="the core (mlflow_persist.Persistence) is not built yet")
MLFLOW_PERSIST = Path(sys.executable).with_name("mlflow-persist")


def _events(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run_trainers(uri: str, tmp_path: Path, zygote: Zygote) -> dict[int, list[dict[str, Any]]]:
    with killed_at_exit() as procs:
        for i in range(N_TRAINERS):
            machine = tmp_path / f"machine{i}"
            machine.mkdir()
            env = machine_env(machine, MLFLOW_HTTP_REQUEST_MAX_RETRIES="5", MLFLOW_HTTP_REQUEST_TIMEOUT="60")
            procs.append(start_on(machine, [sys.executable, str(TRAINER), uri, str(i), str(STEPS),
                                            str(machine / "events.jsonl")], env, zygote))  # fmt: skip
        results: dict[int, list[dict[str, Any]]] = {}
        for i, proc in enumerate(procs):
            finish(str(i), proc)
            results[i] = _events(tmp_path / f"machine{i}" / "events.jsonl")
        return results


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.postgres
def test_three_trainers_share_one_postgres_server(
    postgres_server: MlflowServer, tmp_path: Path, zygote: Zygote
) -> None:
    uri = postgres_server.uri
    results = _run_trainers(uri, tmp_path, zygote)

    all_events = [e for events in results.values() for e in events]
    # A failed attempt is allowed only when a later attempt saved the same checkpoint (retried, not lost).
    for events in results.values():
        for n, e in enumerate(events):
            if e.get("outcome") == "failed":
                retried = any(later.get("outcome") == "saved" and later.get("model") == e.get("model")
                              and later.get("step") == e.get("step") for later in events[n + 1:])  # fmt: skip
                assert retried, f"a save failed and was never retried successfully: {e['message']}"
    problems = [e for e in all_events if e.get("outcome") == "corrupt" or e["level"] == "CRITICAL"]
    assert not problems, problems[:5]
    saved: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for e in all_events:
        if e.get("outcome") == "saved":
            assert e["version"] not in saved[e["model"]], f"two saves reported v{e['version']} of {e['model']}"
            saved[e["model"]][e["version"]] = e
    assert set(saved) == {"shared", *(f"own{i}" for i in range(N_TRAINERS))}

    client = MlflowClient(uri)
    for model, by_version in saved.items():
        versions = {int(v.version): v for v in client.search_model_versions(f"name = '{model}'", max_results=1000)}
        # Nothing lost and nothing unaccounted for: the registry holds exactly the saved checkpoints.
        assert sorted(versions) == sorted(by_version), model
        for number, event in by_version.items():
            tags = versions[number].tags
            assert tags["mlflow_persist.category"] == event["category"]
            assert int(tags["mlflow_persist.step"]) == event["step"]
            if event["category"] == "performance":
                assert math.isclose(float(tags["mlflow_persist.value"]), event["value"], rel_tol=1e-9)
            assert len(tags["mlflow_persist.digest"]) == 32 and tags["mlflow_persist.digest_algorithm"] == "xxh3-128"
        finals = [e for e in by_version.values() if e["category"] == "final"]
        assert len(finals) == (N_TRAINERS if model == "shared" else 1), model
        performance = {n: e["value"] for n, e in by_version.items() if e["category"] == "performance"}
        assert performance, model
        truly_best = min(performance, key=lambda n: performance[n])
        assert int(client.get_model_version_by_alias(model, "best").version) == truly_best, model
        # The newest version is a complete checkpoint: models:/<name>/latest resolves and loads.
        latest = mp.load_checkpoint(f"models:/{model}/latest", tracking_uri=uri)
        assert latest.version == max(by_version) and latest.category == by_version[latest.version]["category"]
        best_state = mp.load_checkpoint(f"models:/{model}@best", tracking_uri=uri)
        assert (best_state.version, best_state.step) == (truly_best, by_version[truly_best]["step"])

    # Three processes saved performance checkpoints of the shared model.
    writers = {
        round(e["value"] * 1e9) % 10**3 // 10 for e in saved["shared"].values() if e["category"] == "performance"
    }
    assert writers == set(range(N_TRAINERS))

    # No metric step lost: each own model's one run has the loss of every step.
    experiment = client.get_experiment_by_name("multi-trainer")
    assert experiment is not None
    for i in range(N_TRAINERS):
        runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`mlflow_persist.run_key` = 'own{i}'")
        assert len(runs) == 1
        steps = {m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")}
        assert steps == set(range(1, STEPS + 1))

    # Every version of every model verifies (sha256 + safe load) through the real command line.
    verify = subprocess.run([str(MLFLOW_PERSIST), "verify", "--tracking-uri", uri, "--json"],
                            capture_output=True, text=True, timeout=300, env=subprocess_env())  # fmt: skip
    assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-3000:]
