"""The LazyFS power-cut filesystem itself: what survives a cut is exactly what was fsynced."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import pytest

from mlflow_persist._format.atomic import fsync_path
from powerloss.lazyfs import DirNode, FileNode, LazyMount, LazyTree, Trigger


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


def test_tree_torn_write_keeps_a_prefix_of_the_write_in_flight_and_nothing_else() -> None:
    """An armed "write" cut: the torn file keeps its unsynced writes and a prefix of the write in flight;
    every other unsynced change is lost, and the tree is dead until revived."""
    tree = LazyTree()
    torn, other = FileNode(tree.new_ino(), 0o644), FileNode(tree.new_ino(), 0o644)
    tree.root.entries.update(torn=torn, other=other)
    tree.fsync_dir(tree.root)
    tree.write(torn, 0, b"durable", "mlflow.db")
    tree.fsync_file(torn, datasync=False)
    tree.write(torn, 7, b"-pending", "mlflow.db")
    tree.write(other, 0, b"lost", "other")
    tree.arm(Trigger("write", ("mlflow.db",), nth=2, keep=0.5))
    tree.write(torn, 0, b"X", "mlflow.db")  # the first counted write
    with pytest.raises(OSError):
        tree.write(torn, 15, b"ABCDEFGH", "mlflow.db")  # the second: power goes half-way through it
    assert tree.dead and tree.fired is not None and tree.fired["kept_bytes"] == 4 and tree.fired["torn_file_kept"]
    assert bytes(torn.data) == b"Xurable-pendingABCD" and other.data == b""
    tree.revive()
    assert not tree.dead


def test_tree_sync_cut_leaves_the_state_of_that_fsync() -> None:
    """An armed "sync" cut fires right after the n-th fsync of a named file or directory: what that fsync made
    durable stays, everything after it (and everything else unsynced) is gone."""
    tree = LazyTree()
    db, journal = FileNode(tree.new_ino(), 0o644), FileNode(tree.new_ino(), 0o644)
    tree.root.entries.update({"mlflow.db": db, "mlflow.db-journal": journal})
    tree.fsync_dir(tree.root, "/")
    tree.arm(Trigger("sync", ("mlflow.db", "mlflow.db-journal", "/"), nth=2))
    tree.write(journal, 0, b"old page", "mlflow.db-journal")
    tree.fsync_file(journal, datasync=False, name="mlflow.db-journal")  # 1
    tree.write(db, 0, b"new page", "mlflow.db")
    tree.fsync_file(db, datasync=True, name="mlflow.db")  # 2: fires after it
    assert tree.dead and tree.fired is not None and tree.fired["name"] == "mlflow.db"
    assert bytes(db.data) == b"new page" and bytes(journal.data) == b"old page"  # a hot journal
    assert tree.stats["named_syncs"]["mlflow.db"] == 1 and tree.stats["armed_cuts"] == 1


def test_armed_cut_in_the_middle_of_a_write_through_the_mount(lazyfs: LazyMount) -> None:
    root = lazyfs.mountpoint
    write(root / "checkpoint.pt", b"A" * 100, sync=True)
    fsync_path(root)
    lazyfs.arm("write", ["checkpoint.pt"], nth=1, keep=0.25)
    with pytest.raises(OSError), open(root / "checkpoint.pt", "r+b", buffering=0) as handle:
        handle.seek(100)
        handle.write(b"B" * 400)
    fired = lazyfs.fired()
    assert fired is not None and fired["kept_bytes"] == 100 and fired["torn_file_kept"]
    with pytest.raises(OSError):  # no power: nothing works until revived
        (root / "other").write_bytes(b"x")
    lazyfs.revive()
    assert (root / "checkpoint.pt").read_bytes() == b"A" * 100 + b"B" * 100
    assert sorted(os.listdir(root)) == ["checkpoint.pt"]


def test_sqlite_rolls_back_to_its_last_commit_after_a_cut_at_an_fsync_inside_a_commit(lazyfs: LazyMount) -> None:
    """A cut right after each fsync of a commit in turn (journal, database, directory): the database opens,
    passes its integrity check and holds either the commit before or (only once the commit's last fsync was
    made) the new one; a hot journal is what rolls it back."""
    root = lazyfs.mountpoint
    db = root / "t.db"

    def connect() -> sqlite3.Connection:
        connection = sqlite3.connect(db)
        connection.execute("PRAGMA synchronous=EXTRA")
        return connection

    connection = connect()
    with connection:
        connection.execute("CREATE TABLE t (x INTEGER)")
    connection.close()
    fsync_path(root)
    outcomes = []
    for nth in range(1, 8):
        connection = connect()
        before = connection.execute("SELECT count(*) FROM t").fetchone()[0]
        lazyfs.arm("sync", ["t.db", "t.db-journal", "/"], nth=nth)
        committed = True
        try:
            with connection:
                connection.execute("INSERT INTO t VALUES (?)", (nth,))
        except sqlite3.Error:
            committed = False
        finally:
            connection.close()
        fired = lazyfs.fired()
        lazyfs.disarm()
        if fired is None:  # the commit had fewer fsyncs than nth: it is durable
            assert committed
            lazyfs.cut()
        else:
            lazyfs.revive()
        hot = (root / "t.db-journal").exists()
        connection = connect()
        try:
            assert connection.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            after = connection.execute("SELECT count(*) FROM t").fetchone()[0]
        finally:
            connection.close()
        assert after in (before, before + 1) and (after == before + 1 or not committed)
        outcomes.append((nth, fired and fired["name"], hot, after - before))
    assert any(hot and delta == 0 for _, _, hot, delta in outcomes), outcomes  # a rollback did happen


def test_change_log_names_every_node_whose_bytes_or_names_changed(lazyfs: LazyMount) -> None:
    """What lets the power-loss checker skip versions without a stat: a write, an unlink, a rename and a cut
    that drops or brings back an entry all report the nodes they changed; an untouched file is not reported."""
    root = lazyfs.mountpoint
    (root / "d").mkdir()
    for name in ("kept", "written", "gone", "moved"):
        write(root / "d" / name, name.encode(), sync=True)
    fsync_path(root / "d")
    fsync_path(root)
    ino = {name: (root / "d" / name).stat().st_ino for name in ("kept", "written", "gone", "moved")}
    start = lazyfs.changed_since(0)["seq"]
    with open(root / "d" / "written", "ab") as handle:
        handle.write(b"+")
    os.unlink(root / "d" / "gone")
    os.rename(root / "d" / "moved", root / "d" / "renamed")
    changed = set(lazyfs.changed_since(start)["inos"])
    assert {ino["written"], ino["gone"], ino["moved"]} <= changed and ino["kept"] not in changed
    middle = lazyfs.changed_since(0)["seq"]
    lazyfs.cut()  # "written" loses its tail, "gone" and "moved" come back, "renamed" goes
    changed = set(lazyfs.changed_since(middle)["inos"])
    assert {ino["written"], ino["gone"], ino["moved"]} <= changed and ino["kept"] not in changed
