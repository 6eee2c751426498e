"""Test helpers for users of mlflow-persist: `MemoryStore`, an in-memory `CheckpointStore`.

    from mlflow_persist import Persistence, PersistConfig
    from mlflow_persist.testing import MemoryStore

    store = MemoryStore()
    store.fail("register", times=2)            # the next two registrations raise
    with Persistence(PersistConfig(), store=store) as persist:
        handle = persist.track("net", model, optimizer)
        ...
    assert store.list_versions("net")[-1].category == "final"

No MLflow, no disk, deterministic: checkpoints are serialized exactly as on disk (torch.save, XXH3-128) and
verified and loaded with `weights_only=True` as on disk, so restore behaves as it does against MLflow.

`MemoryStore(remote=True)` behaves like a tracking server: checkpoints go through the durable local outbox
(the config's `outbox_dir`) first, so `fail("write", times=None)` simulates a server outage.

Fault injection, per stage (`write`, `register`, `alias`, `delete`, `load`, `metrics`, `tag`: the
completion marker of a system checkpoint):
- `fail(stage, times=1, error=None)`: the next `times` calls raise `error` (default: a StoreUnavailableError);
  `times=None` fails every call until `heal()`.
- `hang(stage, seconds, times=1)`: the next `times` calls block for `seconds` before running.
- `calls[stage]` counts the calls of each stage, failed ones included.

Longer than 400 lines: one class implements the whole `CheckpointStore` protocol with its faults, which the
MLflow store spreads over its parts; a store a test reads is best read as one.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow_persist._format.digest import digest_bytes
from mlflow_persist._format.naming import validate_model_name
from mlflow_persist._format.payload import (
    CHECKPOINT_FILE,
    MANIFEST_FILE,
    CheckpointState,
    WrittenCheckpoint,
    checkpoint_files,
    read_checkpoint_bytes,
    read_checkpoint_dir,
    serialize,
)
from mlflow_persist._policy.versions import (
    BEST_ALIAS,
    CHECKPOINTS_DIR,
    RUN_KEY_TAG,
    RunSummary,
    VersionInfo,
    checkpoint_dirname,
    tag,
)
from mlflow_persist.errors import CheckpointCorruptError, NotFoundError, StoreError, StoreUnavailableError

STAGES = ("write", "register", "alias", "delete", "load", "metrics", "tag")


@dataclass
class _Fault:
    remaining: int | None  # None: every call
    error: BaseException | None = None
    seconds: float = 0.0


@dataclass
class MemoryRun:
    run_id: str
    key: str
    status: str = "RUNNING"
    tags: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, list[tuple[int, float, int]]] = field(default_factory=dict)  # key -> [(step, value, ts)]


class MemoryStore:
    """An in-memory `CheckpointStore` for tests, with fault injection (see the module docstring)."""

    description = "memory://"
    is_remote = False
    lock_is_shared = True

    def __init__(self, remote: bool = False) -> None:
        """`remote=True`: behave like a tracking server, so checkpoints wait in the durable local outbox
        (`outbox_dir`) until the store accepts them; a `write` fault then is an outage."""
        self.is_remote = remote
        self._guard = threading.RLock()
        self._locks: dict[str, threading.RLock] = defaultdict(threading.RLock)
        self._faults: dict[str, list[_Fault]] = defaultdict(list)
        self.calls: dict[str, int] = {stage: 0 for stage in STAGES}
        self.runs: dict[str, MemoryRun] = {}
        self._artifacts: dict[str, bytes] = {}  # source -> checkpoint.pt bytes
        self._beside: dict[str, dict[str, bytes]] = {}  # source -> the files beside checkpoint.pt, where any
        self._models: dict[str, dict[int, VersionInfo]] = {}
        self._next_version: dict[str, int] = {}
        self._generations: dict[str, int] = {}
        self._aliases: dict[str, dict[str, int]] = {}
        self._clock = 1_700_000_000_000

    # fault injection -----------------------------------------------------------------------------------
    def fail(self, stage: str, times: int | None = 1, error: BaseException | None = None) -> None:
        """The next `times` calls of `stage` raise `error` (None: a StoreUnavailableError); `times=None`:
        every call until `heal()`."""
        self._check_stage(stage)
        with self._guard:
            self._faults[stage].append(
                _Fault(
                    times,
                    error or StoreUnavailableError(f"MemoryStore: injected {stage} failure; the store is unreachable"),
                )
            )

    def hang(self, stage: str, seconds: float, times: int | None = 1) -> None:
        """The next `times` calls of `stage` block for `seconds` first (`times=None`: every call)."""
        self._check_stage(stage)
        with self._guard:
            self._faults[stage].append(_Fault(times, None, seconds))

    def heal(self, stage: str | None = None) -> None:
        """Remove the faults of `stage` (every stage when None)."""
        with self._guard:
            for name in [stage] if stage else list(self._faults):
                self._faults.pop(name, None)

    @staticmethod
    def _check_stage(stage: str) -> None:
        if stage not in STAGES:
            raise ValueError(f"MemoryStore has no stage {stage!r}; use one of {', '.join(STAGES)}.")

    def _enter(self, stage: str) -> None:
        with self._guard:
            self.calls[stage] += 1
            fault = None
            for candidate in self._faults.get(stage, []):
                if candidate.remaining is None or candidate.remaining > 0:
                    fault = candidate
                    if candidate.remaining is not None:
                        candidate.remaining -= 1
                    break
            self._faults[stage] = [f for f in self._faults.get(stage, []) if f.remaining is None or f.remaining > 0]
        if fault is None:
            return
        if fault.seconds:
            time.sleep(fault.seconds)
        if fault.error is not None:
            raise copy.copy(fault.error)

    def _now_ms(self) -> int:
        self._clock += 1  # deterministic and strictly increasing
        return self._clock

    # runs and metrics ----------------------------------------------------------------------------------
    def ensure_run(
        self,
        key: str,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        previous_key: str | None = None,
        run_id: str | None = None,
    ) -> str:
        with self._guard:
            if run_id is not None:  # another tool's run: NotFoundError when missing, tagged, its status kept
                self._run(run_id).tags.update(tags or {})
                return run_id
            for run in self.runs.values():
                if run.key == key:
                    run.status = "RUNNING"
                    return run.run_id
            for run in self.runs.values():
                if previous_key is not None and run.key == previous_key:
                    if all(run.tags.get(k) == v for k, v in (tags or {}).items()):
                        run.key, run.status = key, "RUNNING"
                        run.tags[RUN_KEY_TAG] = key
                        return run.run_id
            run_id = f"run{len(self.runs) + 1:04d}"
            self.runs[run_id] = MemoryRun(run_id, key, tags={RUN_KEY_TAG: key, **(tags or {})})
            return run_id

    def _run(self, run_id: str) -> MemoryRun:
        try:
            return self.runs[run_id]
        except KeyError:
            raise NotFoundError(f"MemoryStore has no run {run_id!r}; open it with ensure_run() first.") from None

    def finish_run(self, run_id: str, status: str = "FINISHED") -> None:
        with self._guard:
            self._run(run_id).status = status

    def set_run_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        with self._guard:
            self._run(run_id).tags.update({k: str(v) for k, v in tags.items()})

    def log_metrics(self, run_id: str, rows: Sequence[tuple[str, float, int, int]]) -> None:
        self._enter("metrics")
        with self._guard:
            run = self._run(run_id)
            for key, value, ts, step in rows:
                run.metrics.setdefault(key, []).append((int(step), float(value), int(ts)))

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float, int]]:
        """(step, value, timestamp_ms) of every logged value of `key`, in logging order."""
        with self._guard:
            return list(self._run(run_id).metrics.get(key, []))

    def run_summary(self, run_id: str) -> RunSummary | None:
        with self._guard:
            run = self.runs.get(run_id)
            if run is None:
                return None
            latest = {key: values[-1][1] for key, values in run.metrics.items() if values}
            return RunSummary(run.status, dict(run.tags), latest)

    def alias_moves(self, name: str) -> list[Any]:
        return []  # operator alias moves are an MLflow registered-model tag log

    # checkpoint bytes ----------------------------------------------------------------------------------
    def write_checkpoint(
        self, run_id: str, model_name: str, step: int, payload: Mapping[str, Any]
    ) -> tuple[str, WrittenCheckpoint]:
        self._enter("write")
        data = serialize(payload)
        self._run(run_id)
        source = f"memory://{run_id}/{CHECKPOINTS_DIR}/{checkpoint_dirname(model_name, step)}"
        with self._guard:
            self._artifacts[source] = data
        return source, WrittenCheckpoint(Path(source), digest_bytes(data), len(data))

    def upload_checkpoint_files(self, run_id: str, directory: Path, dirname: str) -> str:
        self._enter("write")
        data = (Path(directory) / CHECKPOINT_FILE).read_bytes()
        (Path(directory) / MANIFEST_FILE).read_bytes()  # a directory without its manifest is incomplete
        extra = checkpoint_files(directory)[2:]  # model.safetensors (weights_format="safetensors")
        beside = {name: (Path(directory) / name).read_bytes() for name in (MANIFEST_FILE, *extra)} if extra else {}
        source = f"memory://{run_id}/{CHECKPOINTS_DIR}/{dirname}"
        with self._guard:
            self._artifacts[source] = data
            if beside:
                self._beside[source] = beside
        return source

    def load_version(self, info: VersionInfo) -> CheckpointState:
        self._enter("load")
        with self._guard:
            data = self._artifacts.get(info.source)
        if data is None:
            raise CheckpointCorruptError(
                f"The artifacts of {info.name} v{info.version} are missing; they were deleted."
            )
        with self._guard:
            beside = self._beside.get(info.source)
        if beside:
            with tempfile.TemporaryDirectory(prefix="mlflow-persist-memory-") as tmp:
                for name, content in {CHECKPOINT_FILE: data, **beside}.items():
                    (Path(tmp) / name).write_bytes(content)
                state = read_checkpoint_dir(Path(tmp), expected=info.digest)
        else:
            state = read_checkpoint_bytes(data, info.digest, label=f"{info.name} v{info.version}")
        state.name, state.version = info.name, info.version
        state.category = info.category if info.category != "unknown" else state.category
        return state

    def delete_artifacts(self, info: VersionInfo) -> None:
        self._enter("delete")
        with self._guard:
            self._artifacts.pop(info.source, None)
            self._beside.pop(info.source, None)

    def sweep_partial_checkpoints(
        self, run_id: str, max_age_seconds: float = 60.0, owner: str | None = None, trust_markers: bool = True
    ) -> list[str]:
        return []  # writes are atomic in memory, and an unregistered one is discarded when its save is given up

    def discard_unregistered(self, run_id: str, source: str) -> bool:
        self._enter("delete")
        with self._guard:
            if any(v.source == source for versions in self._models.values() for v in versions.values()):
                return False
            return self._artifacts.pop(source, None) is not None

    def artifact_sources(self) -> set[str]:
        """The sources whose bytes are stored (for tests of what deletion removed)."""
        with self._guard:
            return set(self._artifacts)

    def corrupt_artifact(self, source: str, data: bytes = b"garbage") -> None:
        """Replace the stored bytes of `source` (a test of damaged checkpoints)."""
        with self._guard:
            if source not in self._artifacts:
                raise NotFoundError(f"MemoryStore holds no artifacts at {source!r}.")
            self._artifacts[source] = data

    # registry ------------------------------------------------------------------------------------------
    def register_version(
        self,
        name: str,
        source: str,
        run_id: str | None,
        tags: Mapping[str, Any],
        retried: bool = True,
        description: str | None = None,
    ) -> VersionInfo:
        self._changed(name)
        self._enter("register")
        validate_model_name(name)
        category = str(tags.get(tag("category"), "")) or "unknown"
        with self._guard:
            if source not in self._artifacts:
                raise StoreError(f"MemoryStore: cannot register {name} from {source!r}, which holds no bytes.")
            versions = self._models.setdefault(name, {})
            for existing in sorted(versions.values(), key=lambda v: v.version):
                if existing.source == source and existing.category == category:
                    return copy.deepcopy(existing)
            number = self._next_version.get(name, 0) + 1
            self._next_version[name] = number
            info = VersionInfo(
                name, number, source, run_id, {k: str(v) for k, v in tags.items()}, [], self._now_ms(), description
            )
            versions[number] = info
            return copy.deepcopy(info)

    def list_versions(self, name: str) -> list[VersionInfo]:
        with self._guard:
            return [self._with_aliases(v) for v in sorted(self._models.get(name, {}).values(), key=lambda v: v.version)]

    def newest_versions(self, name: str) -> Iterator[VersionInfo]:
        yield from reversed(self.list_versions(name))

    def _with_aliases(self, info: VersionInfo) -> VersionInfo:
        result = copy.deepcopy(info)
        result.aliases = sorted(a for a, n in self._aliases.get(info.name, {}).items() if n == info.version)
        return result

    def get_version(self, name: str, version: int | str) -> VersionInfo:
        with self._guard:
            try:
                return self._with_aliases(self._models[name][int(version)])
            except (KeyError, ValueError):
                raise NotFoundError(f"Model {name!r} has no version {version}.") from None

    def alias_version(self, name: str, alias: str = BEST_ALIAS) -> VersionInfo | None:
        with self._guard:
            number = self._aliases.get(name, {}).get(alias)
            if number is None or number not in self._models.get(name, {}):
                return None
            return self._with_aliases(self._models[name][number])

    def set_alias(self, name: str, alias: str, version: int) -> None:
        self._changed(name)
        self._enter("alias")
        if alias.lower() == "latest":
            raise StoreError("The alias name 'latest' is reserved (models:/<name>/latest); choose another.")
        with self._guard:
            if int(version) not in self._models.get(name, {}):
                raise NotFoundError(f"Model {name!r} has no version {version} to point {alias!r} at.")
            self._aliases.setdefault(name, {})[alias] = int(version)

    def delete_alias(self, name: str, alias: str) -> None:
        self._changed(name)
        self._enter("alias")
        with self._guard:
            self._aliases.get(name, {}).pop(alias, None)

    def clear_corrupt(self, name: str, version: int) -> None:
        self._changed(name)
        with self._guard:
            info = self._models.get(name, {}).get(int(version))
            if info is not None:
                info.tags.pop(tag("corrupt"), None)
                info.tags.pop(tag("corrupt_reason"), None)

    def mark_corrupt(self, name: str, version: int, reason: str) -> None:
        self._changed(name)
        with self._guard:
            info = self._models.get(name, {}).get(int(version))
            if info is not None:
                info.tags[tag("corrupt")] = "true"
                info.tags[tag("corrupt_reason")] = reason[:4000]

    def set_version_tag(self, name: str, version: int, key: str, value: str) -> None:
        self._changed(name)
        self._enter("tag")
        with self._guard:
            self.get_version(name, version)
            self._models[name][int(version)].tags[key] = str(value)

    def delete_version(self, info: VersionInfo) -> None:
        self._changed(info.name)
        self._enter("delete")
        with self._guard:
            self._models.get(info.name, {}).pop(info.version, None)
            aliases = self._aliases.get(info.name, {})
            for alias in [a for a, n in aliases.items() if n == info.version]:
                del aliases[alias]  # as in MLflow: deleting a version removes its aliases

    def registry_generation(self, name: str) -> int:
        return self._generations.get(name, 0)

    def _changed(self, name: str) -> None:
        with self._guard:
            self._generations[name] = self._generations.get(name, 0) + 1

    def managed_models(self, prefix: str = "") -> list[str]:
        with self._guard:
            return sorted(name for name in self._models if name.startswith(prefix))

    # coordination and disk -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self, key: str, timeout: float = 120.0) -> Iterator[None]:
        with self._guard:
            lock = self._locks[key]
        if not lock.acquire(timeout=timeout):
            raise StoreError(f"MemoryStore: lock {key!r} was not released within {timeout:.0f} s.")
        try:
            yield
        finally:
            lock.release()

    def checkpoint_disk_path(self, run_id: str | None = None) -> Path | None:
        return None


__all__ = ["STAGES", "MemoryRun", "MemoryStore"]
