"""S3-compatible artifact storage, for real: moto's standalone S3 server on loopback behind an `mlflow server`
on PostgreSQL, with 3 concurrent trainer processes (s3_trainer_proc.py, `mlflow_persist.Persistence`).

Two deployments, one test each:
- **proxied**: `--artifacts-destination s3://<bucket>/proxied`; only the server holds the (dummy) AWS
  credentials and `MLFLOW_S3_ENDPOINT_URL`; trainers and the loader have no S3 settings at all. Mid-run the
  object store is cut off (a TCP proxy in front of moto stops accepting and resets its connections; moto
  keeps its buckets in memory, so restarting it would lose them): the server's uploads fail, it answers 5xx,
  and the checkpoints wait in each trainer's durable outbox. The cut lasts MLFLOW_PERSIST_S3_OUTAGE_SECONDS
  (20 s in CI, times MLFLOW_PERSIST_SOAK_FACTOR in `make soak`): long enough that every trainer's uploads fail
  and its checkpoints wait in the outbox, which is what the test is about (in 10 s one of three sometimes did not).
- **direct**: `--default-artifact-root s3://<bucket>/direct --no-serve-artifacts`; the server has no S3
  settings, trainers and the loader upload and download themselves with `MLFLOW_S3_ENDPOINT_URL` and the
  dummy credentials in their environment.

Every check compares against records the code under test does not keep: the trainers' own logs (saved
versions, the model state digest of every step, what waited in the outbox), boto3 listings and downloads,
and checksums computed here. The bucket is versioned, so its history shows every checkpoint object ever
uploaded and each one retention deleted (a delete marker), beside what it holds now.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest
import xxhash
from machines import finish, killed_at_exit, machine_env, start_on
from mlflow import MlflowClient
from servers import MlflowServer, MotoServer, PostgresServer, TcpOutageProxy, s3_env
from zygote import Zygote

mp = pytest.importorskip("mlflow_persist", reason="the core (mlflow_persist.Persistence) is not built yet")
from s3_trainer_proc import state_digest  # noqa: E402

from mlflow_persist._format.payload import read_checkpoint_dir  # noqa: E402 - after the skip: they import the core

SCRIPT = Path(__file__).with_name("s3_trainer_proc.py")
BUCKET = "mlflow-checkpoints"
N_TRAINERS = 3
CHECKPOINT_FILES = {"checkpoint.pt", "manifest.json"}
S3_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
           "AWS_PROFILE", "MLFLOW_S3_ENDPOINT_URL")  # fmt: skip
# Shorter S3 client retries (botocore reads these), so an S3 call fails within seconds while the store is cut.
FAST_S3_RETRIES = {"AWS_RETRY_MODE": "standard", "AWS_MAX_ATTEMPTS": "2"}
WINDOWS = {"keep_best": 2, "keep_periodic": 2, "keep_final": 1}
# Without an outage: 100 quick steps, a save on every 5 % improvement and every 10 steps.
SPEC = {
    **WINDOWS,
    "steps": 100,
    "periodic_every_steps": 10,
    "min_delta": 0.05,
    "step_sleep": 0.03,
    "control": None,
    "tail_steps": 0,
}
# With one: fewer saves (30 % improvements, every 50 steps), so about 10 per trainer wait out a 20 s outage (each
# trainer must see its uploads fail; in 10 s one of three sometimes did not); the trainers run until the outage is over, then 10 more steps.
OUTAGE_SPEC = {
    **WINDOWS,
    "steps": 20,
    "periodic_every_steps": 50,
    "min_delta": 0.3,
    "step_sleep": 0.08,
    "tail_steps": 10,
}
# One HTTP retry per call: a failing attempt ends within seconds, so the outbox drains soon after the store is back.
OUTAGE_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}

pytestmark = [pytest.mark.slow, pytest.mark.server, pytest.mark.postgres]


# ------------------------------------------------------------------------------------------- deployment


@dataclass
class Deployment:
    mode: str
    server: MlflowServer
    moto: MotoServer
    client_env: dict[str, str]  # what trainers and the loader get on top of subprocess_env()

    @property
    def uri(self) -> str:
        return self.server.uri

    def key_of(self, source: str) -> str:
        """The bucket key of a version's source URI (mlflow-artifacts:/… or s3://<bucket>/…)."""
        parsed = urlparse(source)
        if self.mode == "proxied":  # the server maps mlflow-artifacts:/<path> to s3://<bucket>/proxied/<path>
            assert parsed.scheme == "mlflow-artifacts", source
            return f"proxied/{parsed.path.lstrip('/')}"
        assert (parsed.scheme, parsed.netloc) == ("s3", BUCKET), source
        return parsed.path.lstrip("/")

    def experiment_prefix(self, experiment: str) -> str:
        """The bucket key prefix of an experiment's artifacts: <mode>/<experiment id>/."""
        found = MlflowClient(self.uri).get_experiment_by_name(experiment)
        assert found is not None, experiment
        return f"{self.mode}/{found.experiment_id}/"


