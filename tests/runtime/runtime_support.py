"""Helpers for the tests of the `_runtime` threads (a plain module: conftest names clash across folders).

Tag names are spelled out here, as the contract in DESIGN.md names them, instead of taken from the package,
so a test checks the registry against the contract and not against the code under test."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from mlflow_persist._format.payload import build_payload
from mlflow_persist._policy.versions import VersionInfo
from mlflow_persist.testing import MemoryStore

ROOT = Path(__file__).resolve().parents[2]

CATEGORY = "mlflow_persist.category"
STEP = "mlflow_persist.step"
VALUE = "mlflow_persist.value"
MODE = "mlflow_persist.mode"
CUT = "mlflow_persist.cut"
CUT_COMPLETE = "mlflow_persist.cut_complete"


def wait_until(predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.01) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass; returns whether it became true."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def payload(name: str, step: int, category: str = "periodic", fill: float = 1.0) -> dict[str, Any]:
    """A small, real checkpoint payload whose weights are all `fill`."""
    return build_payload(
        model_name=name,
        model_state={"w": torch.full((4, 4), float(fill))},
        step=step,
        metrics={"loss": float(fill)},
        category=category,
    )


def register(
    store: MemoryStore,
    name: str,
    category: str,
    step: int,
    *,
    value: float | None = None,
    extra_tags: Mapping[str, str] | None = None,
    source: str | None = None,
) -> VersionInfo:
    """Write a checkpoint's bytes into `store` (unless `source` reuses stored ones) and register a version."""
    run_id = store.ensure_run(f"run-{name}")
    if source is None:
        source, _ = store.write_checkpoint(run_id, name, step, payload(name, step, category, fill=step))
    tags = {CATEGORY: category, STEP: str(step), **(extra_tags or {})}
    if value is not None:
        tags[VALUE] = repr(float(value))
    return store.register_version(name, source, run_id, tags)


def subprocess_env() -> dict[str, str]:
    """The environment of a child Python that imports this checkout of the package."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path, "MLFLOW_DISABLE_TELEMETRY": "true"}


PYTHON = sys.executable
