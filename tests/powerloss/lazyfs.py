"""A LazyFS-style in-memory FUSE filesystem that can simulate a power cut (mfusepy on libfuse 3).

Every object has two states, the current one and the durable one:

- a file's bytes: `data` (what reads see) and `durable` (what survives a cut); `fsync`/`fdatasync` of the
  file copies `data` into `durable`;
- a directory's entries (name -> inode): `entries` and `durable_entries`; create, mkdir, rename, unlink and
  rmdir change only `entries`; `fsyncdir` of the directory (what the kernel sends for `fsync` of a file
  descriptor opened on a directory) copies `entries` into `durable_entries`. An `fsync` that reaches the
  file callback with a directory's handle is treated the same. A rename between two directories is durable
  once both are.

A power cut throws away everything that is not durable: every directory's entries become its durable
entries, every file's bytes its durable bytes, and inodes no longer reachable from the root disappear.
(Metadata such as mode and owner is not rolled back; a file or directory that a cut changes gets a new
mtime, so "same inode, size and mtime" still means "same bytes" across cuts.)

Besides a cut at an arbitrary moment (the test kills every writer, then cuts), a cut can be armed to fire
inside the filesystem at an exact point of the writers' operation sequence (`Trigger`):

- `write`: at the n-th write to a file of a given name (`checkpoint.pt`, `manifest.json`, `mlflow.db`, ...):
  the power goes *in the middle of that write*. The file keeps its durable bytes, the writes made to it
  since its last fsync, in order, and the first `keep` bytes of the write in flight; everything later (the
  write's tail, every other file's unsynced data and every unsynced directory change) is lost. This is
  still a state a real disk may be left in: an unsynced write may reach the platter in part.
- `sync`: right after the n-th fsync (file or directory) of one of the given names (the sqlite database,
  its `-journal` / `-wal`, or the directory holding them): the store is left exactly as it was made durable
  by that fsync, so whatever sqlite wrote after it is lost and a hot journal rolls the database back to the
  state of that earlier fsync (the last commit made durable before it).

Once an armed cut fired the filesystem is *dead*: every operation but the control files' fails with EIO
(the machine has no power; nothing a writer does after the cut may count), until `revive`.

Control, from inside the mount (so it is ordered with the filesystem calls around it; the filesystem runs
single-threaded):

- write anything to `/.lazyfs_cut`: power cut;
- write a JSON command to `/.lazyfs_ctl`: `{"op": "arm", ...Trigger fields}`, `{"op": "disarm"}`,
  `{"op": "revive"}`, or `{"op": "changed_since", "seq": n}`, whose answer `/.lazyfs_answer` then reads:
  `{"seq": now, "inos": [...]}`, the inodes whose bytes or names changed after sequence number n (what lets
  a checker skip every version none of whose nodes changed, without a stat);
- read `/.lazyfs_stats`: JSON counters (fsyncs, directory fsyncs, cuts, writes, writes and fsyncs per
  watched name, ...), `dead`, and `fired`: what the last armed cut did.

No control name is listed by readdir. The kernel's page cache is kept out of the way: files are opened with
`direct_io` (except SQLite's `-shm` files, which WAL mode maps shared; libfuse 3.14 cannot map direct_io
files), attribute and entry caches are off, and no handle keeps its cache across opens, so a process that
opens a file after a cut reads what the filesystem holds then.

Run: `python lazyfs.py MOUNTPOINT` (foreground; unmount with `fusermount3 -u MOUNTPOINT`). The test side
uses `LazyMount` (no mfusepy import needed in the test process).
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CUT_FILE = ".lazyfs_cut"
STATS_FILE = ".lazyfs_stats"
CTL_FILE = ".lazyfs_ctl"
ANSWER_FILE = ".lazyfs_answer"
CONTROL_FILES = (CUT_FILE, STATS_FILE, CTL_FILE, ANSWER_FILE)
#: Names whose writes and fsyncs are counted in the stats (what a trigger is usually armed on).
WATCHED_NAMES = ("checkpoint.pt", "manifest.json", "mlflow.db", "mlflow.db-journal", "mlflow.db-wal")
_BLOCK = 4096
_UTIME_NOW_NSEC, _UTIME_OMIT_NSEC = (1 << 30) - 1, (1 << 30) - 2
UTIME_NOW, UTIME_OMIT = "now", "omit"


# ---------------------------------------------------------------------------------------------- the model


class Node:
    __slots__ = ("ino", "mode", "uid", "gid", "atime", "mtime", "ctime")

    def __init__(self, ino: int, mode: int, uid: int = 0, gid: int = 0) -> None:
        now = time.time_ns()
        self.ino, self.mode, self.uid, self.gid = ino, mode, uid, gid
        self.atime = self.mtime = self.ctime = now

    def touch(self) -> None:
        self.mtime = self.ctime = time.time_ns()


class FileNode(Node):
    __slots__ = ("data", "durable", "pending")

    def __init__(self, ino: int, mode: int, uid: int = 0, gid: int = 0) -> None:
        super().__init__(ino, stat.S_IFREG | (mode & 0o7777), uid, gid)
        self.data = bytearray()
        self.durable = b""  # a file never fsynced has no durable bytes
        # What changed `data` since `durable` was taken, in order: (offset, bytes) for a write, (length, None)
        # for a truncate. A cut in the middle of a write keeps a prefix of it (LazyTree.cut).
        self.pending: list[tuple[int, bytes | None]] = []


class DirNode(Node):
    __slots__ = ("entries", "durable_entries")

    def __init__(self, ino: int, mode: int, uid: int = 0, gid: int = 0) -> None:
        super().__init__(ino, stat.S_IFDIR | (mode & 0o7777), uid, gid)
        self.entries: dict[str, Node] = {}
        self.durable_entries: dict[str, Node] = {}


class ControlNode(Node):
    __slots__ = ("name",)

    def __init__(self, ino: int, name: str) -> None:
        super().__init__(ino, stat.S_IFREG | 0o666)
        self.name = name


@dataclass
class Trigger:
    """A power cut armed to fire at an exact point of the operation sequence (see the module docstring).

    kind "write": at the `nth` write (counted from arming) to a file whose name is in `names`; the write in
    flight keeps its first `keep` bytes (a fraction in [0, 1] of its length, rounded down).
    kind "sync": right after the `nth` fsync of a file, or fsyncdir of a directory, whose name is in `names`
    (a directory is named by its path, "/" for the root)."""

    kind: str
    names: tuple[str, ...]
    nth: int
    keep: float = 0.0
    seen: int = 0

    @classmethod
    def from_json(cls, spec: dict[str, Any]) -> Trigger:
        if spec["kind"] not in ("write", "sync") or int(spec["nth"]) < 1:
            raise ValueError(f"bad trigger {spec!r}")
        return cls(spec["kind"], tuple(spec["names"]), int(spec["nth"]), float(spec.get("keep", 0.0)))


def apply_op(data: bytearray, offset: int, chunk: bytes | None) -> None:
    """Apply one write (`chunk` at `offset`) or truncate (`chunk` None, to length `offset`) to `data`."""
    if chunk is None:
        if offset < len(data):
            del data[offset:]
        else:
            data.extend(bytes(offset - len(data)))
        return
    if offset > len(data):
        data.extend(bytes(offset - len(data)))
    data[offset : offset + len(chunk)] = chunk


def apply_ops(base: bytes, ops: list[tuple[int, bytes | None]]) -> bytearray:
    """`base` with the writes and truncates of `ops` applied in order (a FileNode.pending log)."""
    data = bytearray(base)
    for offset, chunk in ops:
        apply_op(data, offset, chunk)
    return data


class LazyTree:
    """The filesystem's state and its durability rules, without any FUSE (unit-testable on its own)."""

    def __init__(self) -> None:
        self._next_ino = 2
        self.root = DirNode(1, 0o755)
        self.trigger: Trigger | None = None
        self.dead = False  # an armed cut fired: every operation fails until revive()
        self.fired: dict[str, Any] | None = None  # what the last armed cut did
        # Change tracking: every node whose bytes change, or that gains or loses a name (created, unlinked,
        # renamed, or brought back or dropped by a cut), gets the next sequence number. A path resolves to the
        # same nodes with the same bytes as long as none of its nodes changed (see `changed_since`).
        self.seq = 0
        self.changed: dict[int, int] = {}  # ino -> the sequence number of its last change
        self.stats: dict[str, Any] = {
            "fsync": 0,
            "fdatasync": 0,
            "fsyncdir": 0,
            "fsync_on_dir": 0,
            "cuts": 0,
            "armed_cuts": 0,
            "writes": 0,
            "bytes_written": 0,
            "creates": 0,
            "renames": 0,
            "unlinks": 0,
            "reverted_files": 0,
            "reverted_dirs": 0,
            "torn_files_kept": 0,
            "named_writes": dict.fromkeys(WATCHED_NAMES, 0),
            "named_syncs": dict.fromkeys((*WATCHED_NAMES, "/"), 0),
        }

    def new_ino(self) -> int:
        self._next_ino += 1
        return self._next_ino

    def mark(self, *nodes: Node | None) -> None:
        """Record a change of `nodes` (their bytes, or a name of theirs) for `changed_since`."""
        self.seq += 1
        for node in nodes:
            if node is not None:
                self.changed[node.ino] = self.seq

    def changed_since(self, seq: int) -> dict[str, Any]:
        """The inode numbers changed after sequence number `seq`, and the sequence number now."""
        return {"seq": self.seq, "inos": sorted(ino for ino, at in self.changed.items() if at > seq)}

    # ------------------------------------------------------------------ lookups

    @staticmethod
    def split(path: str) -> list[str]:
        return [part for part in path.split("/") if part]

    def lookup(self, path: str) -> Node:
        node: Node = self.root
        for part in self.split(path):
            if not isinstance(node, DirNode):
                raise OSError(errno.ENOTDIR, path)
            try:
                node = node.entries[part]
            except KeyError:
                raise OSError(errno.ENOENT, path) from None
        return node

    def parent_of(self, path: str) -> tuple[DirNode, str]:
        parts = self.split(path)
        if not parts:
            raise OSError(errno.EBUSY, path)
        parent = self.lookup("/" + "/".join(parts[:-1]))
        if not isinstance(parent, DirNode):
            raise OSError(errno.ENOTDIR, path)
        return parent, parts[-1]

    # ------------------------------------------------------------------ file contents

    def write(self, node: FileNode, offset: int, data: bytes, name: str = "") -> None:
        """Write `data` at `offset` (`name`: the file's name, for the counters and an armed "write" cut).
        Raises EIO when an armed cut fires in the middle of this write (it is then applied in part)."""
        if name in self.stats["named_writes"]:
            self.stats["named_writes"][name] += 1
        trigger = self.trigger
        if trigger is not None and trigger.kind == "write" and name in trigger.names:
            trigger.seen += 1
            if trigger.seen == trigger.nth:
                keep = min(len(data), int(len(data) * trigger.keep))
                node.pending.append((offset, bytes(data[:keep])))
                node.data = apply_ops(node.durable, node.pending)
                self._fire({"name": name, "offset": offset, "length": len(data), "kept_bytes": keep}, node)
                raise OSError(errno.EIO, "power cut in the middle of this write")
        chunk = bytes(data)
        apply_op(node.data, offset, chunk)
        node.pending.append((offset, chunk))
        node.touch()
        self.mark(node)
        self.stats["writes"] += 1
        self.stats["bytes_written"] += len(data)

    def truncate(self, node: FileNode, length: int) -> None:
        apply_op(node.data, length, None)
        node.pending.append((length, None))
        node.touch()
        self.mark(node)

    # ------------------------------------------------------------------ durability

    def fsync_file(self, node: Node, datasync: bool, name: str = "") -> None:
        if isinstance(node, DirNode):
            self.stats["fsync_on_dir"] += 1
            self.fsync_dir(node, name)
            return
        self.stats["fdatasync" if datasync else "fsync"] += 1
        if isinstance(node, FileNode):
            node.durable = bytes(node.data)
            node.pending.clear()
        self._synced(node, name)

    def fsync_dir(self, node: Node, name: str = "") -> None:
        self.stats["fsyncdir"] += 1
        if isinstance(node, DirNode):
            node.durable_entries = dict(node.entries)
        elif isinstance(node, FileNode):  # an fsyncdir with a file's handle: treat it as the file's fsync
            node.durable = bytes(node.data)
            node.pending.clear()
        self._synced(node, name)

    def _synced(self, node: Node, name: str) -> None:
        if name in self.stats["named_syncs"]:
            self.stats["named_syncs"][name] += 1
        trigger = self.trigger
        if trigger is not None and trigger.kind == "sync" and name in trigger.names:
            trigger.seen += 1
            if trigger.seen == trigger.nth:
                self._fire({"name": name}, None)

    # ------------------------------------------------------------------ power

    def arm(self, trigger: Trigger) -> None:
        self.trigger, self.fired = trigger, None

    def disarm(self) -> None:
        self.trigger = None

    def revive(self) -> None:
        self.dead = False

    def _fire(self, what: dict[str, Any], torn: FileNode | None) -> None:
        """The armed cut: power goes now. `torn` (a write cut in the middle) keeps its `data` as it is."""
        trigger = self.trigger
        assert trigger is not None
        if torn is not None:
            torn.durable, torn.pending = bytes(torn.data), []
            torn.touch()
            self.mark(torn)
        reachable: set[int] = set()
        result = self.cut(reachable)
        self.trigger, self.dead = None, True
        self.stats["armed_cuts"] += 1
        self.fired = {"kind": trigger.kind, "nth": trigger.nth, **what, **result, "at": time.time()}
        if torn is not None:
            self.fired["torn_file_kept"] = id(torn) in reachable  # its directory entry was durable
            self.stats["torn_files_kept"] += self.fired["torn_file_kept"]

    def cut(self, reachable: set[int] | None = None) -> dict[str, Any]:
        """Power loss: keep only what was made durable. `reachable` (if given) receives the id() of every
        node that survives."""
        seen: set[int] = set() if reachable is None else reachable
        reverted_files = reverted_dirs = 0
        restored: list[str] = []  # names a cut brings back (they were unlinked or renamed away since made durable)
        stack: list[DirNode] = [self.root]
        while stack:
            directory = stack.pop()
            if id(directory) in seen:
                continue
            seen.add(id(directory))
            if directory.entries != directory.durable_entries:
                reverted_dirs += 1
                directory.touch()
                for name in directory.entries.keys() | directory.durable_entries.keys():
                    now, then = directory.entries.get(name), directory.durable_entries.get(name)
                    if now is not then:  # a name that goes, comes back or points elsewhere
                        self.mark(now, then)
                        if then is not None:
                            restored.append(name)
            directory.entries = dict(directory.durable_entries)
            for child in directory.entries.values():
                if isinstance(child, DirNode):
                    stack.append(child)
                elif isinstance(child, FileNode) and id(child) not in seen:
                    seen.add(id(child))
                    if child.data != child.durable:
                        reverted_files += 1
                        child.touch()
                        self.mark(child)
                    child.data = bytearray(child.durable)
                    child.pending.clear()
        self.stats["cuts"] += 1
        self.stats["reverted_files"] += reverted_files
        self.stats["reverted_dirs"] += reverted_dirs
        return {"reverted_files": reverted_files, "reverted_dirs": reverted_dirs, "restored_names": restored}


