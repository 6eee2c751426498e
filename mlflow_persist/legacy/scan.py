"""Walk a legacy checkpoint directory read-only and join its files with the metadata index."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path

from mlflow_persist.errors import CheckpointCorruptError, NotFoundError
from mlflow_persist.legacy.classify import Classification, LegacyPayload, classify_bytes
from mlflow_persist.legacy.metadata import MetadataEntry, MetadataIndex, parse_legacy_time, read_metadata
from mlflow_persist.legacy.score import SCORE_FIELD, as_number, metrics_with_score, numeric_metrics

__all__ = [
    "CHECKPOINT_SUFFIXES",
    "LegacyFile",
    "ScanResult",
    "StaleEntry",
    "find_checkpoint_files",
    "load_legacy_payload",
    "match_entries",
    "model_name_for",
    "read_bytes_readonly",
    "resolve_trust_path",
    "scan_legacy_dir",
]

CHECKPOINT_SUFFIXES = (".pt", ".pth")
_LOOSE_SUFFIX = re.compile(r"^(?P<name>.+?)_(?:best|final|latest|last|\d+)$", re.IGNORECASE)


@dataclass
class LegacyFile:
    """One checkpoint file found under the base directory, with everything known about it (not its tensors:
    `load_legacy_payload` reads them again at import time, so a large directory never sits in memory)."""

    path: Path
    rel: str
    model_name: str
    checkpoint_id: str
    size: int
    mtime_ns: int
    sha256: str
    created_at: datetime
    created_at_source: str
    metrics: dict[str, float]
    step: int
    shape: str | None
    problem: str | None
    problem_kind: str | None
    entry: MetadataEntry | None = None
    loose: bool = False
    trusted: bool = False


def load_legacy_payload(file: LegacyFile) -> LegacyPayload:
    """Read the file again (it is not kept in memory between scan and import) and return its payload,
    refusing when its bytes changed since the scan."""
    data, _ = read_bytes_readonly(file.path)
    if hashlib.sha256(data).hexdigest() != file.sha256:
        raise CheckpointCorruptError(f"{file.path} changed since it was scanned; run the import again.")
    result = classify_bytes(data, trusted=file.trusted)
    if result.payload is None:
        raise CheckpointCorruptError(f"{file.path} cannot be converted: {result.problem}.")
    return result.payload


@dataclass
class StaleEntry:
    """A metadata entry whose file is not in the directory (deleted, rotated, or never written)."""

    entry: MetadataEntry
    reason: str


@dataclass
class ScanResult:
    base_dir: Path
    metadata: MetadataIndex
    files: list[LegacyFile] = field(default_factory=list)
    stale: list[StaleEntry] = field(default_factory=list)


def find_checkpoint_files(base_dir: Path) -> list[Path]:
    """Every `.pt`/`.pth` file under `base_dir` (hidden directories skipped), sorted by relative path."""
    found: list[Path] = []
    for root, dirs, files in os.walk(base_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.lower().endswith(CHECKPOINT_SUFFIXES):
                found.append(Path(root) / name)
    return sorted(found, key=lambda p: p.relative_to(base_dir).as_posix())


def model_name_for(rel_parts: tuple[str, ...]) -> str:
    """`<model>/<file>` belongs to `<model>`; a loose `dqn_agent_best.pt` or `extrema_3.pt` to its stem's prefix."""
    if len(rel_parts) > 1:
        return rel_parts[0]
    stem = Path(rel_parts[0]).stem
    match = _LOOSE_SUFFIX.match(stem)
    return match["name"] if match else stem


def match_entries(
    index: MetadataIndex, rel_paths: Iterable[tuple[str, ...]]
) -> tuple[dict[tuple[str, ...], MetadataEntry], list[StaleEntry]]:
    """Join metadata entries with files: by the entry path's tail equal to the file's path below the base
    directory (so relative, absolute and Windows paths all match), else by a unique file name."""
    rels = list(rel_paths)
    by_name: dict[str, list[tuple[str, ...]]] = {}
    for rel in rels:
        by_name.setdefault(rel[-1].lower(), []).append(rel)
    matched: dict[tuple[str, ...], MetadataEntry] = {}
    stale: list[StaleEntry] = []
    for entry in index.entries:
        parts = entry.path_parts
        if not parts and entry.checkpoint_id:
            parts = (entry.model_name, f"{entry.checkpoint_id}.pt")
        target = next(
            (
                rel
                for rel in rels
                if len(parts) >= len(rel)
                and tuple(p.lower() for p in parts[-len(rel) :]) == tuple(p.lower() for p in rel)
            ),
            None,
        )
        if target is None and parts:
            candidates = by_name.get(parts[-1].lower(), [])
            target = candidates[0] if len(candidates) == 1 else None
        if target is None:
            stale.append(
                StaleEntry(
                    entry,
                    f"metadata entry {entry.checkpoint_id or entry.file_path} points to "
                    f"{entry.file_path!r}, which is not in the directory",
                )
            )
        elif target in matched:
            stale.append(
                StaleEntry(
                    entry,
                    f"metadata entry {entry.checkpoint_id} names the same file as "
                    f"{matched[target].checkpoint_id}; the first entry is used",
                )
            )
        else:
            matched[target] = entry
    return matched, stale


