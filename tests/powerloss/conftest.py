"""Fixtures of the power-loss tests: a LazyFS mount (lazyfs.py) per test, unmounted at teardown, also when
the test failed. Without FUSE the tests are skipped, unless MLFLOW_PERSIST_REQUIRE_SERVICES=1 (CI), where
that is a failure."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from powerloss.lazyfs import FuseUnavailable, LazyMount


def start_mount(mountpoint: Path) -> LazyMount:
    try:
        return LazyMount(mountpoint).start()
    except FuseUnavailable as exc:
        if os.environ.get("MLFLOW_PERSIST_REQUIRE_SERVICES") == "1":
            pytest.fail(f"FUSE is required (MLFLOW_PERSIST_REQUIRE_SERVICES=1) but unavailable: {exc}")
        pytest.skip(f"FUSE unavailable: {exc}")


@pytest.fixture
def lazyfs(tmp_path: Path) -> Iterator[LazyMount]:
    """A fresh, empty LazyFS mounted on tmp_path/mnt; `lazyfs.cut()` simulates a power loss."""
    mount = start_mount(tmp_path / "mnt")
    try:
        yield mount
    finally:
        mount.stop()
