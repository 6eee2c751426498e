"""A fork server for the power-loss trials: imports torch, MLflow and mlflow_persist once (5-7 s here), starts
no threads, and forks one child per trainer or checker, so each trial costs a fork instead of an interpreter.

Protocol: one JSON object per line on stdin, one JSON reply per line on the original stdout.
- {"op": "train", "uri", "acks", "progress", "log", "seed", "trial", "mode"} -> {"pid"}: fork a trainer
  (trainer()); mode "train" (default) trains and saves until killed, "ack_then_die" saves once and SIGKILLs
  itself as soon as the save is acknowledged.
- {"op": "kill", "pid"} -> {"status"}: SIGKILL the child and reap it; returns once it is gone.
- {"op": "wait", "pid"} -> {"status"}: reap a child that ends by itself.
- {"op": "verify", "uri", "acks", "out", "log", "cache", "full"} -> {"status", "result"}: fork a checker, wait,
  read its JSON. With `cache` (a JSON file outside the mount), a version whose registry record and files are
  exactly as they were when an earlier checker loaded it is not loaded again: LazyFS reports which nodes
  changed since that checker (changed_nodes()), so an untouched version costs no filesystem call at all, and
  a touched one is compared by version_signature(); `full` ignores the cache.
- {"op": "exit"}: leave.
The first reply is {"ready": true, "threads": n, "import_s": s} once the imports are done.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

MODEL = "net"
#: The periodic window the trainers keep. Small enough that retention deletes versions in the default run (about
#: 300 versions), so deletion is cut too; the checker accepts a missing acknowledged periodic save only when at
#: least this many newer periodic versions are registered (retention keeps the newest ones).
KEEP_PERIODIC = 100
TRAINER_MAX_SECONDS = 60.0  # a trainer the test forgot to kill ends itself
STEP_SLEEP_SECONDS = 0.03  # paces training: a few versions per trial keep the all-versions check affordable


# ---------------------------------------------------------------------------------------------- shared


def state_digest(model_state: Any, optimizer_state: Any) -> str:
    """sha256 over the tensors and values of the model and optimizer state (key order independent)."""
    import torch

    digest = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            tensor = value.detach().to("cpu").contiguous()
            digest.update(f"T{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, dict):
            digest.update(b"{")
            for key in sorted(value, key=repr):
                digest.update(repr(key).encode())
                feed(value[key])
            digest.update(b"}")
        elif isinstance(value, (list, tuple)):
            digest.update(b"[")
            for item in value:
                feed(item)
            digest.update(b"]")
        else:
            digest.update(repr(value).encode())

    feed({"model": model_state, "optimizer": optimizer_state})
    return digest.hexdigest()


def append_durably(path: str, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_records(path: str) -> list[dict[str, Any]]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def make_model() -> tuple[Any, Any]:
    import torch

    model = torch.nn.Sequential(
        torch.nn.Linear(32, 128), torch.nn.ReLU(), torch.nn.Linear(128, 128), torch.nn.ReLU(), torch.nn.Linear(128, 1)
    )
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def config(uri: str) -> Any:
    import mlflow_persist as mp

    return mp.PersistConfig(
        tracking_uri=uri,
        min_free_disk_mb=0,
        min_free_disk_percent=0,
        log_system_metrics=False,
        keep_best=1000,
        keep_periodic=KEEP_PERIODIC,
        keep_final=1000,
        periodic_every_steps=3,
        scheduler_interval_seconds=1.0,
        partial_sweep_age_seconds=0,
    )


# ---------------------------------------------------------------------------------------------- children


def trainer(cmd: dict[str, Any]) -> None:
    """Restore from the store, then train and save until killed; every save known to be registered is
    appended (fsynced) to the acknowledgement file outside the mount, with the digest of the state this
    process handed to save()."""
    import torch

    import mlflow_persist as mp

    started = time.monotonic()
    torch.manual_seed(cmd["seed"])
    model, optimizer = make_model()
    persist = mp.Persistence(config(cmd["uri"]), install_signal_handlers=False)
    handle = persist.track(MODEL, model, optimizer=optimizer)
    info = handle.restore()
    if cmd.get("mode") == "ack_then_die":
        # The most adversarial moment: power goes right after the trainer saw its save acknowledged.
        digest = state_digest(model.state_dict(), optimizer.state_dict())
        job = handle.save("periodic")
        assert job is not None and job.done.wait(60), "the save did not finish"
        if job.outcome == "saved":
            append_durably(
                cmd["acks"],
                {
                    "trial": cmd["trial"],
                    "version": job.result.version,
                    "step": handle.current_step,
                    "digest": digest,
                    "category": job.category,
                },
            )
        os.kill(os.getpid(), signal.SIGKILL)
    append_durably(
        cmd["progress"],
        {
            "trial": cmd["trial"],
            "event": "ready",
            "restored": info.version if info else None,
            "restored_step": info.step if info else None,
            "restored_digest": state_digest(model.state_dict(), optimizer.state_dict()) if info else None,
            "startup_s": round(time.monotonic() - started, 3),
            "at": time.time(),  # compared with the moment an armed cut fired (lazyfs)
        },
    )
    pending: list[tuple[Any, str, int]] = []

    def acknowledge() -> None:
        for item in list(pending):
            job, digest, step = item
            if not job.done.is_set():
                continue
            pending.remove(item)
            if job.outcome == "saved" and job.result is not None:
                append_durably(
                    cmd["acks"],
                    {
                        "trial": cmd["trial"],
                        "version": job.result.version,
                        "step": step,
                        "digest": digest,
                        "category": job.category,
                    },
                )

    generator = torch.Generator().manual_seed(cmd["seed"])
    while time.monotonic() - started < TRAINER_MAX_SECONDS:
        x = torch.randn(64, 32, generator=generator)
        loss = (model(x) - x[:, :4].sum(dim=1, keepdim=True)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        handle.step(loss=loss.item())
        if handle.current_step % 2 == 0:
            digest = state_digest(model.state_dict(), optimizer.state_dict())  # what save() snapshots now
            job = handle.save("periodic")
            if job is not None:
                pending.append((job, digest, handle.current_step))
        acknowledge()
        time.sleep(STEP_SLEEP_SECONDS)
    persist.flush(timeout=60)
    acknowledge()


def checkpoint_dirs(uri: str, step: int) -> list[str]:
    """Checkpoint directories of `step` that exist under the store's artifact root (diagnosis of a loss)."""
    from mlflow_persist._policy.versions import checkpoint_dirname

    root = Path(uri[len("sqlite:///") :]).parent
    prefix = checkpoint_dirname(MODEL, step).rsplit("-", 1)[0]
    return sorted(str(p.relative_to(root)) for p in root.glob(f"mlruns/*/artifacts/checkpoints/*{prefix}-*"))