def _client_env(machine: Path, **extra: str) -> dict[str, str]:
    """A trainer's or the loader's environment on its own "machine", with only the S3 settings in `extra`."""
    env = machine_env(machine, **extra)
    for var in S3_VARS:
        if var not in extra:
            env.pop(var, None)
    return env


@pytest.fixture(scope="module")
def deploy(
    module_postgres: PostgresServer,
    moto: MotoServer,
    moto_proxy: TcpOutageProxy,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[str], Deployment]]:
    """`deploy(mode)`: the module's mlflow server of that mode, each on its own database of one PostgreSQL
    cluster (started at first use), its artifacts in the versioned BUCKET, which the server (proxied) or the
    clients (direct) reach through `moto_proxy`, so a test can cut the object store off."""
    moto.create_bucket(BUCKET, versioning=True)
    started: dict[str, Deployment] = {}
    with contextlib.ExitStack() as stack:

        def get(mode: str) -> Deployment:
            if mode not in started:
                started[mode] = stack.enter_context(
                    _deployment(mode, module_postgres, moto, moto_proxy.uri, tmp_path_factory.mktemp(f"server-{mode}"))
                )
            return started[mode]

        yield get


@contextlib.contextmanager
def _deployment(
    mode: str, postgres: PostgresServer, moto: MotoServer, endpoint: str, home: Path
) -> Iterator[Deployment]:
    backend = postgres.create_database(f"mlflow_{mode}_{uuid.uuid4().hex[:8]}").uri
    root = f"s3://{BUCKET}/{mode}"
    log_path = home / "mlflow-server.log"
    if mode == "proxied":
        server = MlflowServer(backend, root, log_path=log_path, env={**s3_env(endpoint), **FAST_S3_RETRIES})
        client_env: dict[str, str] = {}
    else:
        # The server gets no S3 settings (blanked, should the test's own environment have any): were it to
        # touch the bucket itself, it would fail.
        server = MlflowServer(backend, root, log_path=log_path, serve_artifacts=False, env={v: "" for v in S3_VARS})
        client_env = {**s3_env(endpoint), **FAST_S3_RETRIES}
    with server:
        try:
            yield Deployment(mode, server, moto, client_env)
        finally:
            print(f"--- mlflow server ({mode}) log tail ({server.log_path}):\n{server.log_tail(3000)}")


# ------------------------------------------------------------------------------------------- processes


