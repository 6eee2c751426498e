"""More helpers for the tests of the `_runtime` modules (beside runtime_support.py, which others own).

Expected values in these tests are the tests' own records (deep copies of tensors taken at the moment of a save,
files on disk, `MemoryStore`'s versions, tags and call counts), never values read back through the code under
test. Contract names (tags, the health tag) are spelled out as DESIGN.md names them."""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

import mlflow_persist as mp
from mlflow_persist.testing import MemoryStore

CORRUPT = "mlflow_persist.corrupt"
HEALTH = "mlflow_persist.health"
MONITOR = "mlflow_persist.monitor"


def config(**overrides: Any) -> mp.PersistConfig:
    """A quiet configuration for `MemoryStore` tests: no disk reserve, no system metrics, no background tick
    unless asked for (an hour's interval), short retries, nothing pruned."""
    values: dict[str, Any] = dict(
        tracking_uri="memory://",
        min_free_disk_mb=0,
        min_free_disk_percent=0,
        log_system_metrics=False,
        scheduler_interval_seconds=3600,
        save_retry_attempts=2,
        save_retry_max_wait_seconds=0.02,
        keep_best=100,
        keep_periodic=100,
        keep_final=100,
    )
    values.update(overrides)
    return mp.PersistConfig(**values)


def persistence(store: MemoryStore, **overrides: Any) -> mp.Persistence:
    alert_sinks = overrides.pop("alert_sinks", None)
    return mp.Persistence(config(**overrides), store=store, alert_sinks=alert_sinks, install_signal_handlers=False)


def make_net(seed: int, hidden: int = 4) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A tiny MLP and its Adam optimizer (Adam has per-parameter state worth restoring)."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
    return model, torch.optim.Adam(model.parameters(), lr=0.05)


def train(model: torch.nn.Module, opt: torch.optim.Optimizer, steps: int = 1) -> None:
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).mean().backward()
        opt.step()


def snapshot(*objects: Any) -> list[Any]:
    """Deep copies of the state dicts of `objects`, taken now."""
    return [copy.deepcopy(obj.state_dict()) for obj in objects]


def same(x: Any, y: Any) -> bool:
    """Bit-identical nested states (tensors compared with torch.equal and dtype)."""
    if isinstance(x, torch.Tensor):
        return isinstance(y, torch.Tensor) and x.dtype == y.dtype and x.shape == y.shape and torch.equal(x, y)
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return isinstance(y, (list, tuple)) and len(x) == len(y) and all(same(i, j) for i, j in zip(x, y))
    return bool(x == y)


def outbox_entries(root: Path, name: str) -> list[str]:
    """The names of the complete entry directories of model `name` in the outbox at `root`, oldest first."""
    folder = root / name
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / "entry.json").is_file())


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


@contextlib.contextmanager
def captured_logs(name: str = "mlflow_persist") -> Iterator[Records]:
    """Every record of logger `name` (attached directly: propagation may be off)."""
    logger = logging.getLogger(name)
    handler = Records()
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