def version_signature(info: Any) -> list[Any] | None:
    """What a version is made of, as the registry and the filesystem say now: its registry record (source,
    tags) and, for every entry of its directory, the inode, size, mode and modification time in ns.

    LazyFS (lazyfs.py) changes a file's bytes only by a write, truncate or fallocate, each of which moves its
    mtime (or, fallocate, its size), and a power cut (a torn write included) gives every file or directory it
    changes a new mtime: so a version whose signature equals the one recorded when it was loaded and verified
    holds the same bytes now, and loading it again would verify the same bytes. None when the version has no
    local directory (it is then loaded)."""
    from mlflow_persist._store.translate import local_path

    path = local_path(info.source)
    if path is None or not path.is_dir():
        return None
    entries = []
    for entry in sorted(path.rglob("*")):
        st = entry.lstat()
        entries.append([str(entry.relative_to(path)), st.st_ino, st.st_size, st.st_mode, st.st_mtime_ns])
    st = path.lstat()
    signature: list[Any] = json.loads(  # as stored in the cache file
        json.dumps([info.source, sorted(info.tags.items()), [st.st_ino, st.st_mtime_ns], entries])
    )
    return signature


def path_nodes(info: Any, root: Path) -> list[int] | None:
    """The inode numbers of every directory from `root` down to the version's directory, and of every entry
    in it: the nodes a load of the version goes through (None without a local directory)."""
    from mlflow_persist._store.translate import local_path

    path = local_path(info.source)
    if path is None or not path.is_dir() or not path.is_relative_to(root):
        return None
    chain = [path, *path.parents[: len(path.relative_to(root).parts)]]
    return sorted({p.lstat().st_ino for p in chain} | {entry.lstat().st_ino for entry in path.rglob("*")})


