"""Sharded checkpoints: the files every rank wrote with `torch.distributed.checkpoint` (DCP), inside a version.

A sharded version is an ordinary checkpoint directory (`checkpoint.pt` + `manifest.json`) with one more
folder, `shards/`, holding DCP's files (`.metadata` and one `__<rank>_<n>.distcp` per writing rank). Its
`model_state` is not a state dict but a shard record: `{SHARDS_KEY: {relative name: [algorithm, hexdigest,
size]}}`. `checkpoint.pt` is digested at registration, so the record, and through it every shard file, is
covered by the one digest the registry keeps.

While a save is being written, `model_state` is `{SHARDS_KEY: "<staging folder>"}`: the ranks wrote their
shards there, and `write_checkpoint_dir` moves them into the version's directory (`adopt_shards`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mlflow_persist._format.atomic import fsync_path
from mlflow_persist._format.digest import DEFAULT_ALGORITHM, Digest, digest_file
from mlflow_persist.errors import CheckpointCorruptError, PersistError

__all__ = ["SHARDS_DIR", "SHARDS_KEY", "adopt_shards", "is_sharded", "shard_files", "verify_shards"]

SHARDS_KEY = "__mlflow_persist_shards__"
SHARDS_DIR = "shards"


def is_sharded(model_state: Any) -> bool:
    """Whether a payload's `model_state` is a shard record (or, while writing, the staged shards' folder)."""
    return isinstance(model_state, Mapping) and len(model_state) == 1 and SHARDS_KEY in model_state


def shard_files(directory: Path) -> list[Path]:
    """Every file under `directory`, sorted (DCP writes only files; a symlink is refused)."""
    files = []
    for path in sorted(directory.rglob("*")):
        if path.is_symlink():
            raise PersistError(f"{path} is a symbolic link; a sharded checkpoint holds only the files DCP wrote.")
        if path.is_file():
            files.append(path)
    return files


def adopt_shards(staged: str, directory: Path) -> dict[str, list[Any]]:
    """Move the staged shards folder to `directory/shards`, fsync it, and return the shard record (each file's
    digest and size). The staged folder is gone afterwards, so a save is adopted at most once."""
    source = Path(staged)
    if not (source / ".metadata").is_file():
        raise PersistError(
            f"the shards staged at {source} are missing or incomplete (no .metadata); this save is lost, and the "
            "next one writes its shards afresh."
        )
    target = directory / SHARDS_DIR
    try:
        os.rename(source, target)  # the staging folder is on the artifact store's filesystem: a rename
    except OSError:
        shutil.copytree(source, target)
        shutil.rmtree(source, ignore_errors=True)
    record: dict[str, list[Any]] = {}
    for path in shard_files(target):
        fsync_path(path)
        digest = digest_file(path, DEFAULT_ALGORITHM)
        record[path.relative_to(target).as_posix()] = [digest.algorithm, digest.hexdigest, path.stat().st_size]
    fsync_path(target)
    return record


def verify_shards(directory: Path, record: Mapping[str, Any]) -> None:
    """Check `directory/shards` against a shard record: every file present, of its size and digest, and no
    other file; CheckpointCorruptError names the first that is not."""
    root = Path(directory) / SHARDS_DIR
    if not isinstance(record, Mapping) or not record:
        raise CheckpointCorruptError(f"{directory}: the shard record is empty or malformed.")
    if not root.is_dir():
        raise CheckpointCorruptError(f"{root} is missing; the sharded checkpoint is incomplete.")
    present = {path.relative_to(root).as_posix() for path in shard_files(root)}
    unexpected = sorted(present - set(record))
    if unexpected:
        raise CheckpointCorruptError(f"{root} holds files its checkpoint does not record: {', '.join(unexpected)}.")
    for name, entry in record.items():
        path = root / name
        if name not in present:
            raise CheckpointCorruptError(f"{path} is missing; the sharded checkpoint is incomplete.")
        algorithm, hexdigest, size = entry
        if path.stat().st_size != int(size):
            raise CheckpointCorruptError(f"{path} has {path.stat().st_size} bytes, {size} were written.")
        actual = digest_file(path, algorithm)
        if actual != Digest(algorithm, hexdigest):
            raise CheckpointCorruptError(f"{path} does not match its recorded digest; it was damaged.")