@dataclass
class Trainer:
    index: int
    model: str
    machine: Path
    proc: subprocess.Popen[str] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    states: dict[int, dict[str, Any]] = field(default_factory=dict)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    output: str = ""

    def saved(self) -> dict[int, dict[str, Any]]:
        """version -> the trainer's "saved" log event (two saves never report one version). A save registered
        under more categories (a periodic save that also improved) reports those versions in `also_versions`:
        each counts as saved with its own category, on the same bytes (`shares`)."""
        by_version: dict[int, dict[str, Any]] = {}
        for e in self.events:
            if e.get("outcome") == "saved" and e.get("model") == self.model:
                also = [
                    {**e, "category": c, "version": v, "shares": e["version"]}
                    for c, v in (e.get("also_versions") or {}).items()
                ]
                for event in (e, *also):
                    assert event["version"] not in by_version, f"two saves reported v{event['version']} of {self.model}"
                    by_version[event["version"]] = event
        return by_version

    def saved_count(self) -> int:
        try:
            return (self.machine / "events.jsonl").read_text().count('"outcome": "saved"')
        except OSError:
            return 0


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _run_trainers(
    dep: Deployment,
    tmp_path: Path,
    experiment: str,
    spec: dict[str, Any],
    zygote: Zygote,
    during: Callable[[list[Trainer]], None] | None = None,
    env: dict[str, str] | None = None,
) -> list[Trainer]:
    """Run N_TRAINERS trainer processes concurrently, each on its own "machine" (TMPDIR, XDG_CACHE_HOME:
    own locks and outbox) with its own model `<experiment>-<i>`; `during(trainers)` runs while they train.
    Returns them with their records."""
    trainers = [Trainer(i, f"{experiment}-{i}", tmp_path / f"machine{i}") for i in range(N_TRAINERS)]
    with killed_at_exit() as procs:
        for t in trainers:
            t.machine.mkdir()
            spec_path = t.machine / "spec.json"
            spec_path.write_text(json.dumps({
                **spec, "uri": dep.uri, "index": t.index, "model": t.model, "experiment": experiment,
                "events": str(t.machine / "events.jsonl"), "states": str(t.machine / "states.jsonl"),
                "outbox": str(t.machine / "outbox.jsonl"),
            }))  # fmt: skip
            t.proc = start_on(
                t.machine,
                [sys.executable, str(SCRIPT), "train", str(spec_path)],
                _client_env(t.machine, **dep.client_env, **(env or {})),
                zygote,
            )
            procs.append(t.proc)
        if during is not None:
            during(trainers)
        for t in trainers:
            assert t.proc is not None
            t.output = finish(str(t.index), t.proc, timeout=400)
            t.events = _jsonl(t.machine / "events.jsonl")
            t.states = {s["step"]: s for s in _jsonl(t.machine / "states.jsonl")}
            t.outbox = _jsonl(t.machine / "outbox.jsonl")
        return trainers