# ---------------------------------------------------------------------------------------------- FUSE side


#: Every operation but release/releasedir (a closing handle) fails with EIO while the filesystem is dead.
GUARDED_OPERATIONS = (
    "getattr", "chmod", "chown", "utimens", "access", "statfs", "mkdir", "rmdir", "opendir", "readdir",
    "fsyncdir", "create", "mknod", "unlink", "rename", "link", "symlink", "open", "read", "write", "truncate",
    "fallocate", "flush", "fsync",
)  # fmt: skip


def _operations_class() -> type:
    import mfusepy

    FuseOSError = mfusepy.FuseOSError

    def fh_of(fi: Any) -> int | None:
        if fi is None or isinstance(fi, int):
            return fi
        return int(fi.fh)

    class LazyFS(mfusepy.Operations):
        use_ns = True
        flag_nullpath_ok = True  # read/write/fsync/... are served by handle, also for unlinked open files
        flag_nopath = True

        def __init__(self) -> None:
            self.tree = LazyTree()
            self.handles: dict[int, tuple[Node, int, str]] = {}  # fh -> (node, open flags, name)
            # fh -> the stats document as it was at open: a read in several calls sees one version, not the
            # head of one and the tail of a newer one (a torn JSON read failed a CI run)
            self.stats_snapshots: dict[int, bytes] = {}
            self._next_fh = 10
            self._mutex = threading.RLock()  # libfuse runs single-threaded here; the lock is a second guard
            self.control = {name: ControlNode(self.tree.new_ino(), name) for name in CONTROL_FILES}
            self.uid, self.gid = os.getuid(), os.getgid()
            self.answer = b"{}"  # what /.lazyfs_answer reads: the reply to the last query written to the ctl file

        # -------------------------------------------------------------- helpers

        def _node(self, path: str | None, fi: Any = None) -> Node:
            fh = fh_of(fi)
            if fh is not None and fh in self.handles:
                return self.handles[fh][0]
            if path is None:
                raise FuseOSError(errno.EBADF)
            if path.lstrip("/") in self.control and path.count("/") == 1:
                return self.control[path.lstrip("/")]
            try:
                return self.tree.lookup(path)
            except OSError as exc:
                raise FuseOSError(exc.errno) from None

        def _parent(self, path: str) -> tuple[DirNode, str]:
            try:
                parent, name = self.tree.parent_of(path)
            except OSError as exc:
                raise FuseOSError(exc.errno) from None
            if parent is self.tree.root and name in self.control:
                raise FuseOSError(errno.EPERM)
            return parent, name

        def _open_handle(self, node: Node, flags: int, name: str) -> int:
            """A handle on `node`; `name` is what triggers and counters know it by: a file's base name, a
            directory's path."""
            self._next_fh += 1
            self.handles[self._next_fh] = (node, flags, name)
            return self._next_fh

        def _name(self, fi: Any) -> str:
            fh = fh_of(fi)
            return self.handles[fh][2] if fh in self.handles else ""

        def _alive_for(self, op: str, path: str | None, args: tuple[Any, ...]) -> bool:
            """Whether `op` may run: always while powered; after an armed cut fired only on the control
            files (and a stat of the root, which the kernel needs to reach them)."""
            if not self.tree.dead:
                return True
            if path is not None:
                name = path.lstrip("/")
                return (name in self.control and path.count("/") == 1) or (
                    path == "/" and op in ("getattr", "access", "statfs")
                )
            fh = fh_of(args[-1]) if args else None
            return fh in self.handles and isinstance(self.handles[fh][0], ControlNode)

        def _control(self, node: ControlNode, data: bytes) -> None:
            if node.name == CUT_FILE:
                self.tree.cut()
            elif node.name == CTL_FILE:
                try:
                    cmd = json.loads(data)
                    if cmd["op"] == "arm":
                        self.tree.arm(Trigger.from_json(cmd))
                    elif cmd["op"] == "disarm":
                        self.tree.disarm()
                    elif cmd["op"] == "revive":
                        self.tree.revive()
                    elif cmd["op"] == "changed_since":
                        self.answer = json.dumps(self.tree.changed_since(int(cmd["seq"]))).encode()
                    else:
                        raise ValueError(cmd["op"])
                except (ValueError, KeyError, TypeError) as exc:
                    print(f"lazyfs: bad control command {data!r}: {exc}", file=sys.stderr, flush=True)
                    raise FuseOSError(errno.EINVAL) from None

        def _set_fi(self, fi: Any, node: Node, path: str) -> None:
            fi.fh = self._open_handle(node, fi.flags, path.rsplit("/", 1)[-1])
            fi.keep_cache = 0
            # Shared mmaps (SQLite WAL's -shm) need the page cache; everything else bypasses it.
            fi.direct_io = 0 if path.endswith("-shm") else 1

        def _control_bytes(self, node: ControlNode) -> bytes:
            if node.name == STATS_FILE:
                return self._stats_bytes()
            return self.answer if node.name == ANSWER_FILE else b""

        def _stats_bytes(self) -> bytes:
            return json.dumps(
                {**self.tree.stats, "dead": self.tree.dead, "fired": self.tree.fired}, sort_keys=True
            ).encode()

        # -------------------------------------------------------------- metadata

        def getattr(self, path: str | None, fh: Any = None) -> dict[str, Any]:
            with self._mutex:
                node = self._node(path, fh)
                if isinstance(node, DirNode):
                    size, nlink = 4096, 2 + sum(isinstance(c, DirNode) for c in node.entries.values())
                elif isinstance(node, FileNode):
                    size, nlink = len(node.data), 1
                else:
                    size, nlink = len(self._control_bytes(node)), 1
                return {
                    "st_mode": node.mode,
                    "st_ino": node.ino,
                    "st_nlink": nlink,
                    "st_size": size,
                    "st_uid": node.uid,
                    "st_gid": node.gid,
                    "st_atime": node.atime,
                    "st_mtime": node.mtime,
                    "st_ctime": node.ctime,
                    "st_blksize": _BLOCK,
                    "st_blocks": (size + 511) // 512,
                }

        def chmod(self, path: str | None, mode: int, fh: Any = None) -> int:
            with self._mutex:
                node = self._node(path, fh)
                node.mode = (node.mode & ~0o7777) | (mode & 0o7777)
                node.ctime = time.time_ns()
                return 0

        def chown(self, path: str | None, uid: int, gid: int, fh: Any = None) -> int:
            with self._mutex:
                node = self._node(path, fh)
                if uid != -1:
                    node.uid = uid
                if gid != -1:
                    node.gid = gid
                node.ctime = time.time_ns()
                return 0

        def utimens(self, path: str | None, times: tuple[int, int] | None = None, fh: Any = None) -> int:
            with self._mutex:
                node = self._node(path, fh)
                now = time.time_ns()
                atime, mtime = times if times is not None else (now, now)
                if atime != UTIME_OMIT:
                    node.atime = now if atime == UTIME_NOW else atime
                if mtime != UTIME_OMIT:
                    node.mtime = now if mtime == UTIME_NOW else mtime
                node.ctime = now
                return 0

        def access(self, path: str, amode: int) -> int:
            with self._mutex:
                self._node(path)
                return 0

        def statfs(self, path: str) -> dict[str, int]:
            total = 16 * 2**30 // _BLOCK
            return {
                "f_bsize": _BLOCK,
                "f_frsize": _BLOCK,
                "f_blocks": total,
                "f_bfree": total,
                "f_bavail": total,
                "f_files": 1 << 20,
                "f_ffree": 1 << 20,
                "f_favail": 1 << 20,
                "f_namemax": 255,
            }

        # -------------------------------------------------------------- directories

        def _create(self, path: str, make: Callable[[int], Node]) -> int:
            """A new entry at `path`, made by `make(inode number)`; EEXIST when the name is taken."""
            with self._mutex:
                parent, name = self._parent(path)
                if name in parent.entries:
                    raise FuseOSError(errno.EEXIST)
                parent.entries[name] = make(self.tree.new_ino())
                parent.touch()
                self.tree.mark(parent.entries[name])
                self.tree.stats["creates"] += 1
                return 0

        def mkdir(self, path: str, mode: int) -> int:
            return self._create(path, lambda ino: DirNode(ino, mode, self.uid, self.gid))

        def rmdir(self, path: str) -> int:
            with self._mutex:
                parent, name = self._parent(path)
                node = parent.entries.get(name)
                if node is None:
                    raise FuseOSError(errno.ENOENT)
                if not isinstance(node, DirNode):
                    raise FuseOSError(errno.ENOTDIR)
                if node.entries:
                    raise FuseOSError(errno.ENOTEMPTY)
                del parent.entries[name]
                self.tree.mark(node)
                parent.touch()
                self.tree.stats["unlinks"] += 1
                return 0

        def opendir(self, path: str) -> int:
            with self._mutex:
                node = self._node(path)
                if not isinstance(node, DirNode):
                    raise FuseOSError(errno.ENOTDIR)
                return self._open_handle(node, os.O_RDONLY, path)

        def readdir(self, path: str | None, fh: int) -> list[tuple[str, dict[str, int], int]]:
            # With use_ino the kernel gets our inode numbers, so each entry carries one (glibc skips ino 0).
            with self._mutex:
                node = self._node(path, fh)
                if not isinstance(node, DirNode):
                    raise FuseOSError(errno.ENOTDIR)
                return [
                    (".", {"st_ino": node.ino, "st_mode": node.mode}, 0),
                    ("..", {"st_ino": node.ino, "st_mode": node.mode}, 0),
                    *((name, {"st_ino": child.ino, "st_mode": child.mode}, 0) for name, child in node.entries.items()),
                ]

        def releasedir(self, path: str | None, fh: int) -> int:
            with self._mutex:
                self.handles.pop(fh, None)
                return 0

        def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
            with self._mutex:
                self.tree.fsync_dir(self._node(path, fh), self._name(fh))
                return 0

        # -------------------------------------------------------------- names

        def create(self, path: str, mode: int, fi: Any) -> int:
            with self._mutex:
                parent, name = self._parent(path)
                node = parent.entries.get(name)
                if node is None:
                    node = FileNode(self.tree.new_ino(), mode, self.uid, self.gid)
                    parent.entries[name] = node
                    self.tree.mark(node)
                    parent.touch()
                    self.tree.stats["creates"] += 1
                elif fi.flags & os.O_EXCL:
                    raise FuseOSError(errno.EEXIST)
                elif isinstance(node, DirNode):
                    raise FuseOSError(errno.EISDIR)
                if isinstance(node, FileNode) and fi.flags & os.O_TRUNC:
                    self.tree.truncate(node, 0)
                self._set_fi(fi, node, path)
                return 0

        def mknod(self, path: str, mode: int, dev: int) -> int:
            if not stat.S_ISREG(mode):
                raise FuseOSError(errno.EPERM)
            return self._create(path, lambda ino: FileNode(ino, mode, self.uid, self.gid))

        def unlink(self, path: str) -> int:
            with self._mutex:
                parent, name = self._parent(path)
                node = parent.entries.get(name)
                if node is None:
                    raise FuseOSError(errno.ENOENT)
                if isinstance(node, DirNode):
                    raise FuseOSError(errno.EISDIR)
                del parent.entries[name]
                self.tree.mark(node)
                parent.touch()
                self.tree.stats["unlinks"] += 1
                return 0

        def rename(self, old: str, new: str) -> int:
            with self._mutex:
                old_parent, old_name = self._parent(old)
                new_parent, new_name = self._parent(new)
                node = old_parent.entries.get(old_name)
                if node is None:
                    raise FuseOSError(errno.ENOENT)
                target = new_parent.entries.get(new_name)
                if target is node:
                    return 0
                if isinstance(node, DirNode):
                    if any(a is node for a in self._ancestors(new)):  # moving a directory below itself
                        raise FuseOSError(errno.EINVAL)
                    if target is not None and not isinstance(target, DirNode):
                        raise FuseOSError(errno.ENOTDIR)
                if target is not None:
                    if isinstance(target, DirNode):
                        if not isinstance(node, DirNode):
                            raise FuseOSError(errno.EISDIR)
                        if target.entries:
                            raise FuseOSError(errno.ENOTEMPTY)
                del old_parent.entries[old_name]
                new_parent.entries[new_name] = node
                self.tree.mark(node, target)
                old_parent.touch()
                new_parent.touch()
                node.ctime = time.time_ns()
                self.tree.stats["renames"] += 1
                return 0

        def _ancestors(self, path: str) -> list[Node]:
            nodes: list[Node] = [self.tree.root]
            node: Node = self.tree.root
            for part in self.tree.split(path)[:-1]:
                assert isinstance(node, DirNode)
                node = node.entries[part]
                nodes.append(node)
            return nodes

        def link(self, target: str, source: str) -> int:
            raise FuseOSError(errno.EPERM)

        def symlink(self, target: str, source: str) -> int:
            raise FuseOSError(errno.EPERM)

        # -------------------------------------------------------------- files

        def open(self, path: str, fi: Any) -> int:
            with self._mutex:
                node = self._node(path)
                if isinstance(node, DirNode):
                    raise FuseOSError(errno.EISDIR)
                if isinstance(node, FileNode) and fi.flags & os.O_TRUNC and fi.flags & os.O_ACCMODE:
                    self.tree.truncate(node, 0)
                self._set_fi(fi, node, path)
                if isinstance(node, ControlNode) and node.name == STATS_FILE:
                    self.stats_snapshots[fh_of(fi)] = self._stats_bytes()  # type: ignore[index]
                return 0

        def read(self, path: str | None, size: int, offset: int, fi: Any) -> bytes:
            with self._mutex:
                node = self._node(path, fi)
                if isinstance(node, ControlNode):
                    snapshot = self.stats_snapshots.get(fh_of(fi))  # type: ignore[arg-type]
                    data = snapshot if snapshot is not None else self._control_bytes(node)
                    return data[offset : offset + size]
                if not isinstance(node, FileNode):
                    raise FuseOSError(errno.EISDIR)
                return bytes(node.data[offset : offset + size])

        def write(self, path: str | None, data: bytes, offset: int, fi: Any) -> int:
            with self._mutex:
                fh = fh_of(fi)
                node = self._node(path, fi)
                if isinstance(node, ControlNode):
                    self._control(node, bytes(data))
                    return len(data)
                if not isinstance(node, FileNode):
                    raise FuseOSError(errno.EISDIR)
                flags = self.handles[fh][1] if fh in self.handles else 0
                if flags & os.O_APPEND:
                    offset = len(node.data)
                try:
                    self.tree.write(node, offset, data, self._name(fi))
                except OSError as exc:  # an armed cut fired in the middle of this write
                    raise FuseOSError(exc.errno) from None
                return len(data)

        def truncate(self, path: str | None, length: int, fh: Any = None) -> int:
            with self._mutex:
                node = self._node(path, fh)
                if isinstance(node, ControlNode):
                    return 0
                if not isinstance(node, FileNode):
                    raise FuseOSError(errno.EISDIR)
                self.tree.truncate(node, length)
                return 0

        def fallocate(self, path: str | None, mode: int, offset: int, size: int, fi: Any) -> int:
            with self._mutex:
                node = self._node(path, fi)
                if not isinstance(node, FileNode):
                    raise FuseOSError(errno.EISDIR)
                if mode != 0:
                    raise FuseOSError(errno.EOPNOTSUPP)
                if offset + size > len(node.data):
                    self.tree.truncate(node, offset + size)
                return 0

        def flush(self, path: str | None, fi: Any) -> int:
            return 0

        def release(self, path: str | None, fi: Any) -> int:
            with self._mutex:
                self.handles.pop(fh_of(fi), None)
                self.stats_snapshots.pop(fh_of(fi), None)  # type: ignore[arg-type]
                return 0

        def fsync(self, path: str | None, datasync: int, fi: Any) -> int:
            with self._mutex:
                node = self._node(path, fi)
                if not isinstance(node, ControlNode):
                    self.tree.fsync_file(node, bool(datasync), self._name(fi))
                return 0

    def guarded(op: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)  # mfusepy reads some signatures (create)
        def call(self: LazyFS, path: str | None, *args: Any, **kwargs: Any) -> Any:
            if not self._alive_for(op, path, args or tuple(kwargs.values())):
                raise FuseOSError(errno.EIO)  # no power
            return method(self, path, *args, **kwargs)

        return call

    for op in GUARDED_OPERATIONS:
        setattr(LazyFS, op, guarded(op, getattr(LazyFS, op)))
    return LazyFS


