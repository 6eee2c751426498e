"""A durable local outbox for checkpoints bound for a remote tracking server.

Each checkpoint is first written completely to local disk (fsynced, renamed into place), then uploaded and
registered. While the server is unreachable the entries wait on disk, in order; they are registered in
that order when it returns, also after a restart. Training never waits on the network.

Layout: `<root>/<registered model>/<seq:012d>-<dirname>/` holding checkpoint.pt, manifest.json and
entry.json (what registration needs: run id, category, step, value, improvement, extra categories).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import platformdirs
from filelock import FileLock

from mlflow_persist._format.atomic import atomic_directory, durable_directory, is_staging
from mlflow_persist._format.digest import SHA256, Digest, digest_file
from mlflow_persist._format.payload import CHECKPOINT_FILE, MANIFEST_FILE, WrittenCheckpoint, write_checkpoint_dir
from mlflow_persist._observe.logs import package_logger

__all__ = [
    "ENTRY_FILE",
    "QUARANTINE_DIR",
    "QUARANTINE_KEEP_DAYS",
    "Outbox",
    "OutboxEntry",
    "default_outbox_root",
]

log = package_logger("mlflow_persist")

ENTRY_FILE = "entry.json"
FAILURES_FILE = "failures.json"  # failed registrations of an entry the store refused (not an outage)
QUARANTINE_DIR = "_quarantine"
#: Entries set aside (unreadable, or their run gone) are kept this long for the operator, then removed.
QUARANTINE_KEEP_DAYS = 30


@dataclass
class OutboxEntry:
    model: str
    registered_name: str
    run_id: str
    dirname: str
    category: str
    step: int
    value: float | None
    improvement: float | None
    created_at: str
    digest_algorithm: str
    digest: str
    size_bytes: int
    also: list[str] = field(default_factory=list)
    sequence: int = 0
    path: str = ""
    tags: dict[str, str] = field(default_factory=dict)  # more version tags (a cut's, an episode monitor's)

    @property
    def directory(self) -> Path:
        return Path(self.path)

    @property
    def checksum(self) -> Digest:
        return Digest(self.digest_algorithm, self.digest)

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path) -> OutboxEntry:
        """The entry recorded in `data`; TypeError when it is not an entry this version knows (a field missing,
        or one a newer version added)."""
        if not isinstance(data, dict):
            raise TypeError("an outbox entry record is a JSON object")
        data = dict(data)
        if "sha256" in data:  # written by a version before checksums named their algorithm
            sha256 = data.pop("sha256")
            data.setdefault("digest_algorithm", SHA256)
            data.setdefault("digest", sha256)
        data.pop("path", None)
        return cls(**data, path=str(path))


def default_outbox_root(tracking_uri: str) -> Path:
    """The per-user outbox of one tracking URI (platformdirs' cache directory)."""
    digest = hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]
    return Path(platformdirs.user_cache_dir("mlflow-persist", appauthor=False)) / "outbox" / digest


