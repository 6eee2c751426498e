"""What the persistence worker process (`_runtime/worker_process.py`) runs: store calls by plain, picklable
arguments, on an `MlflowStore` opened once per child and reused."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from mlflow_persist._store.mlflow_store import MlflowStore
from mlflow_persist._store.store_address import StoreAddress

__all__ = ["StoreAddress", "client_for", "log_metrics", "store_for"]


_stores: dict[StoreAddress, MlflowStore] = {}
_lock = threading.Lock()


def store_for(address: StoreAddress) -> MlflowStore:
    """The store at `address`, opened at the first call in this process."""
    with _lock:
        store = _stores.get(address)
        if store is None:
            store = _stores[address] = MlflowStore(*address)
        return store


def log_metrics(address: StoreAddress, run_id: str, rows: Sequence[tuple[str, float, int, int]]) -> None:
    """`MlflowStore.log_metrics` on the store at `address` (idempotent: MLflow keeps one row per identical value)."""
    store_for(address).log_metrics(run_id, rows)


def client_for(address: StoreAddress) -> Any:
    """The MLflow client of the store at `address` (the episode files' writer uses MLflow directly)."""
    return store_for(address).client
