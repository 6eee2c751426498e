"""The one way a checkpoint directory comes into existence: stage, write, fsync the files, rename, fsync
the parent. A crash at any moment leaves either no directory under the real name or a complete, durable one;
what is left under the staging name (`.tmp-<name>`) is swept later."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import platformdirs

__all__ = [
    "STAGING_PREFIX",
    "atomic_directory",
    "copy_directory_atomically",
    "durable_directory",
    "fsync_path",
    "is_staging",
    "private_directory",
    "user_cache_dir",
]

STAGING_PREFIX = ".tmp-"


def fsync_path(path: Path) -> None:
    """fsync a file's data, or a directory's entries (its creates, renames and unlinks)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_durable_dirs: set[Path] = set()


def durable_directory(path: Path) -> Path:
    """Create `path` (and missing ancestors) so that it survives a power cut: each directory's entry in its
    parent is fsynced. Existing ancestors are made durable too (another program, MLflow for one, may have
    created them without an fsync). Done once per directory per process."""
    path = Path(os.path.abspath(path))
    chain = []
    current = path
    while current not in _durable_dirs and current.parent != current:
        chain.append(current)
        current = current.parent
    for directory in reversed(chain):
        try:
            directory.mkdir()
        except FileExistsError:
            pass
        fsync_path(directory.parent)
        _durable_dirs.add(directory)
    return path


def is_staging(path: Path) -> bool:
    return path.name.startswith(STAGING_PREFIX)


@contextlib.contextmanager
def atomic_directory(parent: Path, name: str) -> Iterator[Path]:
    """Yield an empty staging directory; once the block returns, its files are fsynced and it is renamed to
    `parent/name` durably. If the block raises, the staging directory is removed (a failed write must not
    keep eating a full disk) and nothing appears under `name`."""
    durable_directory(parent)
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
        fsync_path(staging)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_path(parent)


def private_directory(path: Path) -> Path:
    """`path` as a directory only this user can enter (0700), created if missing; refused when another user
    owns it or others may write into it (a planted cache or lock file must never be trusted)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = path.stat()
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to another user; point the cache elsewhere (cache_dir=...).")
    if info.st_mode & 0o022:
        os.chmod(path, 0o700)
    return path


def user_cache_dir(*parts: str) -> Path:
    """The per-user cache directory of mlflow-persist (platformdirs: `$XDG_CACHE_HOME/mlflow-persist` or
    `~/.cache/mlflow-persist` on Linux, the platform's own elsewhere), private."""
    return private_directory(Path(platformdirs.user_cache_dir("mlflow-persist", appauthor=False)).joinpath(*parts))


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
