"""The disk guard under a simulated free-space reading: `psutil.disk_usage` answers for a pretend disk on
which every checkpoint the MemoryStore still holds the bytes of takes 10 MB, so deleting through the one
prune path really frees space. Checked against the store's registry and stored bytes: what is deleted, in
which order, and what is never deleted (`best`, the newest version, the newest complete cut's member)."""

from __future__ import annotations

import logging
import threading
from collections import namedtuple
from pathlib import Path

import psutil
import pytest
from runtime_support import CUT_COMPLETE, MODE, register

from mlflow_persist._runtime.disk_guard import DiskGuard, GuardedModel
from mlflow_persist.errors import DiskFullError
from mlflow_persist.testing import MemoryStore

MB = 2**20
TOTAL_MB = 1000.0
MB_EACH = 10.0
DiskUsage = namedtuple("DiskUsage", "total used free percent")


class DiskStore(MemoryStore):
    """A MemoryStore whose checkpoints land on a local disk at `path` (as an embedded MLflow store's do)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.disk_path = path

    def checkpoint_disk_path(self, run_id: str | None = None) -> Path | None:
        return self.disk_path


class SimulatedDisk:
    """`psutil.disk_usage` of the one guarded path: `other_mb` used by other files plus MB_EACH per stored
    checkpoint."""

    def __init__(self, store: MemoryStore, path: Path, other_mb: float) -> None:
        self.store, self.path, self.other_mb = store, path, other_mb
        self.readings = 0

    @property
    def free_mb(self) -> float:
        return TOTAL_MB - self.other_mb - MB_EACH * len(self.store.artifact_sources())

    def __call__(self, path: str) -> DiskUsage:
        assert Path(path) == self.path, f"the guard read the free space of {path}, not of the checkpoint disk"
        self.readings += 1
        free = self.free_mb * MB
        return DiskUsage(TOTAL_MB * MB, TOTAL_MB * MB - free, free, 100.0 * (1 - free / (TOTAL_MB * MB)))


def _model(name: str, registered: str | None = None, mode: str = "min") -> GuardedModel:
    return GuardedModel(name, registered or name, f"run-{name}", mode, threading.RLock())  # type: ignore[arg-type]


def _guard(store: MemoryStore, min_free_mb: float, *models: GuardedModel, percent: float = 0.0) -> DiskGuard:
    return DiskGuard(store, min_free_mb, percent, lambda: list(models))


def _disk(store: DiskStore, monkeypatch: pytest.MonkeyPatch, free_mb: float) -> SimulatedDisk:
    """Make the disk read `free_mb` free with what the store holds now."""
    disk = SimulatedDisk(store, store.disk_path, 0.0)
    disk.other_mb = TOTAL_MB - free_mb - MB_EACH * len(store.artifact_sources())
    monkeypatch.setattr(psutil, "disk_usage", disk)
    assert disk.free_mb == pytest.approx(free_mb)
    return disk


def _versions(store: MemoryStore, name: str) -> list[int]:
    return [v.version for v in store.list_versions(name)]


def _loads(store: MemoryStore, name: str) -> bool:
    """Every remaining version's bytes are still stored and verify."""
    return all(store.load_version(v).step == v.step for v in store.list_versions(name))


HISTORY = [1, 2, 3, 4, 5, 6, 7]
PRESSURE_ORDER = [2, 4, 3, 5, 6]  # of `_history`, as documented; 1 (best) and 7 (newest) never go


def _deleted(store: MemoryStore, name: str, before: list[int], order: list[int]) -> list[int]:
    """The versions of `name` gone from the registry, checked to be the first ones of `order`."""
    remaining = _versions(store, name)
    gone = [v for v in before if v not in remaining]
    assert set(gone) <= set(order), f"deleted {gone}, which the disk-pressure order never offers"
    deleted = [v for v in order if v in gone]
    assert deleted == order[: len(deleted)], f"deleted {deleted}, not the first ones of {order}"
    return deleted


@pytest.fixture
def store(tmp_path: Path) -> DiskStore:
    return DiskStore(tmp_path)


