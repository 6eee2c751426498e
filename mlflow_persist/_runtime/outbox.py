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
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from mlflow_persist._format.atomic import atomic_directory, durable_directory, is_staging
from mlflow_persist._format.digest import SHA256, Digest, digest_file
from mlflow_persist._format.payload import CHECKPOINT_FILE, MANIFEST_FILE, WrittenCheckpoint, write_checkpoint_dir

__all__ = ["ENTRY_FILE", "Outbox", "OutboxEntry", "default_outbox_root"]

ENTRY_FILE = "entry.json"


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
        if "sha256" in data:  # written by a version before checksums named their algorithm
            data = {**data, "digest_algorithm": SHA256, "digest": data.pop("sha256")}
        return cls(**data, path=str(path))


def default_outbox_root(tracking_uri: str) -> Path:
    digest = hashlib.sha256(tracking_uri.encode()).hexdigest()[:16]
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "mlflow-persist" / "outbox" / digest


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
            except (OSError, json.JSONDecodeError):
                if sweep:
                    shutil.rmtree(path, ignore_errors=True)
                continue
            found.append(OutboxEntry.from_json(data, path))
        return sorted(found, key=lambda e: e.sequence)

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

    def quarantine(self, entry: OutboxEntry) -> Path:
        """Move an entry that can never be registered (its run is gone) aside, keeping its bytes."""
        target = self.root / "_quarantine" / entry.registered_name / entry.directory.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(entry.directory), target)
        return target

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
