"""A server with several workers: `mlflow server --workers 4` on PostgreSQL, 4 trainer processes at once, and
replies to `create_model_version` lost on the way back so that MLflow's HTTP client sends the POST again.

Models: `alpha` (process 0), `beta` (process 1) and `shared` (processes 2 and 3). Each process trains exactly
one model, so the four put the same load on the server, all four register concurrently through different
uvicorn workers, and one model has two writers that decide `best` without any shared lock (the shape the
"Several processes saving the same model" section of docs/deployment.md describes). Each process has its own TMPDIR,
XDG_CACHE_HOME (file locks) and outbox directory, as on four machines.

The trainers talk to the server through `servers.FaultProxy`: every 3rd new model-version-create POST is
forwarded, the server's reply is read and then withheld (alternately the connection is closed without a
response, or 502 is answered), so the client retries a POST the server already executed. The checks compare
three records that do not come from the code under test's own bookkeeping alone: the proxy's log (every
create the server executed, the version it answered, every version deleted), the registry, and what each
trainer reported (its own JSONL of step and loss, plus the core's `saved` log events):

- after every lost reply the client found the version in the registry instead of sending the POST again: the
  server created each (source, category) exactly once, nothing was deleted (retention keeps everything
  here), and each model's version numbers run 1..N without a gap;
- the registry's versions are exactly the saves the trainers logged, with matching tags and values;
- `best` of each model is the best performance version by the values the trainers reported;
- every version verifies (`mlflow-persist verify` exits 0), no trainer crashed, and every step's loss of the
  single-writer models is in their run.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from machines import finish, killed_at_exit, machine_env, start_on
from mlflow import MlflowClient
from servers import FaultProxy, MlflowServer, PostgresServer, subprocess_env
from servers.fault_proxy import CREATE_MODEL_VERSION, DELETE_MODEL_VERSION
from zygote import Zygote

TRAINER = Path(__file__).with_name("workers_trainer_proc.py")
MODELS = {0: "alpha", 1: "beta", 2: "shared", 3: "shared"}  # process index -> the model it trains
STEPS = 60
FAULT_EVERY = 3

mp = pytest.importorskip("mlflow_persist", reason="the core (mlflow_persist.Persistence) is not built yet")
MLFLOW_PERSIST = Path(sys.executable).with_name("mlflow-persist")


class _CountingRegistry(BaseHTTPRequestHandler):
    """A stand-in server: each create POST makes a new "version" (as MLflow's does, with no idempotency key)."""

    protocol_version = "HTTP/1.1"
    created: list[dict[str, Any]] = []

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def do_POST(self) -> None:  # noqa: N802
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.created.append(request)
        reply = json.dumps({"model_version": {"name": request["name"], "version": str(len(self.created))}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)


def test_the_fault_proxy_loses_replies_that_mlflows_client_retries() -> None:
    """The proxy's two faults (connection closed without a reply, 502) are ones MLflow's HTTP client retries
    for a POST, and the retry reaches the server: the server sees each POST twice, the client gets the reply
    to the second one. No mlflow server needed: a stand-in counts the creates."""
    from mlflow.utils.rest_utils import MlflowHostCreds, http_request

    _CountingRegistry.created = []
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), _CountingRegistry)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    try:
        with FaultProxy(f"http://127.0.0.1:{upstream.server_address[1]}", every=1) as proxy:
            creds = MlflowHostCreds(proxy.uri)
            replies = [http_request(creds, CREATE_MODEL_VERSION, "POST", json={"name": "m", "source": f"s{i}"},
                                    max_retries=3, backoff_factor=0).json() for i in range(2)]  # fmt: skip
    finally:
        upstream.shutdown()
        upstream.server_close()
    assert [r["source"] for r in _CountingRegistry.created] == ["s0", "s0", "s1", "s1"]
    assert [r["model_version"]["version"] for r in replies] == ["2", "4"]
    assert [(r["action"], r["repeat"]) for r in proxy.records] == [
        ("drop", False),
        ("forwarded", True),
        ("bad_gateway", False),
        ("forwarded", True),
    ]