def _fuse_class() -> type:
    """mfusepy's FUSE with the handle passed on for setattr calls made on an open file (ftruncate, fchmod,
    futimens): with nullpath_ok, libfuse gives those no path, and mfusepy 3.1 drops the handle."""
    import mfusepy

    def decode(fuse: Any, path: bytes | None) -> str | None:
        return None if path is None else path.decode(fuse.encoding, fuse.errors)

    def handle(fip: Any) -> Any:
        return fip.contents if fip else None

    class HandleFUSE(mfusepy.FUSE):
        def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
            return self.operations.truncate(decode(self, path), length, handle(fip))

        def chmod_fuse_3(self, path: bytes | None, mode: int, fip: Any) -> int:
            return self.operations.chmod(decode(self, path), mode, handle(fip))

        def chown_fuse_3(self, path: bytes | None, uid: int, gid: int, fip: Any) -> int:
            if ctypes.c_uint32(uid + 1).value == 0:
                uid = -1
            if ctypes.c_uint32(gid + 1).value == 0:
                gid = -1
            return self.operations.chown(decode(self, path), uid, gid, handle(fip))

        def utimens_fuse_3(self, path: bytes | None, buf: Any, fip: Any) -> int:
            times = None
            if buf:  # each one: nanoseconds, "now" or "leave as is" (UTIME_NOW / UTIME_OMIT)
                times = tuple(
                    UTIME_NOW
                    if ts.tv_nsec == _UTIME_NOW_NSEC
                    else UTIME_OMIT
                    if ts.tv_nsec == _UTIME_OMIT_NSEC
                    else ts.tv_sec * 10**9 + ts.tv_nsec
                    for ts in (buf.contents.actime, buf.contents.modtime)
                )
            return self.operations.utimens(decode(self, path), times, handle(fip))

    return HandleFUSE


