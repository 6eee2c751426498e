"""The one way a checkpoint directory comes into existence: stage, write, fsync the files, rename, fsync
the parent. A crash at any moment leaves either no directory under the real name or a complete, durable one;
what is left under the staging name (`.tmp-<name>`) is swept later."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

STAGING_PREFIX = ".tmp-"


def fsync_path(path: Path) -> None:
    """fsync a file's data, or a directory's entries (its creates, renames and unlinks)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


fsync_directory = fsync_path


def is_staging(path: Path) -> bool:
    return path.name.startswith(STAGING_PREFIX)


@contextlib.contextmanager
def atomic_directory(parent: Path, name: str) -> Iterator[Path]:
    """Yield an empty staging directory; once the block returns, its files are fsynced and it is renamed to
    `parent/name` durably. If the block raises, the staging directory is removed (a failed write must not
    keep eating a full disk) and nothing appears under `name`."""
    parent.mkdir(parents=True, exist_ok=True)
    staging = parent / f"{STAGING_PREFIX}{name}"
    final = parent / name
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        yield staging
        for child in staging.iterdir():
            if child.is_file():
                fsync_path(child)
        fsync_directory(staging)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_directory(parent)


def copy_directory_atomically(source: Path, parent: Path, name: str, files: tuple[str, ...]) -> Path:
    """Copy `files` of `source` into `parent/name` through `atomic_directory`; an existing complete target is
    kept as it is (a retried upload of the same entry is harmless)."""
    target = parent / name
    if target.is_dir():
        return target
    with atomic_directory(parent, name) as staging:
        for file_name in files:
            shutil.copyfile(source / file_name, staging / file_name)
    return target