class Loader:
    """A separate process that calls `load_checkpoint` with the clients' environment (no S3 settings at all
    when proxied). Started beside the trainers, so its imports overlap their run; `load()` hands it the URIs."""

    def __init__(self, dep: Deployment, tmp_path: Path, zygote: Zygote) -> None:
        home = tmp_path / "loader"
        home.mkdir()
        self.request = home / "request.json"
        env = _client_env(home, **dep.client_env)
        self.proc = zygote.popen([sys.executable, str(SCRIPT), "load", dep.uri, str(self.request)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=home,
                                     start_new_session=True)  # fmt: skip

    def load(self, model_uris: list[str]) -> dict[str, dict[str, Any]]:
        """What the process loaded, by URI."""
        staged = self.request.with_suffix(".tmp")
        staged.write_text(json.dumps(model_uris))
        staged.rename(self.request)
        out, err = self.proc.communicate(timeout=300)
        assert self.proc.returncode == 0, out[-3000:] + err[-3000:]
        loaded = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        return {item["uri"]: item for item in loaded}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


# ------------------------------------------------------------------------------------------- the bucket


def _parse_dirname(directory: str) -> tuple[str, int]:
    """(model, step) from a checkpoint directory key ending in `<model>-<step:010d>-<8 hex>`."""
    model, step, suffix = directory.rsplit("/", 1)[-1].rsplit("-", 2)
    assert len(step) == 10 and len(suffix) == 8, directory
    return model, int(step)


@dataclass
class Bucket:
    """The experiment's checkpoint objects, from boto3: what the bucket holds now and everything it ever held."""

    current: dict[str, dict[str, int]]  # checkpoint directory key -> {file name: size}
    history: dict[str, dict[str, list[dict[str, Any]]]]  # directory -> file name -> its versions and delete markers

    @classmethod
    def read(cls, dep: Deployment, experiment: str) -> Bucket:
        prefix = dep.experiment_prefix(experiment)
        current: dict[str, dict[str, int]] = defaultdict(dict)
        for key, size in dep.moto.list_objects(BUCKET, prefix=prefix).items():
            if "/artifacts/checkpoints/" in key:
                directory, name = key.rsplit("/", 1)
                current[directory][name] = size
        history: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
        for version in dep.moto.object_versions(BUCKET, prefix=prefix):
            if "/artifacts/checkpoints/" in version["key"]:
                directory, name = version["key"].rsplit("/", 1)
                history[directory][name].append(version)
        return cls(dict(current), {d: dict(files) for d, files in history.items()})

    def steps(self, model: str, directories: Any) -> set[int]:
        return {step for d in directories for m, step in [_parse_dirname(d)] if m == model}

    def deleted(self, directory: str) -> bool:
        """Whether each of the directory's files was uploaded and its newest version is a delete marker."""
        files = self.history.get(directory, {})
        return set(files) == CHECKPOINT_FILES and all(
            any(not v["deleted"] for v in versions) and any(v["latest"] and v["deleted"] for v in versions)
            for versions in files.values())  # fmt: skip

    def state_ever_stored(self, dep: Deployment, directory: str) -> Any:
        """The checkpoint as last uploaded to `directory` (also when deleted since), verified against its
        manifest's checksum and loaded with weights_only."""
        files = self.history[directory]
        with tempfile.TemporaryDirectory() as tmp:
            for name in CHECKPOINT_FILES:
                uploaded = [v for v in files[name] if not v["deleted"]]
                assert uploaded, f"{directory}/{name} was never uploaded"
                newest = next((v for v in uploaded if v["latest"]), uploaded[0])  # boto3 lists newest first
                (Path(tmp) / name).write_bytes(dep.moto.get_object(BUCKET, newest["key"], newest["version_id"]))
            return read_checkpoint_dir(Path(tmp))


def _check_bucket(
    dep: Deployment, experiment: str, trainers: list[Trainer]
) -> tuple[dict[str, dict[int, Any]], Bucket]:
    """Against the trainers' records and the bucket itself:
    - every registered version is one a trainer saved, with its step and category;
    - the bucket holds exactly the registered versions' checkpoint objects (size, checksum of the bytes boto3
      downloads), no orphans;
    - every checkpoint any trainer saved was uploaded (the bucket's history has its step), nothing was uploaded
      that no save reported, and every directory no longer held was deleted (delete markers), not lost.
    Returns the registered versions (model -> number -> version) and the bucket."""
    client = MlflowClient(dep.uri)
    bucket = Bucket.read(dep, experiment)
    registered: dict[str, dict[int, Any]] = {}
    kept_dirs: set[str] = set()
    for t in trainers:
        versions = {int(v.version): v for v in client.search_model_versions(f"name = '{t.model}'", max_results=1000)}
        registered[t.model] = versions
        saved = t.saved()
        unknown = set(versions) - set(saved)
        assert not unknown, f"{t.model}: registered versions no trainer logged as saved: {sorted(unknown)}"
        for number, v in versions.items():
            event = saved[number]
            assert v.tags["mlflow_persist.category"] == event["category"], (t.model, number)
            assert int(v.tags["mlflow_persist.step"]) == event["step"], (t.model, number)
            directory = dep.key_of(v.source)
            kept_dirs.add(directory)
            assert _parse_dirname(directory) == (t.model, event["step"]), (directory, event)
            files = bucket.current.get(directory)
            assert files is not None, f"{t.model} v{number}: no objects under s3://{BUCKET}/{directory}"
            assert set(files) == CHECKPOINT_FILES, (directory, files)
            assert files["checkpoint.pt"] == int(v.tags["mlflow_persist.size_bytes"]), directory
            assert v.tags["mlflow_persist.digest_algorithm"] == "xxh3-128"
            body = dep.moto.get_object(BUCKET, f"{directory}/checkpoint.pt")
            assert xxhash.xxh3_128(body).hexdigest() == v.tags["mlflow_persist.digest"], directory
            manifest = json.loads(dep.moto.get_object(BUCKET, f"{directory}/manifest.json"))
            assert manifest["digest"] == v.tags["mlflow_persist.digest"], directory
    orphans = sorted(set(bucket.current) - kept_dirs)
    assert not orphans, f"checkpoint objects no registered version uses (orphans): {orphans[:5]}"
    gone = set(bucket.history) - set(bucket.current)
    not_deleted = sorted(d for d in gone if not bucket.deleted(d))
    assert not not_deleted, f"checkpoint directories that vanished without a delete: {not_deleted[:5]}"
    for t in trainers:
        saved = t.saved()
        kept_steps = {saved[n]["step"] for n in registered[t.model]}
        # From the trainer's side alone: the bucket holds the steps of the kept versions ...
        assert bucket.steps(t.model, bucket.current) == kept_steps, t.model
        # ... it once held the step of every save (nothing lost), and nothing else ...
        assert bucket.steps(t.model, bucket.history) == {e["step"] for e in saved.values()}, t.model
        # ... and what it no longer holds are the steps of the versions retention deleted.
        deleted_steps = {saved[n]["step"] for n in set(saved) - set(registered[t.model])} - kept_steps
        assert bucket.steps(t.model, gone) == deleted_steps, t.model
    return registered, bucket


def _check_windows(trainers: list[Trainer], registered: dict[str, dict[int, Any]]) -> None:
    """Retention deleted versions, and what it kept is what the windows say (keep_best 2, keep_periodic 2,
    keep_final 1), judged from the trainer's own record of its saves."""
    for t in trainers:
        saved, kept = t.saved(), registered[t.model]
        assert set(saved) - set(kept), f"{t.model}: retention deleted nothing ({len(saved)} saves)"

        def of(category: str, versions: Any) -> list[int]:
            return sorted(n for n in versions if saved[n]["category"] == category)  # noqa: B023

        by_value = sorted(of("performance", saved), key=lambda n: saved[n]["value"])
        assert of("performance", kept) == sorted(by_value[: WINDOWS["keep_best"]]), t.model
        assert of("periodic", kept) == of("periodic", saved)[-WINDOWS["keep_periodic"] :], t.model
        finals = of("final", saved)
        assert len(finals) == 1 and of("final", kept) == finals, t.model


def _check_loads_elsewhere(loader: Loader, trainers: list[Trainer], registered: dict[str, dict[int, Any]]) -> None:
    """@best and /latest load in another process and hold exactly the model state the trainer had then."""
    loaded = loader.load([f"models:/{t.model}{ref}" for t in trainers for ref in ("@best", "/latest")])
    for t in trainers:
        saved = t.saved()
        performance = [n for n, e in saved.items() if e["category"] == "performance"]
        truly_best = min(performance, key=lambda n: saved[n]["value"])
        assert truly_best in registered[t.model], f"{t.model}: retention deleted the best checkpoint"
        best = loaded[f"models:/{t.model}@best"]
        assert (best["version"], best["step"]) == (truly_best, saved[truly_best]["step"]), t.model
        assert best["state"] == t.states[best["step"]]["state"], f"{t.model}@best holds another state"
        latest = loaded[f"models:/{t.model}/latest"]
        assert latest["version"] == max(registered[t.model]) and latest["category"] == "final", t.model
        assert latest["step"] == max(t.states) and latest["state"] == t.states[latest["step"]]["state"], t.model


def _check_outage(dep: Deployment, trainers: list[Trainer], bucket: Bucket, outage_s: int) -> None:
    """Training went on while the store was cut, saves failed, checkpoints waited in the outbox; afterwards each
    of them is registered (in outbox order) and its objects reached the bucket holding the exact model state of
    its step (where retention deleted it since, the bucket's history still shows the upload)."""
    for t in trainers:
        saved = t.saved()
        outage_steps = [s for s, rec in t.states.items() if rec["outage"]]
        assert len(outage_steps) >= 10, f"{t.model} stepped {len(outage_steps)} times during the outage"
        failures = [e for e in t.events if e.get("outcome") == "failed"]
        assert failures, f"{t.model}: no save failed while the object store was cut"
        assert t.outbox, f"{t.model}: no checkpoint waited in the outbox during the outage"
        by_save = {(e["step"], e["category"]): n for n, e in saved.items()}
        assert len(by_save) == len(saved), f"{t.model}: two saves of one step and category"
        missing = [e for e in t.outbox if (e["step"], e["category"]) not in by_save]
        assert not missing, f"{t.model}: outbox checkpoints never registered: {missing[:3]}"
        numbers = [by_save[e["step"], e["category"]] for e in sorted(t.outbox, key=lambda e: e["sequence"])]
        assert numbers == sorted(numbers), f"{t.model}: outbox checkpoints registered out of order"
        for e in t.outbox:
            [directory] = [d for d in bucket.history if d.endswith(f"/checkpoints/{e['dirname']}")]
            state = bucket.state_ever_stored(dep, directory)
            assert state.step == e["step"], (t.model, e)
            assert state_digest(state.model_state) == t.states[e["step"]]["state"], (t.model, e)
        kept_names = {d.rsplit("/", 1)[-1] for d in bucket.current}
        still_kept = sum(e["dirname"] in kept_names for e in t.outbox)
        print(
            f"\nFAULT s3-outage-{outage_s}s {dep.mode} {t.model}: steps_during_outage={len(outage_steps)} "
            f"outbox_checkpoints={len(t.outbox)} registered_after={len(t.outbox)} still_kept={still_kept} "
            f"saves={len(saved)} failed_attempts={len(failures)} first_failure={failures[0]['message'][:300]!r}"
        )


# ------------------------------------------------------------------------------------------- the test


@pytest.mark.parametrize(
    "mode, outage",
    [
        pytest.param("proxied", True, id="proxied-s3-outage", marks=pytest.mark.soak),
        pytest.param("direct", False, id="direct-upload"),
    ],
)
def test_three_trainers_checkpoint_to_s3_retention_deletes_and_other_processes_load(
    mode: str,
    outage: bool,
    deploy: Callable[[str], Deployment],
    moto_proxy: TcpOutageProxy,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    soak_count: Callable[[str, int], int],
    zygote: Zygote,
) -> None:
    outage_s = soak_count("MLFLOW_PERSIST_S3_OUTAGE_SECONDS", 20)
    started = time.monotonic()
    timings: dict[str, float] = {}

    def lap(name: str) -> None:
        timings[name] = time.monotonic() - started - sum(timings.values())

    dep = deploy(mode)
    lap("server_up_s")
    experiment = f"s3{mode}"
    control = tmp_path / "control"
    control.mkdir()

    def cut_the_object_store(trainers: list[Trainer]) -> None:
        deadline = time.monotonic() + 240
        while not all(t.saved_count() >= 1 for t in trainers):  # mid-run: each trainer has saved already
            dead = [t for t in trainers if t.proc is not None and t.proc.poll() is not None]
            assert not dead, f"trainer {dead[0].index} exited early"
            assert time.monotonic() < deadline, "the trainers saved nothing within 240 s"
            time.sleep(0.2)
        lap("until_cut_s")
        moto_proxy.cut()
        try:
            (control / "outage").touch()
            time.sleep(outage_s)
        finally:
            moto_proxy.restore()
            (control / "outage").unlink()
            (control / "finish").touch()

    loader = Loader(dep, tmp_path, zygote)
    request.addfinalizer(loader.kill)
    if outage:
        trainers = _run_trainers(dep, tmp_path, experiment, {**OUTAGE_SPEC, "control": str(control)}, zygote,
                                 during=cut_the_object_store, env=OUTAGE_CLIENT_ENV)  # fmt: skip
    else:
        trainers = _run_trainers(dep, tmp_path, experiment, SPEC, zygote)
        for t in trainers:
            failed = [e for e in t.events if e.get("outcome") == "failed" or e["level"] == "CRITICAL"]
            assert not failed, failed[:3]
    lap("trainers_s")

    registered, bucket = _check_bucket(dep, experiment, trainers)
    _check_windows(trainers, registered)
    if outage:
        _check_outage(dep, trainers, bucket, outage_s)
        if mode == "proxied":  # the server met the outage: its S3 client could not connect, it answered 5xx
            server_log = dep.server.log_path.read_text(errors="replace")
            assert "Could not connect to the endpoint URL" in server_log and " 500 " in server_log, server_log[-3000:]
    lap("checks_s")
    _check_loads_elsewhere(loader, trainers, registered)
    lap("load_elsewhere_s")
    print(
        f"\nS3 {mode}: saves={sum(len(t.saved()) for t in trainers)} "
        f"kept_versions={sum(len(v) for v in registered.values())} checkpoint_dirs_now={len(bucket.current)} "
        f"deleted_dirs={len(set(bucket.history) - set(bucket.current))} "
        + " ".join(f"{k}={v:.1f}" for k, v in timings.items())
    )