@pytest.fixture
def workers_server(postgres: PostgresServer, tmp_path: Path) -> Iterator[MlflowServer]:
    """`mlflow server --workers 4` on a private PostgreSQL database, proxied artifacts under tmp_path."""
    server = MlflowServer(postgres.uri, tmp_path / "artifacts", workers=4, log_path=tmp_path / "mlflow-server.log")
    with server:
        try:
            yield server
        finally:
            print(f"--- mlflow server log tail ({server.log_path}):\n{server.log_tail()}")


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run_trainers(uri: str, tmp_path: Path, zygote: Zygote) -> dict[int, tuple[list[dict[str, Any]], dict[int, float]]]:
    """Start every trainer at once against `uri`; returns per process (log events, {step: reported loss})."""
    go = tmp_path / "go"
    machines = {i: tmp_path / f"machine{i}" for i in MODELS}
    with killed_at_exit() as procs:
        for i, model in MODELS.items():
            machine = machines[i]
            machine.mkdir()
            env = machine_env(machine, MLFLOW_HTTP_REQUEST_MAX_RETRIES="5", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="1",
                              MLFLOW_HTTP_REQUEST_TIMEOUT="60")  # fmt: skip
            procs.append(start_on(machine, [sys.executable, str(TRAINER), uri, model, str(i), str(STEPS),
                                            str(machine / "events.jsonl"), str(machine / "reported.jsonl"),
                                            str(go)], env, zygote))  # fmt: skip
        # Start training together, once every process has imported, connected and tracked its model.
        deadline = time.monotonic() + 300
        while not all((m / "ready").exists() for m in machines.values()) and time.monotonic() < deadline:
            assert all(proc.poll() is None for proc in procs), "a trainer exited before it was ready"
            time.sleep(0.1)
        go.touch()
        results: dict[int, tuple[list[dict[str, Any]], dict[int, float]]] = {}
        for i, proc in zip(MODELS, procs):
            machine = machines[i]
            finish(str(i), proc)
            assert (machine / "outbox" / MODELS[i]).is_dir(), f"trainer {i} did not use its own outbox"
            reported = {r["step"]: r["loss"] for r in _jsonl(machine / "reported.jsonl")}
            assert sorted(reported) == list(range(1, STEPS + 1)), f"trainer {i} did not report every step"
            results[i] = (_jsonl(machine / "events.jsonl"), reported)
        return results


def _key(request: dict[str, Any]) -> tuple[str, str, str]:
    """(model, source, category) of a create_model_version request body."""
    tags = {t["key"]: t["value"] for t in request.get("tags", [])}
    return request["name"], request["source"], tags.get("mlflow_persist.category", "")