def serve(mountpoint: str, debug: bool = False) -> None:
    operations = _operations_class()()
    _fuse_class()(
        operations,
        mountpoint,
        raw_fi=True,
        foreground=True,
        nothreads=True,
        debug=debug,
        fsname="lazyfs",
        subtype="lazyfs",
        hard_remove=True,
        use_ino=True,
        entry_timeout=0,
        attr_timeout=0,
        negative_timeout=0,
        ac_attr_timeout=0,
    )


# ---------------------------------------------------------------------------------------------- test side


class FuseUnavailable(RuntimeError):
    """FUSE cannot be used on this machine (no /dev/fuse, no fusermount3, no mfusepy, mount refused)."""


def fuse_problem() -> str | None:
    """Why FUSE cannot be used here, or None when it looks usable (the mount itself may still fail)."""
    import importlib.util

    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (apt-get install fuse3)"
    if importlib.util.find_spec("mfusepy") is None:
        return "the Python package mfusepy is missing (pip install mfusepy)"
    return None


def log_tail(path: Path, chars: int = 3000) -> str:
    """The end of a helper process's log file ('' when it cannot be read)."""
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


class LazyMount:
    """A LazyFS process mounted on `mountpoint`; `cut()` simulates a power loss."""

    def __init__(self, mountpoint: Path, log_path: Path | None = None) -> None:
        self.mountpoint = Path(mountpoint)
        self.log_path = Path(log_path) if log_path else self.mountpoint.with_name(self.mountpoint.name + ".log")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> LazyMount:
        problem = fuse_problem()
        if problem:
            raise FuseUnavailable(problem)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), str(self.mountpoint)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise FuseUnavailable(f"the LazyFS process exited ({self.process.returncode}): {self.log_tail()}")
            if os.path.ismount(self.mountpoint) and (self.mountpoint / STATS_FILE).exists():
                return self
            time.sleep(0.05)
        self.stop()
        raise FuseUnavailable(f"LazyFS did not mount within {timeout:.0f} s: {self.log_tail()}")

    def cut(self) -> dict[str, Any]:
        """Power loss: the filesystem keeps only what was fsynced (files) and fsyncdir'ed (directories)."""
        with open(self.mountpoint / CUT_FILE, "wb", buffering=0) as handle:
            handle.write(b"cut")
        return self.stats()

    def stats(self) -> dict[str, Any]:
        with open(self.mountpoint / STATS_FILE, "rb", buffering=0) as handle:
            return json.loads(handle.read() or b"{}")

    def control(self, **cmd: Any) -> None:
        with open(self.mountpoint / CTL_FILE, "wb", buffering=0) as handle:
            handle.write(json.dumps(cmd).encode())

    def arm(self, kind: str, names: tuple[str, ...] | list[str], nth: int, keep: float = 0.0) -> None:
        """Arm a cut to fire inside the filesystem (a `Trigger`: "write" or "sync"); see `fired()`."""
        self.control(op="arm", kind=kind, names=list(names), nth=nth, keep=keep)

    def disarm(self) -> None:
        self.control(op="disarm")

    def fired(self) -> dict[str, Any] | None:
        """What the armed cut did once it fired (the filesystem is then dead until `revive()`), else None."""
        return self.stats()["fired"]

    def revive(self) -> None:
        """Power back after an armed cut: operations work again (on what survived the cut)."""
        self.control(op="revive")

    def changed_since(self, seq: int) -> dict[str, Any]:
        """{"seq": now, "inos": [...]}: the inodes whose bytes or names changed after sequence number `seq`."""
        self.control(op="changed_since", seq=seq)
        with open(self.mountpoint / ANSWER_FILE, "rb", buffering=0) as handle:
            return json.loads(handle.read())

    def log_tail(self, chars: int = 3000) -> str:
        return log_tail(self.log_path, chars)

    def stop(self) -> None:
        if self.process is None:
            return
        for args in (["fusermount3", "-u", str(self.mountpoint)], ["fusermount3", "-uz", str(self.mountpoint)]):
            if self.process.poll() is not None or not os.path.ismount(self.mountpoint):
                break
            subprocess.run(args, capture_output=True, timeout=30)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        if os.path.ismount(self.mountpoint):
            subprocess.run(["fusermount3", "-uz", str(self.mountpoint)], capture_output=True, timeout=30)
        self.process = None

    def __enter__(self) -> LazyMount:
        return self.start()

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        print("usage: lazyfs.py MOUNTPOINT [--debug]", file=sys.stderr)
        raise SystemExit(2)
    serve(sys.argv[1], debug=len(sys.argv) == 3 and sys.argv[2] == "--debug")