def _history(store: MemoryStore, name: str = "dqn", cut_tags: bool = False) -> None:
    """v1 performance 0.5 (best, min mode), v2 periodic, v3 final, v4 periodic, v5 performance 0.9,
    v6 performance 0.7, v7 periodic (newest). Documented disk-pressure order: periodic oldest first, then
    final oldest first, then performance worst first, never best or newest: 2, 4, 3, 5, 6."""
    mode = {MODE: "min"}
    cut = {CUT_COMPLETE: "true"}
    register(store, name, "performance", 1, value=0.5, extra_tags=mode)
    register(store, name, "periodic", 2, extra_tags=mode)
    register(store, name, "final", 3, extra_tags={**mode, **(cut if cut_tags else {})})
    register(store, name, "periodic", 4, extra_tags=mode)
    register(store, name, "performance", 5, value=0.9, extra_tags={**mode, **(cut if cut_tags else {})})
    register(store, name, "performance", 6, value=0.7, extra_tags=mode)
    register(store, name, "periodic", 7, extra_tags=mode)
    store.set_alias(name, "best", 1)


def test_enough_free_space_deletes_nothing(store: DiskStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _history(store)
    disk = _disk(store, monkeypatch, free_mb=500)
    _guard(store, 100, _model("dqn")).ensure_space(_model("dqn"))
    assert disk.readings >= 1 and store.calls["delete"] == 0
    assert _versions(store, "dqn") == HISTORY


def test_short_of_space_it_deletes_in_disk_pressure_order_until_the_reserve_is_free(
    store: DiskStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    _history(store)
    disk = _disk(store, monkeypatch, free_mb=75)  # the reserve is 90 MB: at least two checkpoints must go
    caplog.set_level(logging.WARNING, logger="mlflow_persist")
    _guard(store, 90, _model("dqn")).ensure_space(_model("dqn"))

    deleted = _deleted(store, "dqn", HISTORY, PRESSURE_ORDER)
    assert len(deleted) >= 2 and disk.free_mb >= 90
    assert _loads(store, "dqn")
    assert store.alias_version("dqn").version == 1  # type: ignore[union-attr]
    logged = [r.getMessage() for r in caplog.records if "to free disk space" in r.getMessage()]
    assert [m.split(" deleted v", 1)[1].split(" ", 1)[0] for m in logged] == [str(v) for v in deleted]


def test_cleanup_stops_once_the_reserve_is_free(store: DiskStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _history(store)
    disk = _disk(store, monkeypatch, free_mb=75)  # the reserve is 90 MB: two checkpoints are enough
    _guard(store, 90, _model("dqn")).ensure_space(_model("dqn"))
    assert _versions(store, "dqn") == [1, 3, 5, 6, 7]
    assert disk.free_mb == pytest.approx(95)


def test_still_short_after_cleanup_it_raises_and_keeps_best_newest_and_the_newest_cut_members(
    store: DiskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _history(store, cut_tags=True)  # v3 and v5 are members of marked cuts; v5's is the newer
    disk = _disk(store, monkeypatch, free_mb=20)
    with pytest.raises(DiskFullError):
        _guard(store, 500, _model("dqn")).ensure_space(_model("dqn"))
    # one model cannot tell whether its newest marked cut is complete, so the two newest marked ones are kept
    assert _versions(store, "dqn") == [1, 3, 5, 7]
    assert disk.free_mb == pytest.approx(50) and _loads(store, "dqn")
    assert store.alias_version("dqn").version == 1  # type: ignore[union-attr]


def test_the_free_percentage_counts_as_well(store: DiskStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _history(store)
    disk = _disk(store, monkeypatch, free_mb=85)  # 8.5% of the disk; 10% is asked for, no MB minimum
    _guard(store, 0, _model("dqn"), percent=10.0).ensure_space(_model("dqn"))
    assert len(_deleted(store, "dqn", HISTORY, PRESSURE_ORDER)) >= 2 and disk.free_mb >= 100


def test_free_makes_room_for_the_checkpoint_that_failed(store: DiskStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _history(store)
    disk = _disk(store, monkeypatch, free_mb=95)  # above the 90 MB reserve, but not by the 20 MB a save needs
    guard = _guard(store, 90, _model("dqn"))
    count = guard.free(_model("dqn"), reason="disk full while writing", need_mb=20)
    deleted = _deleted(store, "dqn", HISTORY, PRESSURE_ORDER)
    assert count == len(deleted) >= 2 and disk.free_mb >= 110


def test_bytes_shared_with_a_kept_version_are_kept_and_free_nothing(
    store: DiskStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    best = register(store, "dqn", "performance", 1, value=0.1)
    register(store, "dqn", "periodic", 1, source=best.source)  # v2: a periodic version on best's bytes
    register(store, "dqn", "periodic", 2)
    register(store, "dqn", "periodic", 3)
    register(store, "dqn", "performance", 4, value=0.5)
    store.set_alias("dqn", "best", best.version)
    disk = _disk(store, monkeypatch, free_mb=85)  # one checkpoint's bytes must go

    _guard(store, 90, _model("dqn")).ensure_space(_model("dqn"))
    # v2 goes first (periodic, oldest) but frees nothing, so v3 must go too; best's bytes stay and load.
    deleted = _deleted(store, "dqn", [1, 2, 3, 4, 5], [2, 3, 4])
    assert deleted[:2] == [2, 3] and disk.free_mb >= 90
    assert best.source in store.artifact_sources() and _loads(store, "dqn")


@pytest.mark.parametrize(("free_mb", "dqn_left", "cnn_left"), [(85, [1, 3], [1, 2, 3, 4]), (65, [1, 3], [1, 4])])
def test_the_guarded_model_gives_up_space_first_then_the_others(
    store: DiskStore, monkeypatch: pytest.MonkeyPatch, free_mb: float, dqn_left: list[int], cnn_left: list[int]
) -> None:
    for name, steps in (("dqn", 3), ("cnn", 4)):
        register(store, name, "performance", 1, value=0.1)
        for step in range(2, steps):
            register(store, name, "periodic", step)
        register(store, name, "periodic", steps)
        store.set_alias(name, "best", 1)
    _disk(store, monkeypatch, free_mb=free_mb)
    dqn, cnn = _model("dqn"), _model("cnn", registered="cnn")
    _guard(store, 90, dqn, cnn).ensure_space(dqn)
    assert _versions(store, "dqn") == dqn_left
    assert _versions(store, "cnn") == cnn_left


def test_a_registered_name_is_what_is_pruned(store: DiskStore, monkeypatch: pytest.MonkeyPatch) -> None:
    _history(store, name="prod-dqn")
    _history(store, name="dqn")  # an unrelated registered model of the same short name
    _disk(store, monkeypatch, free_mb=75)
    model = _model("dqn", registered="prod-dqn")
    _guard(store, 90, model).ensure_space(model)
    assert _deleted(store, "prod-dqn", HISTORY, PRESSURE_ORDER)
    assert _versions(store, "dqn") == HISTORY


def test_a_store_without_a_local_disk_is_never_short(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryStore()
    _history(store)

    def no_disk(path: str) -> DiskUsage:
        raise AssertionError(f"the guard read the free space of {path} for a store without a local disk")

    monkeypatch.setattr(psutil, "disk_usage", no_disk)
    guard = _guard(store, 10**9, _model("dqn"))
    guard.ensure_space(_model("dqn"))
    assert guard.free(_model("dqn"), reason="test", need_mb=10**6) == 0
    assert store.calls["delete"] == 0 and _versions(store, "dqn") == HISTORY


@pytest.mark.parametrize("held", ["store lock", "registry lock"])
def test_cleanup_waits_for_the_models_locks(store: DiskStore, monkeypatch: pytest.MonkeyPatch, held: str) -> None:
    """No registration may interleave with the listing the cleanup deletes from."""
    _history(store)
    _disk(store, monkeypatch, free_mb=75)
    model = _model("dqn")
    guard = _guard(store, 90, model)
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        lock = store.lock("model-dqn") if held == "store lock" else model.registry_lock
        with lock:
            taken.set()
            release.wait(10)

    holder = threading.Thread(target=hold, daemon=True)
    holder.start()
    assert taken.wait(10)
    cleaner = threading.Thread(target=guard.ensure_space, args=(model,), daemon=True)
    cleaner.start()
    cleaner.join(0.4)
    assert cleaner.is_alive() and store.calls["delete"] == 0, "the cleanup did not wait for the lock"
    release.set()
    cleaner.join(10)
    holder.join(10)
    assert not cleaner.is_alive() and _deleted(store, "dqn", HISTORY, PRESSURE_ORDER)