@pytest.mark.slow
@pytest.mark.server
@pytest.mark.postgres
def test_four_trainers_on_a_four_worker_server_with_lost_replies(
    workers_server: MlflowServer, tmp_path: Path, zygote: Zygote
) -> None:
    started = time.monotonic()
    with FaultProxy(workers_server.uri, every=FAULT_EVERY, log_path=tmp_path / "fault-proxy.jsonl") as proxy:
        results = _run_trainers(proxy.uri, tmp_path, zygote)
    trained = time.monotonic()
    records = list(proxy.records)

    # --- no trainer crashed or lost a checkpoint: a failed attempt only where a later one saved the same step.
    for events, _ in results.values():
        for n, e in enumerate(events):
            if e.get("outcome") == "failed":
                retried = any(later.get("outcome") == "saved" and later.get("model") == e.get("model")
                              and later.get("step") == e.get("step") for later in events[n + 1:])  # fmt: skip
                assert retried, f"a save failed and was never retried successfully: {e['message']}"
    all_events = [e for events, _ in results.values() for e in events]
    problems = [e for e in all_events if e.get("outcome") == "corrupt" or e["level"] == "CRITICAL"]
    assert not problems, problems[:5]

    # --- the proxy's record: the lost replies, and that no POST the server carried out was sent again.
    creates = [r for r in records if r["path"] == CREATE_MODEL_VERSION]
    faulted = [r for r in creates if r["action"] != "forwarded"]
    assert len(faulted) >= 5, f"only {len(faulted)} replies withheld of {len(creates)} creates"
    assert {r["action"] for r in faulted} == {"drop", "bad_gateway"}
    assert all(r["status"] == 200 for r in faulted), [r["status"] for r in faulted]  # the server did the work
    executed: dict[tuple[str, str, str], list[int]] = defaultdict(list)  # what the server created, per key
    for r in creates:
        if r["status"] == 200:
            executed[_key(r["request"])].append(int(r["reply"]["model_version"]["version"]))
    # The client looked in the registry after each lost reply and found the version there, so the server
    # created every (source, category) exactly once: a retried POST never created a duplicate ...
    twice = {key: numbers for key, numbers in executed.items() if len(numbers) > 1}
    assert not twice, f"the server created a version twice: {twice}"
    assert not [r for r in creates if r["repeat"]], "a create whose reply was lost was sent again"
    # ... so nothing had to be deleted either (retention keeps everything here, keep_* = 1000).
    deletes = {(r["request"]["name"], int(r["request"]["version"]))
               for r in records if r["path"] == DELETE_MODEL_VERSION and r["status"] == 200}  # fmt: skip
    assert not deletes, deletes

    # --- the registry against the proxy's record and the trainers' logged saves.
    client = MlflowClient(workers_server.uri)  # straight to the server: the checks read, they are not faulted
    saved: dict[str, dict[int, tuple[int, dict[str, Any]]]] = defaultdict(dict)  # model -> version -> (proc, e)
    for i, (events, _) in results.items():
        for e in events:
            if e.get("outcome") == "saved":
                assert e["version"] not in saved[e["model"]], f"two saves reported v{e['version']} of {e['model']}"
                saved[e["model"]][e["version"]] = (i, e)
    assert set(saved) == set(MODELS.values())
    also_versions = 0
    for model, by_version in saved.items():
        versions = {int(v.version): v for v in client.search_model_versions(f"name = '{model}'", max_results=1000)}
        assert sorted(versions) == list(range(1, len(versions) + 1)), f"{model}: a version number was skipped"
        per_key = Counter((v.source, v.tags.get("mlflow_persist.category")) for v in versions.values())
        assert max(per_key.values()) == 1, f"{model}: two versions of one source and category: {per_key}"
        # One version per (source, category) the server was asked to create: the first one it created.
        expected = {min(numbers) for key, numbers in executed.items() if key[0] == model}
        assert sorted(versions) == sorted(expected), model
        # Exactly the saves the trainers logged, nothing lost and nothing unaccounted for: one checkpoint
        # (source) per logged save, and besides the logged versions only the extra categories a save
        # registered on its own bytes (a periodic save due while a performance snapshot waited in the
        # writer's queue shares that snapshot: same source and step, registered just before it).
        assert set(by_version) <= set(versions), model
        source_of = {n: versions[n].source for n in by_version}
        assert len(set(source_of.values())) == len(by_version), f"{model}: two logged saves share one source"
        assert {v.source for v in versions.values()} == set(source_of.values()), model
        saved_at = {versions[n].source: n for n in by_version}
        for number in set(versions) - set(by_version):
            extra, owner = versions[number], versions[saved_at[versions[number].source]]
            assert extra.tags["mlflow_persist.step"] == owner.tags["mlflow_persist.step"], (model, number)
            assert extra.tags["mlflow_persist.category"] != owner.tags["mlflow_persist.category"], (model, number)
            assert number < int(owner.version), (model, number)
        also_versions += len(versions) - len(by_version)
        for number, (i, event) in by_version.items():
            tags = versions[number].tags
            assert tags["mlflow_persist.category"] == event["category"]
            assert int(tags["mlflow_persist.step"]) == event["step"]
            if event["category"] == "performance":
                reported = results[i][1][event["step"]]  # what the trainer itself passed at that step
                assert math.isclose(event["value"], reported, rel_tol=1e-12), (model, number)
                assert math.isclose(float(tags["mlflow_persist.value"]), reported, rel_tol=1e-12), (model, number)
        finals = [e for _, e in by_version.values() if e["category"] == "final"]
        assert len(finals) == sum(1 for m in MODELS.values() if m == model), model
        performance = {
            n: results[i][1][e["step"]]  # the loss the trainer reported at the saved step
            for n, (i, e) in by_version.items()
            if e["category"] == "performance"
        }
        assert performance, model
        truly_best = min(performance, key=lambda n: performance[n])
        assert int(client.get_model_version_by_alias(model, "best").version) == truly_best, model
        best_state = mp.load_checkpoint(f"models:/{model}@best", tracking_uri=workers_server.uri)
        assert (best_state.version, best_state.step) == (truly_best, by_version[truly_best][1]["step"])
        latest = mp.load_checkpoint(f"models:/{model}/latest", tracking_uri=workers_server.uri)
        assert latest.version == max(by_version)

    # Both writers of `shared` saved performance checkpoints of it.
    assert {i for i, e in saved["shared"].values() if e["category"] == "performance"} == {2, 3}

    # No metric step lost: each single-writer model's one run has the loss of every step.
    experiment = client.get_experiment_by_name("workers")
    assert experiment is not None
    for model in ("alpha", "beta"):
        runs = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.`mlflow_persist.run_key` = '{model}'"
        )
        assert len(runs) == 1
        assert {m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")} == set(range(1, STEPS + 1))

    # Every version of every model verifies (digest + safe load) through the real command line.
    verifying = time.monotonic()
    verify = subprocess.run([str(MLFLOW_PERSIST), "verify", "--tracking-uri", workers_server.uri, "--json"],
                            capture_output=True, text=True, timeout=300, env=subprocess_env())  # fmt: skip
    assert verify.returncode == 0, verify.stdout[-3000:] + verify.stderr[-3000:]
    checked = time.monotonic()
    print(
        f"fault proxy: {len(creates)} create POSTs, {len(faulted)} replies withheld "
        f"({Counter(r['action'] for r in faulted)}), none sent twice; "
        f"{sum(len(v) for v in saved.values())} saves logged, {also_versions} more categories on their bytes; "
        f"{proxy.requests_forwarded} requests forwarded; trainers {trained - started:.1f} s, "
        f"checks {checked - trained:.1f} s (verify {checked - verifying:.1f} s)"
    )