def changed_nodes(root: Path, since: int | None) -> tuple[int, set[int]] | None:
    """(sequence number now, inodes changed after `since`) from the LazyFS mounted on `root` (lazyfs.py:
    changed_since); None when `root` is no LazyFS or `since` is None (nothing to compare with)."""
    ctl, answer = root / ".lazyfs_ctl", root / ".lazyfs_answer"
    if not ctl.exists():
        return None
    with open(ctl, "wb", buffering=0) as handle:
        handle.write(json.dumps({"op": "changed_since", "seq": since or 0}).encode())
    with open(answer, "rb", buffering=0) as handle:
        reply = json.loads(handle.read())
    return (reply["seq"], set(reply["inos"])) if since is not None else (reply["seq"], set())


def registry_records(uri: str, store: Any) -> list[Any]:
    """Every version of MODEL as the registry's tables hold it (what `list_versions` returns, sources
    relocated the same way), read with two SQL queries: MLflow's search builds an entity per version, and
    doing that for every version after every cut made the check grow quadratically with the trials."""
    import sqlite3

    from mlflow_persist._policy.versions import VersionInfo

    connection = sqlite3.connect(uri[len("sqlite:///") :])
    try:
        rows = connection.execute(
            "SELECT version, source, run_id, creation_time FROM model_versions "
            "WHERE name = ? AND current_stage != 'Deleted_Internal' ORDER BY version",
            (MODEL,),
        ).fetchall()
        tags: dict[int, dict[str, str]] = {}
        for version, key, value in connection.execute(
            "SELECT version, key, value FROM model_version_tags WHERE name = ?", (MODEL,)
        ):
            tags.setdefault(int(version), {})[key] = value
    finally:
        connection.close()
    return [
        VersionInfo(MODEL, int(v), store.relocate_uri(source), run_id, tags.get(int(v), {}), [], created)
        for v, source, run_id, created in rows
    ]


def record_of(info: Any) -> list[Any]:
    """A version's registry record (number, source, tags) as the cache file holds it (JSON: lists only)."""
    record: list[Any] = json.loads(json.dumps([info.version, info.source, sorted(info.tags.items())]))
    return record