def read_bytes_readonly(path: Path) -> tuple[bytes, os.stat_result]:
    """The file's bytes and its stat, opened O_RDONLY (and O_NOATIME where allowed) so nothing changes."""
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags | getattr(os, "O_NOATIME", 0))
    except PermissionError:
        fd = os.open(path, flags)
    try:
        stat = os.fstat(fd)
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 22)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks), stat
    finally:
        os.close(fd)


def scan_legacy_dir(
    base_dir: str | os.PathLike[str],
    trusted: Iterable[str | os.PathLike[str]] = (),
    assume_tz: tzinfo | None = None,
    progress: Callable[[Path], None] | None = None,
) -> ScanResult:
    """Read every checkpoint file of a legacy directory (never writing to it) and describe it."""
    base = Path(base_dir).resolve()
    if not base.is_dir():
        raise NotFoundError(
            f"Legacy checkpoint directory {base_dir} does not exist; pass the old base_dir "
            "(for example NN/models/saved)."
        )
    trusted_paths = {resolve_trust_path(t, base) for t in trusted}
    index = read_metadata(base)
    paths = find_checkpoint_files(base)
    rels = {p: p.relative_to(base).parts for p in paths}
    matched, stale = match_entries(index, rels.values())
    result = ScanResult(base, index, stale=stale)
    for path in paths:
        if progress is not None:
            progress(path)
        rel = rels[path]
        entry = matched.get(rel)
        data, stat = read_bytes_readonly(path)
        is_trusted = path.resolve() in trusted_paths
        classification = classify_bytes(data, trusted=is_trusted)
        result.files.append(_describe(path, rel, entry, data, stat, classification, is_trusted, assume_tz))
    return result


def resolve_trust_path(raw: str | os.PathLike[str], base: Path) -> Path:
    """A --trust argument as an absolute path: as given if it exists, else relative to the base directory."""
    candidate = Path(raw).expanduser()
    if candidate.exists() or candidate.is_absolute():
        return candidate.resolve()
    return (base / candidate).resolve()


def _describe(
    path: Path,
    rel: tuple[str, ...],
    entry: MetadataEntry | None,
    data: bytes,
    stat: os.stat_result,
    classification: Classification,
    trusted: bool,
    assume_tz: tzinfo | None,
) -> LegacyFile:
    created = parse_legacy_time(entry.created_at, assume_tz) if entry is not None else None
    source = "metadata"
    if created is None:
        created = datetime.fromtimestamp(stat.st_mtime_ns / 1e9, tz=UTC)
        source = "mtime"
    payload = classification.payload
    metrics: dict[str, float] = {}
    step: int | None = None
    if entry is not None:
        metrics = numeric_metrics(entry.raw)
        epoch = as_number(entry.raw.get("epoch"))
        step = int(epoch) if epoch is not None else None
    if payload is not None:
        for key, value in payload.metrics.items():
            metrics.setdefault(key, value)
        if step is None:
            step = payload.step
    if entry is None or SCORE_FIELD not in metrics:
        metrics = metrics_with_score(metrics)
    return LegacyFile(
        path=path,
        rel="/".join(rel),
        model_name=entry.model_name if entry is not None else model_name_for(rel),
        checkpoint_id=(entry.checkpoint_id if entry is not None and entry.checkpoint_id else Path(rel[-1]).stem),
        size=stat.st_size,
        mtime_ns=stat.st_mtime_ns,
        sha256=hashlib.sha256(data).hexdigest(),
        created_at=created,
        created_at_source=source,
        metrics=metrics,
        step=step or 0,
        shape=payload.shape if payload is not None else None,
        problem=classification.problem,
        problem_kind=classification.kind,
        entry=entry,
        loose=len(rel) == 1,
        trusted=trusted,
    )
