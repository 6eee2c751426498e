"""DirectFile: byte-exact files through the aligned staging buffer, on disks that take O_DIRECT and on those
that refuse it (tmpfs at open, some FUSE filesystems only at write)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from mlflow_persist._format import direct_io
from mlflow_persist._format.direct_io import STAGING_BYTES, DirectFile


def _chunks(total: int, sizes: list[int]) -> list[bytes]:
    data = os.urandom(total)
    out, offset, index = [], 0, 0
    while offset < total:
        size = sizes[index % len(sizes)]
        out.append(data[offset : offset + size])
        offset += size
        index += 1
    return out


@pytest.mark.parametrize("total", [0, 1, 4095, 4096, 4097, STAGING_BYTES, STAGING_BYTES + 1, 3 * STAGING_BYTES + 12345])
def test_the_file_holds_exactly_the_bytes_written(tmp_path: Path, total: int) -> None:
    chunks = _chunks(total, [1, 63, 4096, 1 << 20, 7, STAGING_BYTES + 3])
    with DirectFile(tmp_path / "f") as handle:
        for chunk in chunks:
            assert handle.write(memoryview(chunk)) == len(chunk)
    assert (tmp_path / "f").read_bytes() == b"".join(chunks)
    assert handle.size == total


def test_a_filesystem_refusing_o_direct_at_open_gets_buffered_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def open_(path: str, flags: int, mode: int = 0o777) -> int:
        if flags & os.O_DIRECT:  # what tmpfs before Linux 6.6 and many FUSE mounts answer
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, mode)

    monkeypatch.setattr(direct_io.os, "open", open_)
    with DirectFile(tmp_path / "f") as handle:
        handle.write(b"x" * 5000)
        assert not handle.direct
    assert (tmp_path / "f").read_bytes() == b"x" * 5000


def test_o_direct_refused_at_the_first_write_falls_back_without_losing_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    refused = []

    def write(fd: int, data: memoryview) -> int:
        if not refused:
            refused.append(fd)
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(direct_io.os, "write", write)
    payload = os.urandom(2 * STAGING_BYTES + 99)
    with DirectFile(tmp_path / "f") as handle:
        handle.write(payload)
    assert refused and not handle.direct
    assert (tmp_path / "f").read_bytes() == payload


def test_a_full_disk_surfaces_as_the_oserror_with_its_errno(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def write(fd: int, data: memoryview) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(direct_io.os, "write", write)
    with pytest.raises(OSError) as raised:
        with DirectFile(tmp_path / "f") as handle:
            handle.write(b"y" * (STAGING_BYTES + 1))
    assert raised.value.errno == errno.ENOSPC