def checker(cmd: dict[str, Any]) -> dict[str, Any]:
    """After the cut ("reboot"): the store opens; every registered version verifies and loads; every
    acknowledged version is registered with the recorded step and digest; no staging directory is a version's
    source; latest loads.

    Incremental: the registry is read with one query (registry_records); a version verified by an earlier
    checker with the same registry record is not loaded again when LazyFS reports no change to any node on
    its path since (changed_nodes, no filesystem call per version) or, failing that, when its signature
    (version_signature) is unchanged; the others are loaded through the library (`get_version`,
    `load_version`). Per trial that costs the new versions, not all of them. With `full`, every version is loaded and the library's own
    `list_versions` must list exactly what the query found."""
    import mlflow_persist as mp
    from mlflow_persist._store.mlflow_store import MlflowStore

    uri = cmd["uri"]
    clock = time.monotonic()
    seconds: dict[str, float] = {}

    def lap(what: str) -> None:
        nonlocal clock
        now = time.monotonic()
        seconds[what] = seconds.get(what, 0.0) + now - clock
        clock = now

    store = MlflowStore(uri)  # opening it rolls a hot journal back
    lap("open")
    versions = registry_records(uri, store)
    failing: list[dict[str, Any]] = []
    if cmd.get("full"):
        listed = [record_of(info) for info in store.list_versions(MODEL)]
        if listed != [record_of(info) for info in versions]:
            failing.append({"version": None, "error": "list_versions differs from the registry's tables"})
    lap("list")
    staging: list[dict[str, Any]] = []
    digests: dict[int, str] = {}
    steps: dict[int, int | None] = {}
    cache_path = Path(cmd["cache"]) if cmd.get("cache") else None
    cache: dict[str, Any] = {}
    if cache_path is not None and cache_path.exists() and not cmd.get("full"):
        cache = json.loads(cache_path.read_text())
    known_versions: dict[str, Any] = cache.get("versions", {})
    root = Path(uri[len("sqlite:///") :]).parent  # the mount: the database lies at its root
    changes = changed_nodes(root, cache.get("seq"))  # taken before anything is looked at
    changed = changes[1] if changes is not None and cache.get("seq") is not None else None
    lap("changes")
    verified: dict[str, Any] = {}
    reused = unstated = 0
    for info in versions:
        if any(part.startswith(".tmp-") for part in info.source.split("/")):
            staging.append({"version": info.version, "source": info.source})
        record = record_of(info)
        known = known_versions.get(str(info.version))
        if known is not None and known["record"] == record:
            if changed is not None and known["nodes"] is not None and changed.isdisjoint(known["nodes"]):
                # No node on the version's path changed since it was verified: the same bytes (no stat needed).
                digests[info.version], steps[info.version] = known["digest"], known["step"]
                verified[str(info.version)] = known
                reused += 1
                unstated += 1
                continue
            signature = version_signature(info)
            lap("signatures")
            if signature is not None and known["signature"] == signature:
                digests[info.version], steps[info.version] = known["digest"], known["step"]
                verified[str(info.version)] = {**known, "nodes": path_nodes(info, root)}
                reused += 1
                continue
        full = bool(cmd.get("full"))  # the last check: nothing will reuse what it verified, so no stat is taken
        signature = None if full else version_signature(info)
        nodes = None if full else path_nodes(info, root)
        lap("signatures")
        try:
            state = store.load_version(store.get_version(MODEL, info.version))
        except Exception as exc:  # noqa: BLE001 - reported, the test asserts on it
            failing.append({"version": info.version, "source": info.source, "error": f"{type(exc).__name__}: {exc}"})
            lap("load")
            continue
        digests[info.version] = state_digest(state.model_state, state.optimizer_state)
        steps[info.version] = state.step
        lap("load")
        if not full and signature is not None and signature == version_signature(info):  # unchanged while loaded
            verified[str(info.version)] = {
                "record": record,
                "signature": signature,
                "nodes": nodes,
                "digest": digests[info.version],
                "step": state.step,
            }
        lap("signatures")
    if cache_path is not None:
        cache_path.write_text(json.dumps({"seq": changes[0] if changes else None, "versions": verified}))
    lap("cache")
    lost: list[dict[str, Any]] = []
    skip = {(a["trial"], a["version"]) for a in cmd.get("already_lost", [])}
    acks = [a for a in read_records(cmd["acks"]) if (a["trial"], a["version"]) not in skip]
    periodic = sorted(info.version for info in versions if info.category == "periodic")
    retired = 0
    for ack in acks:
        version = ack["version"]
        if version not in digests and ack["category"] == "periodic" and all(v.version != version for v in versions):
            newer = len(periodic) - bisect.bisect_right(periodic, version)
            if newer >= KEEP_PERIODIC:  # out of the periodic window: retention's to delete
                retired += 1
                continue
        if version not in digests:
            reason = "not registered" if all(v.version != version for v in versions) else "does not load"
        elif digests[version] != ack["digest"]:
            reason = "digest differs from the acknowledged state"
        elif steps[version] != ack["step"]:
            reason = f"step {steps[version]} instead of {ack['step']}"
        else:
            continue
        lost.append({**ack, "reason": reason, "artifact_dirs_on_disk": checkpoint_dirs(uri, ack["step"])})
    # `models:/net/latest` is the newest version not tagged corrupt (MlflowRegistry.resolve). Resolving it lists
    # every version through MLflow (~5 ms each here), so an incremental check finds that version in the records
    # and requires it verified above; the full check loads `models:/net/latest` itself and compares.
    intact = [info.version for info in versions if not info.corrupt]
    latest: dict[str, Any] = {}
    if versions and cmd.get("full"):
        try:
            state = mp.load_checkpoint(f"models:/{MODEL}/latest", tracking_uri=uri)
            latest = {"version": state.version, "step": state.step}
            if not intact or state.version != intact[-1]:
                latest["error"] = f"latest is v{state.version}, the newest intact version v{intact[-1:]}"
        except Exception as exc:  # noqa: BLE001
            latest = {"error": f"{type(exc).__name__}: {exc}"}
    elif versions:
        if not intact:
            latest = {"error": "every version is tagged corrupt: models:/net/latest resolves to nothing"}
        elif intact[-1] not in digests:
            latest = {"error": f"the newest intact version v{intact[-1]} (models:/net/latest) does not load"}
        else:
            latest = {"version": intact[-1], "step": steps[intact[-1]]}
    lap("latest")
    newest_ack = max(acks, key=lambda a: a["version"], default=None)
    return {
        "versions": len(versions),
        "max_version": versions[-1].version if versions else None,
        "failing": failing,
        "staging_sources": staging,
        "lost": lost,
        "acks": len(acks),
        "retired": retired,
        "newest_ack": newest_ack,
        "latest": latest,
        "loaded": len(versions) - reused - len(failing),
        "reused": reused,
        "reused_without_stat": unstated,
        "seconds": seconds,
    }


