"""The LazyFS power-cut filesystem itself: what survives a cut is exactly what was fsynced."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from mlflow_persist._format.atomic import fsync_path
from powerloss.lazyfs import DirNode, FileNode, LazyMount, LazyTree


def write(path: Path, data: bytes, sync: bool = False) -> None:
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        if sync:
            os.fsync(handle.fileno())


def test_write_without_fsync_vanishes_after_cut(lazyfs: LazyMount) -> None:
    root = lazyfs.mountpoint
    write(root / "f", b"durable", sync=True)
    fsync_path(root)
    with open(root / "f", "r+b") as handle:
        handle.write(b"volatile-and-longer")
    assert (root / "f").read_bytes() == b"volatile-and-longer"
    lazyfs.cut()
    assert (root / "f").read_bytes() == b"durable"


def test_fsynced_file_whose_create_was_never_durable_vanishes(lazyfs: LazyMount) -> None:
    root = lazyfs.mountpoint
    write(root / "f", b"data", sync=True)
    lazyfs.cut()
    assert not (root / "f").exists()
    assert os.listdir(root) == []


def test_fsync_file_and_directory_survives(lazyfs: LazyMount) -> None:
    root = lazyfs.mountpoint
    (root / "sub").mkdir()
    fsync_path(root)
    write(root / "sub" / "f", b"data", sync=True)
    fsync_path(root / "sub")
    before = lazyfs.stats()
    lazyfs.cut()
    assert (root / "sub" / "f").read_bytes() == b"data"
    assert before["fsync"] >= 1 and before["fsyncdir"] == 2  # os.fsync on a directory fd reaches fsyncdir


def test_new_directory_not_made_durable_takes_its_durable_contents_along(lazyfs: LazyMount) -> None:
    root = lazyfs.mountpoint
    (root / "a" / "b").mkdir(parents=True)
    write(root / "a" / "b" / "f", b"data", sync=True)
    fsync_path(root / "a" / "b")
    fsync_path(root / "a")  # but never the root: `a` itself is not durable
    lazyfs.cut()
    assert os.listdir(root) == []


def test_rename_without_directory_fsync_reverts(lazyfs: LazyMount) -> None:
    root = lazyfs.mountpoint
    write(root / "old", b"v1", sync=True)
    fsync_path(root)
    os.rename(root / "old", root / "new")
    assert sorted(os.listdir(root)) == ["new"]
    lazyfs.cut()
    assert sorted(os.listdir(root)) == ["old"]
    assert (root / "old").read_bytes() == b"v1"


def test_rename_over_existing_file_reverts_to_the_old_target(lazyfs: LazyMount) -> None:
    root = lazyfs.mountpoint
    write(root / "target", b"old", sync=True)
    write(root / "tmp", b"new", sync=True)
    fsync_path(root)
    os.replace(root / "tmp", root / "target")
    assert (root / "target").read_bytes() == b"new"
    lazyfs.cut()
    assert (root / "target").read_bytes() == b"old"
    assert (root / "tmp").read_bytes() == b"new"


def test_rename_between_directories_needs_both_durable(lazyfs: LazyMount) -> None:
    root = lazyfs.mountpoint
    (root / "src").mkdir()
    (root / "dst").mkdir()
    write(root / "src" / "f", b"x", sync=True)
    for path in (root / "src", root / "dst", root):
        fsync_path(path)
    os.rename(root / "src" / "f", root / "dst" / "f")
    fsync_path(root / "dst")  # only the target: the source still lists it after a cut
    lazyfs.cut()
    assert os.listdir(root / "dst") == ["f"] and os.listdir(root / "src") == ["f"]
    os.unlink(root / "src" / "f")
    fsync_path(root / "src")
    lazyfs.cut()
    assert os.listdir(root / "dst") == ["f"] and os.listdir(root / "src") == []


def test_unlink_without_directory_fsync_comes_back(lazyfs: LazyMount) -> None:
    root = lazyfs.mountpoint
    write(root / "f", b"keep", sync=True)
    (root / "d").mkdir()
    fsync_path(root)
    os.unlink(root / "f")
    shutil.rmtree(root / "d")
    assert os.listdir(root) == []
    lazyfs.cut()
    assert sorted(os.listdir(root)) == ["d", "f"]
    assert (root / "f").read_bytes() == b"keep"


def test_cut_is_seen_by_a_process_that_already_read_the_file(lazyfs: LazyMount) -> None:
    """The page cache must not serve pre-cut bytes: read, cut, read again in the same process."""
    root = lazyfs.mountpoint
    write(root / "f", b"A" * 10000, sync=True)
    fsync_path(root)
    write(root / "f", b"B" * 20000)
    assert (root / "f").read_bytes() == b"B" * 20000
    assert (root / "f").stat().st_size == 20000
    lazyfs.cut()
    assert (root / "f").stat().st_size == 10000
    assert (root / "f").read_bytes() == b"A" * 10000


@pytest.mark.parametrize("journal_mode", ["delete", "wal"])
def test_sqlite_works_and_committed_data_survives_a_cut(lazyfs: LazyMount, journal_mode: str) -> None:
    root = lazyfs.mountpoint
    db = root / "t.db"
    connection = sqlite3.connect(db)
    try:
        assert connection.execute(f"PRAGMA journal_mode={journal_mode}").fetchone()[0] == journal_mode
        connection.execute("PRAGMA synchronous=EXTRA")  # the journal's unlink is made durable too
        connection.execute("CREATE TABLE t (x INTEGER)")
        for i in range(20):
            with connection:
                connection.execute("INSERT INTO t VALUES (?)", (i,))
    finally:
        connection.close()
    lazyfs.cut()
    connection = sqlite3.connect(db)
    try:
        assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert connection.execute("SELECT count(*) FROM t").fetchone()[0] == 20
    finally:
        connection.close()


def test_sqlite_full_sync_in_delete_mode_can_lose_the_last_commit(lazyfs: LazyMount) -> None:
    """SQLite's documented behaviour (https://sqlite.org/pragma.html#pragma_synchronous), reproduced here:
    with synchronous=FULL in DELETE mode the journal's unlink is not made durable, so a cut right after a
    commit brings the hot journal back and the commit is rolled back. Callers that need the last commit must
    use synchronous=EXTRA or fsync the database's directory themselves."""
    root = lazyfs.mountpoint
    db = root / "t.db"
    connection = sqlite3.connect(db)
    try:
        connection.execute("PRAGMA synchronous=FULL")
        with connection:
            connection.execute("CREATE TABLE t (x INTEGER)")
        with connection:
            connection.execute("INSERT INTO t VALUES (1)")
    finally:
        connection.close()
    fsync_path(root)
    connection = sqlite3.connect(db)
    try:
        connection.execute("PRAGMA synchronous=FULL")
        with connection:
            connection.execute("INSERT INTO t VALUES (2)")
        assert connection.execute("SELECT count(*) FROM t").fetchone()[0] == 2
    finally:
        connection.close()
    lazyfs.cut()
    assert (root / "t.db-journal").exists()  # the hot journal is back
    connection = sqlite3.connect(db)
    try:
        assert connection.execute("SELECT count(*) FROM t").fetchone()[0] == 1
    finally:
        connection.close()
    fsync_path(root)
    lazyfs.cut()
    assert not (root / "t.db-journal").exists()


def test_posix_and_flock_locks_work_on_the_mount(lazyfs: LazyMount) -> None:
    import fcntl

    with open(lazyfs.mountpoint / "lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_tree_model_without_fuse() -> None:
    """The durability rules on their own (no mount needed)."""
    tree = LazyTree()
    directory = DirNode(tree.new_ino(), 0o755)
    tree.root.entries["d"] = directory
    tree.fsync_dir(tree.root)
    kept, lost = FileNode(tree.new_ino(), 0o644), FileNode(tree.new_ino(), 0o644)
    kept.data[:] = b"kept"
    tree.fsync_file(kept, datasync=False)
    kept.data[:] = b"changed"
    directory.entries.update(kept=kept, lost=lost)
    tree.fsync_file(directory, datasync=False)  # an fsync with a directory's handle counts as fsyncdir
    del directory.entries["kept"]
    assert tree.cut()["reverted_dirs"] == 1
    assert sorted(directory.entries) == ["kept", "lost"] and bytes(kept.data) == b"kept" and lost.data == b""
    assert tree.stats["fsync_on_dir"] == 1 and tree.stats["cuts"] == 1
