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
(Metadata such as mode and times is not rolled back.)

Control, from inside the mount (so it is ordered with the filesystem calls around it; the filesystem runs
single-threaded):

- write anything to `/.lazyfs_cut`: power cut;
- read `/.lazyfs_stats`: JSON counters (fsyncs, directory fsyncs, cuts, writes, ...).

Neither name is listed by readdir. The kernel's page cache is kept out of the way: files are opened with
`direct_io` (except SQLite's `-shm` files, which WAL mode maps shared; libfuse 3.14 cannot map direct_io
files), attribute and entry caches are off, and no handle keeps its cache across opens, so a process that
opens a file after a cut reads what the filesystem holds then.

Run: `python lazyfs.py MOUNTPOINT` (foreground; unmount with `fusermount3 -u MOUNTPOINT`). The test side
uses `LazyMount` (no mfusepy import needed in the test process).
"""

from __future__ import annotations

import ctypes
import errno
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
from pathlib import Path
from typing import Any

CUT_FILE = ".lazyfs_cut"
STATS_FILE = ".lazyfs_stats"
CONTROL_FILES = (CUT_FILE, STATS_FILE)
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
    __slots__ = ("data", "durable")

    def __init__(self, ino: int, mode: int, uid: int = 0, gid: int = 0) -> None:
        super().__init__(ino, stat.S_IFREG | (mode & 0o7777), uid, gid)
        self.data = bytearray()
        self.durable = b""  # a file never fsynced has no durable bytes


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


class LazyTree:
    """The filesystem's state and its durability rules, without any FUSE (unit-testable on its own)."""

    def __init__(self) -> None:
        self._next_ino = 2
        self.root = DirNode(1, 0o755)
        self.stats = {
            "fsync": 0,
            "fdatasync": 0,
            "fsyncdir": 0,
            "fsync_on_dir": 0,
            "cuts": 0,
            "writes": 0,
            "bytes_written": 0,
            "creates": 0,
            "renames": 0,
            "unlinks": 0,
            "reverted_files": 0,
            "reverted_dirs": 0,
        }

    def new_ino(self) -> int:
        self._next_ino += 1
        return self._next_ino

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

    # ------------------------------------------------------------------ durability

    def fsync_file(self, node: Node, datasync: bool) -> None:
        if isinstance(node, DirNode):
            self.stats["fsync_on_dir"] += 1
            self.fsync_dir(node)
            return
        self.stats["fdatasync" if datasync else "fsync"] += 1
        if isinstance(node, FileNode):
            node.durable = bytes(node.data)

    def fsync_dir(self, node: Node) -> None:
        self.stats["fsyncdir"] += 1
        if isinstance(node, DirNode):
            node.durable_entries = dict(node.entries)
        elif isinstance(node, FileNode):  # an fsyncdir with a file's handle: treat it as the file's fsync
            node.durable = bytes(node.data)

    def cut(self) -> dict[str, int]:
        """Power loss: keep only what was made durable."""
        seen: set[int] = set()
        reverted_files = reverted_dirs = 0
        stack: list[DirNode] = [self.root]
        while stack:
            directory = stack.pop()
            if id(directory) in seen:
                continue
            seen.add(id(directory))
            if directory.entries != directory.durable_entries:
                reverted_dirs += 1
            directory.entries = dict(directory.durable_entries)
            for child in directory.entries.values():
                if isinstance(child, DirNode):
                    stack.append(child)
                elif isinstance(child, FileNode) and id(child) not in seen:
                    seen.add(id(child))
                    if child.data != child.durable:
                        reverted_files += 1
                    child.data = bytearray(child.durable)
        self.stats["cuts"] += 1
        self.stats["reverted_files"] += reverted_files
        self.stats["reverted_dirs"] += reverted_dirs
        return {"reverted_files": reverted_files, "reverted_dirs": reverted_dirs}


