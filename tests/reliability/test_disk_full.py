"""A real small filesystem (an 8 MB tmpfs) that fills up under the experiment's artifacts: cleanup runs
(periodic oldest first), `best` survives, training goes on and later saves succeed; a real ENOSPC is
logged and retried, and frees space by cleanup where it can."""

from __future__ import annotations

import errno
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import mlflow_persist as mp
from mlflow_persist._observe.system_metrics import disk_space
from mlflow_persist._store.mlflow_store import MlflowStore
from reliability.support import ListHandler, make_model, train_step

WIDTH = 1536  # Adam + weights: a ~0.6 MB checkpoint, every tensor under 1 MB


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({result.stderr.strip() or result.returncode}); needs root")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _config(uri: str, disk: Path, **overrides: object) -> mp.PersistConfig:
    values: dict[str, object] = dict(
        tracking_uri=uri,
        artifact_location=(disk / "artifacts").as_uri(),
        experiment_name=f"disk-{uuid.uuid4().hex[:6]}",
        keep_best=100,
        keep_periodic=100,
        min_free_disk_percent=0,
        log_system_metrics=False,
        scheduler_interval_seconds=0.5,
        save_retry_attempts=40,
        save_retry_max_wait_seconds=0.2,
    )
    values.update(overrides)
    return mp.PersistConfig(**values)


def _fill(disk: Path, leave_bytes: int) -> Path:
    """Fill the filesystem with a junk file, leaving about `leave_bytes` free."""
    junk = disk / "junk.bin"
    chunk = b"\0" * 65536
    with open(junk, "wb") as handle:
        try:
            while True:
                handle.write(chunk)
                handle.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    size = junk.stat().st_size
    os.truncate(junk, max(0, size - leave_bytes))
    return junk


def _tmp_dirs(disk: Path) -> list[Path]:
    return [p for p in disk.rglob(".tmp-*")]


@pytest.mark.slow  # seconds of work: in `make test`, not in `make test-fast`
def test_disk_pressure_cleans_oldest_periodic_first_and_best_survives(
    small_disk: Path, sqlite_uri: str, persist_logs: ListHandler
) -> None:
    cfg = _config(sqlite_uri, small_disk, min_free_disk_mb=3.0, periodic_every_steps=3)
    model, opt = make_model(3, WIDTH)
    losses = [10.0 - 0.1 * i if i % 4 == 0 else 50.0 + i for i in range(72)]  # an improvement every 4th step
    with mp.Persistence(cfg, install_signal_handlers=False) as persist:
        handle = persist.track("extrema", model, optimizer=opt)
        for loss in losses:
            train_step(model, opt)
            handle.step(loss=loss)
            assert persist.flush(timeout=60)
        saves, failures = handle.saves, handle.failures
        persist.close(final_checkpoints=False)
    store = MlflowStore(sqlite_uri, cfg.experiment_name)
    versions = store.list_versions("extrema")
    deletions = [r for r in persist_logs.records if "to free disk space" in r.getMessage()]
    deleted = [(r.version, r.getMessage().split("(")[1].split(")")[0]) for r in deletions]  # type: ignore[attr-defined]
    # Training went on and every save succeeded, also under pressure.
    assert failures == 0 and saves >= len(losses) // 4
    assert deleted, "the disk never ran short: lower the tmpfs size or raise min_free_disk_mb"
    # Cleanup order: periodic oldest first; every surviving periodic version is newer than the deleted ones.
    periodic_deleted = [v for v, c in deleted if c == "periodic"]
    assert periodic_deleted == sorted(periodic_deleted)
    surviving_periodic = [v.version for v in versions if v.category == "periodic"]
    assert not surviving_periodic or not periodic_deleted or min(surviving_periodic) > max(periodic_deleted)
    # `best` survives: it is the version of the lowest loss ever reported, and it loads.
    best = store.alias_version("extrema")
    assert best is not None and best.value == min(losses)
    assert (
        mp.load_checkpoint("models:/extrema@best", tracking_uri=sqlite_uri, experiment_name=cfg.experiment_name).step
        == best.step
    )
    # Later saves succeeded: the newest version is the last step's save, and the disk kept its reserve.
    assert versions[-1].step == len(losses) and not _tmp_dirs(small_disk)
    assert disk_space(small_disk).free_mb >= 3.0 - 1.0  # one checkpoint below the reserve at most
    print(
        f"\nFAULT disk-pressure saves={saves} deleted={len(deleted)} "
        f"(periodic={len(periodic_deleted)}) failures={failures} best=v{best.version}"
    )


@pytest.mark.slow
def test_real_enospc_is_logged_retried_and_recovers(
    small_disk: Path, sqlite_uri: str, persist_logs: ListHandler
) -> None:
    cfg = _config(sqlite_uri, small_disk, min_free_disk_mb=0)
    model, opt = make_model(4, WIDTH)
    with mp.Persistence(cfg, install_signal_handlers=False) as persist:
        handle = persist.track("cob_rl", model, optimizer=opt)
        train_step(model, opt)
        handle.step(loss=1.0)
        assert persist.flush(timeout=60) and handle.saves == 1

        # 1. Nothing deletable (the only version is best and newest): the save fails with ENOSPC, is logged
        #    and retried while training goes on; once the junk is gone the retry succeeds.
        junk = _fill(small_disk, leave_bytes=100_000)
        train_step(model, opt)
        handle.step(loss=0.5)
        failed_step = handle.current_step
        deadline = time.monotonic() + 120
        while handle.failures < 3 and time.monotonic() < deadline:
            train_step(model, opt)
            handle.step(loss=2.0)  # worse: no new save, training continues
            time.sleep(0.01)
        assert handle.failures >= 3 and handle.current_step > failed_step
        errors = [m for m in persist_logs.messages() if "failed" in m and "will retry" in m]
        assert errors and "cob_rl" in errors[0] and f"step {failed_step}" in errors[0]
        assert "No space left on device" in errors[0] or "ENOSPC" in errors[0] or "Errno 28" in errors[0], errors[0]
        assert not _tmp_dirs(small_disk), "a failed save left its partial files on the full disk"
        junk.unlink()
        assert persist.flush(timeout=120)
        assert handle.saves == 2 and not persist.writer.failed
        store = persist.store
        assert store.list_versions("cob_rl")[-1].step == failed_step

        # 2. An older performance version is deletable: ENOSPC triggers cleanup and the retry succeeds
        #    with the junk still in place.
        junk = _fill(small_disk, leave_bytes=100_000)
        train_step(model, opt)
        handle.step(loss=0.25)
        second_step = handle.current_step
        assert persist.flush(timeout=120)
        assert not persist.writer.failed and handle.saves == 3
        versions = store.list_versions("cob_rl")
        assert [v.step for v in versions] == [failed_step, second_step]  # v1 (loss 1.0) was deleted for space
        assert store.alias_version("cob_rl").step == second_step
        junk.unlink()
        failures = handle.failures
        persist.close(final_checkpoints=False)
    print(f"\nFAULT enospc failed_attempts={failures} recovered_saves=2 lost=0")