# ---------------------------------------------------------------------------------------------- server


def _child(log: str, body: Any) -> None:
    """In the forked child: stdio away from the protocol pipes, run, and leave without cleanup handlers."""
    code = 0
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        import torch

        torch.set_num_threads(1)
        body()
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def warm_up() -> None:
    """The first model, backward pass, optimizer step and torch.save of a process cost ~1.5 s here, and the
    first MLflow query configures the ORM: pay them once, before forking. One intra-op thread, so no OpenMP pool exists to be broken by fork."""
    import io

    import torch

    torch.set_num_threads(1)
    model, optimizer = make_model()
    loss = model(torch.randn(4, 32)).pow(2).mean()
    loss.backward()
    optimizer.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    state_digest(model.state_dict(), optimizer.state_dict())
    # SQLAlchemy configures MLflow's ORM mappers at the first query of a process (~0.25 s here): once, here,
    # instead of in every trainer and checker.
    from sqlalchemy.orm import configure_mappers

    configure_mappers()


def main() -> None:
    replies = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # stray prints of libraries go to stderr, never into the protocol
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    started = time.monotonic()
    import mlflow  # noqa: F401
    import mlflow.store.model_registry.sqlalchemy_store  # noqa: F401
    import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
    import torch  # noqa: F401

    import mlflow_persist  # noqa: F401
    import mlflow_persist._store.mlflow_store  # noqa: F401

    warm_up()
    replies.write(
        json.dumps(
            {"ready": True, "threads": threading.active_count(), "import_s": round(time.monotonic() - started, 2)}
        )
        + "\n"
    )
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "exit":
            break
        if op == "train":
            pid = os.fork()
            if pid == 0:
                _child(cmd["log"], lambda: trainer(cmd))  # noqa: B023
            replies.write(json.dumps({"pid": pid}) + "\n")
        elif op == "kill":
            try:
                os.kill(cmd["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, status = os.waitpid(cmd["pid"], 0)
            replies.write(json.dumps({"status": status}) + "\n")
        elif op == "wait":
            _, status = os.waitpid(cmd["pid"], 0)
            replies.write(json.dumps({"status": status}) + "\n")
        elif op == "verify":
            pid = os.fork()
            if pid == 0:
                _child(cmd["log"], lambda: Path(cmd["out"]).write_text(json.dumps(checker(cmd))))  # noqa: B023
            _, status = os.waitpid(pid, 0)
            result = json.loads(Path(cmd["out"]).read_text()) if os.path.exists(cmd["out"]) else None
            replies.write(json.dumps({"status": status, "result": result}) + "\n")
        else:
            replies.write(json.dumps({"error": f"unknown op {op!r}"}) + "\n")


if __name__ == "__main__":
    main()