# ---------------------------------------------------------------------------------------------- FUSE side


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
            self.handles: dict[int, tuple[Node, int]] = {}
            self._next_fh = 10
            self._mutex = threading.RLock()  # libfuse runs single-threaded here; the lock is a second guard
            self.control = {name: ControlNode(self.tree.new_ino(), name) for name in CONTROL_FILES}
            self.uid, self.gid = os.getuid(), os.getgid()

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

        def _open_handle(self, node: Node, flags: int) -> int:
            self._next_fh += 1
            self.handles[self._next_fh] = (node, flags)
            return self._next_fh

        def _set_fi(self, fi: Any, node: Node, path: str) -> None:
            fi.fh = self._open_handle(node, fi.flags)
            fi.keep_cache = 0
            # Shared mmaps (SQLite WAL's -shm) need the page cache; everything else bypasses it.
            fi.direct_io = 0 if path.endswith("-shm") else 1

        def _stats_bytes(self) -> bytes:
            return json.dumps(self.tree.stats, sort_keys=True).encode()

        # -------------------------------------------------------------- metadata

        def getattr(self, path: str | None, fh: Any = None) -> dict[str, Any]:
            with self._mutex:
                node = self._node(path, fh)
                if isinstance(node, DirNode):
                    size, nlink = 4096, 2 + sum(isinstance(c, DirNode) for c in node.entries.values())
                elif isinstance(node, FileNode):
                    size, nlink = len(node.data), 1
                else:
                    size, nlink = (len(self._stats_bytes()) if node.name == STATS_FILE else 0), 1
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
                parent.touch()
                self.tree.stats["unlinks"] += 1
                return 0

        def opendir(self, path: str) -> int:
            with self._mutex:
                node = self._node(path)
                if not isinstance(node, DirNode):
                    raise FuseOSError(errno.ENOTDIR)
                return self._open_handle(node, os.O_RDONLY)

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
                self.tree.fsync_dir(self._node(path, fh))
                return 0

        # -------------------------------------------------------------- names

        def create(self, path: str, mode: int, fi: Any) -> int:
            with self._mutex:
                parent, name = self._parent(path)
                node = parent.entries.get(name)
                if node is None:
                    node = FileNode(self.tree.new_ino(), mode, self.uid, self.gid)
                    parent.entries[name] = node
                    parent.touch()
                    self.tree.stats["creates"] += 1
                elif fi.flags & os.O_EXCL:
                    raise FuseOSError(errno.EEXIST)
                elif isinstance(node, DirNode):
                    raise FuseOSError(errno.EISDIR)
                if isinstance(node, FileNode) and fi.flags & os.O_TRUNC:
                    node.data = bytearray()
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
                    node.data = bytearray()
                    node.touch()
                self._set_fi(fi, node, path)
                return 0

        def read(self, path: str | None, size: int, offset: int, fi: Any) -> bytes:
            with self._mutex:
                node = self._node(path, fi)
                if isinstance(node, ControlNode):
                    data = self._stats_bytes() if node.name == STATS_FILE else b""
                    return data[offset : offset + size]
                if not isinstance(node, FileNode):
                    raise FuseOSError(errno.EISDIR)
                return bytes(node.data[offset : offset + size])

        def write(self, path: str | None, data: bytes, offset: int, fi: Any) -> int:
            with self._mutex:
                fh = fh_of(fi)
                node = self._node(path, fi)
                if isinstance(node, ControlNode):
                    if node.name == CUT_FILE:
                        self.tree.cut()
                    return len(data)
                if not isinstance(node, FileNode):
                    raise FuseOSError(errno.EISDIR)
                flags = self.handles.get(fh, (None, 0))[1] if fh is not None else 0
                if flags & os.O_APPEND:
                    offset = len(node.data)
                end = offset + len(data)
                if offset > len(node.data):
                    node.data.extend(bytes(offset - len(node.data)))
                node.data[offset:end] = data
                node.touch()
                self.tree.stats["writes"] += 1
                self.tree.stats["bytes_written"] += len(data)
                return len(data)

        def truncate(self, path: str | None, length: int, fh: Any = None) -> int:
            with self._mutex:
                node = self._node(path, fh)
                if isinstance(node, ControlNode):
                    return 0
                if not isinstance(node, FileNode):
                    raise FuseOSError(errno.EISDIR)
                if length < len(node.data):
                    del node.data[length:]
                else:
                    node.data.extend(bytes(length - len(node.data)))
                node.touch()
                return 0

        def fallocate(self, path: str | None, mode: int, offset: int, size: int, fi: Any) -> int:
            with self._mutex:
                node = self._node(path, fi)
                if not isinstance(node, FileNode):
                    raise FuseOSError(errno.EISDIR)
                if mode != 0:
                    raise FuseOSError(errno.EOPNOTSUPP)
                if offset + size > len(node.data):
                    node.data.extend(bytes(offset + size - len(node.data)))
                return 0

        def flush(self, path: str | None, fi: Any) -> int:
            return 0

        def release(self, path: str | None, fi: Any) -> int:
            with self._mutex:
                self.handles.pop(fh_of(fi), None)
                return 0

        def fsync(self, path: str | None, datasync: int, fi: Any) -> int:
            with self._mutex:
                node = self._node(path, fi)
                if not isinstance(node, ControlNode):
                    self.tree.fsync_file(node, bool(datasync))
                return 0

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

    def cut(self) -> dict[str, int]:
        """Power loss: the filesystem keeps only what was fsynced (files) and fsyncdir'ed (directories)."""
        with open(self.mountpoint / CUT_FILE, "wb", buffering=0) as handle:
            handle.write(b"cut")
        return self.stats()

    def stats(self) -> dict[str, int]:
        with open(self.mountpoint / STATS_FILE, "rb", buffering=0) as handle:
            return json.loads(handle.read() or b"{}")

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
