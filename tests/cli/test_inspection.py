"""The inspection functions behind the CLI, on MemoryStore: rankings use the mode the trainer recorded."""

from __future__ import annotations

import torch

import mlflow_persist as mp
from mlflow_persist.cli import inspection
from mlflow_persist.testing import MemoryStore


def test_gc_without_the_trainers_config_keeps_the_best_of_a_max_monitor() -> None:
    """Regression (issue 11 #8): `gc` ranked with the CLI config's mode (`min`) and deleted the best."""
    store = MemoryStore()
    trainer = mp.PersistConfig(
        monitor="accuracy",
        mode="max",
        keep_best=1000,
        min_free_disk_mb=0,
        min_free_disk_percent=0,
        log_system_metrics=False,
    )
    accuracies = [0.1, 0.2, 0.5, 0.4, 0.6, 0.9, 0.3, 0.95]
    with mp.Persistence(trainer, store=store, install_signal_handlers=False) as persist:
        handle = persist.track("net", torch.nn.Linear(2, 1))
        for value in accuracies:
            handle.step(accuracy=value)
            assert persist.flush(timeout=10)
    saved = sorted(v.value for v in store.list_versions("net") if v.category == "performance")
    assert all(v.tags["mlflow_persist.mode"] == "max" for v in store.list_versions("net"))
    report = inspection.gc(store, mp.PersistConfig(keep_best=2, min_free_disk_mb=0))  # default mode: min
    kept = sorted(v.value for v in store.list_versions("net") if v.category == "performance")
    assert kept == saved[-2:] == [0.9, 0.95]
    assert store.alias_version("net").value == 0.95
    assert {item.version for item in report.deleted}.isdisjoint(v.version for v in store.list_versions("net"))