class Outbox:
    def __init__(self, root: Path) -> None:
        self.root = durable_directory(Path(root))

    def _model_dir(self, registered_name: str) -> Path:
        return durable_directory(self.root / registered_name)

    def lock(self, registered_name: str) -> FileLock:
        return FileLock(str(self._model_dir(registered_name) / ".lock"), timeout=300)

    def put(
        self,
        *,
        model: str,
        registered_name: str,
        run_id: str,
        dirname: str,
        payload: Mapping[str, Any],
        category: str,
        step: int,
        value: float | None,
        improvement: float | None,
        also: list[str],
        tags: Mapping[str, str] | None = None,
    ) -> OutboxEntry:
        """Write the checkpoint durably into the outbox; returns the entry."""
        model_dir = self._model_dir(registered_name)
        with self.lock(registered_name):
            sequence = self._next_sequence(model_dir)
            name = f"{sequence:012d}-{dirname}"
            with atomic_directory(model_dir, name) as staging:
                written: WrittenCheckpoint = write_checkpoint_dir(payload, staging)
                entry = OutboxEntry(
                    model,
                    registered_name,
                    run_id,
                    dirname,
                    category,
                    step,
                    value,
                    improvement,
                    str(payload.get("created_at", "")),
                    written.digest.algorithm,
                    written.digest.hexdigest,
                    written.size_bytes,
                    list(also),
                    sequence,
                    str(model_dir / name),
                    dict(tags or {}),
                )
                data = asdict(entry)
                data.pop("path")
                (staging / ENTRY_FILE).write_text(json.dumps(data), encoding="utf-8")
        return entry

    def entries(self, registered_name: str, sweep: bool = False) -> list[OutboxEntry]:
        """Complete entries of one model, oldest first. Half-written ones (staging, no entry.json) are skipped;
        with `sweep` they are removed, which only a caller holding `lock(registered_name)` may ask for: without
        the lock, a `put()` in progress would lose its staging directory."""
        model_dir = self.root / registered_name
        if not model_dir.is_dir():
            return []
        found = []
        for path in sorted(model_dir.iterdir()):
            if is_staging(path):
                if sweep:
                    shutil.rmtree(path, ignore_errors=True)
                continue
            if not path.is_dir():
                continue
            try:
                data = json.loads((path / ENTRY_FILE).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                if sweep:  # kept, aside, for the operator: its checkpoint may still be whole
                    moved = self._set_aside(path, registered_name)
                    log.error("outbox entry %s has no readable record (%s); moved it to %s", path, exc, moved)
                continue
            try:
                found.append(OutboxEntry.from_json(data, path))
            except TypeError as exc:  # another version's record: left where it is, for that version
                log.warning("outbox entry %s is not one this version can read (%s); skipped", path, exc)
        if sweep:
            self._clean_quarantine(registered_name)
        return sorted(found, key=lambda e: e.sequence)

    def _set_aside(self, path: Path, registered_name: str) -> Path:
        target = self.root / QUARANTINE_DIR / registered_name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), target)
        return target

    def _clean_quarantine(self, registered_name: str, now: float | None = None) -> list[Path]:
        """Remove what was set aside more than QUARANTINE_KEEP_DAYS ago (the operator was told when it was)."""
        folder = self.root / QUARANTINE_DIR / registered_name
        if not folder.is_dir():
            return []
        limit = (time.time() if now is None else now) - QUARANTINE_KEEP_DAYS * 86400
        removed = []
        for path in folder.iterdir():
            try:
                if path.stat().st_mtime < limit:
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
            except OSError:
                continue
        if removed:
            log.info("removed %d outbox entries set aside more than %d days ago", len(removed), QUARANTINE_KEEP_DAYS)
        return removed

    @staticmethod
    def is_intact(entry: OutboxEntry) -> bool:
        """Whether the entry still holds its manifest and a checkpoint file of the recorded size and digest (a
        damaged entry must never become a registered version)."""
        checkpoint = entry.directory / CHECKPOINT_FILE
        try:
            if not (entry.directory / MANIFEST_FILE).is_file() or checkpoint.stat().st_size != entry.size_bytes:
                return False
            expected = entry.checksum
            return digest_file(checkpoint, expected.algorithm).hexdigest == expected.hexdigest
        except (OSError, ValueError):
            return False

    @staticmethod
    def record_failure(entry: OutboxEntry, error: str, now: float | None = None) -> tuple[int, float]:
        """Note one more failed registration of the entry (in its folder, so restarts keep counting); returns
        (failures so far, when the first one happened)."""
        path = entry.directory / FAILURES_FILE
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            count, first = int(record["count"]), float(record["first"])
        except (OSError, ValueError, KeyError, TypeError):
            count, first = 0, time.time() if now is None else now
        count += 1
        staging = path.with_suffix(".tmp")
        staging.write_text(json.dumps({"count": count, "first": first, "last_error": error[:2000]}), encoding="utf-8")
        os.replace(staging, path)
        return count, first

    def quarantine(self, entry: OutboxEntry) -> Path:
        """Move an entry that can never be registered (its run is gone) aside, keeping its bytes."""
        return self._set_aside(entry.directory, entry.registered_name)

    def size_bytes(self, registered_name: str) -> int:
        """Bytes of the complete entries of one model."""
        return sum(e.size_bytes for e in self.entries(registered_name))

    def make_room(
        self, registered_name: str, need_bytes: int, max_bytes: float, disk_short: Callable[[float], bool]
    ) -> list[OutboxEntry]:
        """Before a `put` of `need_bytes`: drop the oldest periodic entries while the outbox would exceed
        `max_bytes` or `disk_short(need_mb)` says the disk is short. Performance and final entries are never
        dropped. Returns what was dropped (callers hold `lock(registered_name)`)."""
        dropped = []
        entries = self.entries(registered_name)
        total = sum(e.size_bytes for e in entries)
        need_bytes = max([need_bytes, *(e.size_bytes for e in entries[-3:])])  # tensors alone underestimate it
        periodic = [e for e in entries if e.category == "periodic" and not set(e.also) - {"periodic"}]
        while periodic and (total + need_bytes > max_bytes or disk_short(need_bytes / 2**20)):
            victim = periodic.pop(0)
            self.remove(victim)
            total -= victim.size_bytes
            dropped.append(victim)
        return dropped

    def remove(self, entry: OutboxEntry) -> None:
        shutil.rmtree(entry.directory, ignore_errors=True)

    @staticmethod
    def _next_sequence(model_dir: Path) -> int:
        numbers = [
            int(p.name.split("-", 1)[0])
            for p in model_dir.iterdir()
            if p.is_dir() and p.name.split("-", 1)[0].isdigit()
        ]
        return max(numbers, default=0) + 1
