"""The checksum a checkpoint is verified against: which algorithm, and the hex digest.

New checkpoints use XXH3-128 (xxhash): about 30 GB/s here against sha256's 1.7 GB/s, and the digest exists
to catch damaged bytes (torn writes, bit rot, truncated uploads), not a forger: a checkpoint is loaded with
`weights_only=True`, which is what keeps hostile bytes from running code. Versions written before carry
only a sha256, which is still verified.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Callable
from typing import Any

import xxhash

from mlflow_persist._policy.versions import DEFAULT_ALGORITHM, SHA256, XXH3_128, Digest, recorded_digest

__all__ = [
    "DEFAULT_ALGORITHM",
    "SHA256",
    "XXH3_128",
    "Digest",
    "digest_bytes",
    "digest_file",
    "new_hasher",
    "recorded_digest",
]


_HASHERS: dict[str, Callable[[], Any]] = {SHA256: hashlib.sha256, XXH3_128: xxhash.xxh3_128}


def new_hasher(algorithm: str = DEFAULT_ALGORITHM) -> Any:
    try:
        return _HASHERS[algorithm]()
    except KeyError:
        raise ValueError(
            f"unknown checksum algorithm {algorithm!r}; this mlflow-persist knows "
            f"{', '.join(sorted(_HASHERS))}; upgrade the package to read this checkpoint"
        ) from None


def digest_bytes(data: Any, algorithm: str = DEFAULT_ALGORITHM) -> Digest:
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return Digest(algorithm, hasher.hexdigest())


def digest_file(path: str | os.PathLike[str], algorithm: str = DEFAULT_ALGORITHM) -> Digest:
    """The digest of a file, read through one memory map (no copy into Python buffers), or in chunks where
    the filesystem cannot map files (FUSE mounts with direct I/O answer ENODEV)."""
    hasher = new_hasher(algorithm)
    with open(path, "rb", buffering=0) as handle:
        if os.fstat(handle.fileno()).st_size:
            try:
                with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                    hasher.update(mapped)
            except OSError:
                hasher = new_hasher(algorithm)
                handle.seek(0)
                chunk = bytearray(8 << 20)
                view = memoryview(chunk)
                while read := handle.readinto(chunk):
                    hasher.update(view[:read])
    return Digest(algorithm, hasher.hexdigest())
