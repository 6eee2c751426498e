"""Checkpoint cost benchmark: every figure is a ratio against a baseline measured in the same process, on the
same disk, just before it.

- step(): the training thread's cost of a step() that saves nothing, under the DEFAULT config (the scheduler
  and the paced metric flush running), against the same loop with the flush deferred and the scheduler idle.
- durable: step() until the checkpoint is written, fsynced, digested and registered (flush()), against
  torch.save + fsync of the same state dict.
- restore: a verified restore() into a fresh model, and load_checkpoint(), against torch.load(weights_only=True)
  of the same file.
- weights format: durable and restore again with `weights_format="safetensors"` (the weights in
  model.safetensors beside checkpoint.pt), against the default torch format's figures of the same run.
- small: a 100 KB checkpoint (the trading models' size) from step() until registered (the save acknowledged;
  retention then runs on the writer), and the registry round trips per save in the steady state, retention
  included (calls into MLflow's sqlite stores, counted at their entry points). Every step is an improvement,
  far more saves than the default overhead budget (`max_overhead` 5 %) lets through: it would hold each one
  back for a third of a second, and the figure would be the budget's pace, not a save's latency. So this one
  runs with `max_overhead=1` (the budget never holds a save back); the main-job figures run the default.

Usage: python scripts/benchmark_checkpoint.py [--repeats N] [--size-mb 100] [--step-seconds 8] [--dir DIR]
The last line is `BENCH_JSON {...}` with every figure (read by scripts/bench_report.py).
"""

from __future__ import annotations

import argparse
import collections
import functools
import json
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402
from bench_common import cpu_model  # noqa: E402

import mlflow_persist as mp  # noqa: E402


def make_model(megabytes: float, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    width = max(1, int((megabytes * 2**20 / 4) ** 0.5))
    return torch.nn.Sequential(torch.nn.Linear(width, width, bias=False))


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def config(uri: str, **overrides: Any) -> mp.PersistConfig:
    values: dict[str, Any] = dict(
        tracking_uri=uri, keep_best=2, keep_periodic=2, min_free_disk_mb=1, min_free_disk_percent=0
    )
    values.update(overrides)
    return mp.PersistConfig(**values)


# ------------------------------------------------------------------------------------------------ step()


def step_cost_us(uri: str, seconds: float, default_config: bool) -> float:
    """Mean µs of step() without a save, over `seconds` of back-to-back calls (longer than the scheduler
    interval, so the background flush runs during the measurement); `default_config=False` defers the flush
    and idles the scheduler. A loop this tight makes metrics far faster than any store takes them: the
    buffer stays at its bound and drops the oldest values, which is not what is measured here."""
    overrides = (
        {}
        if default_config
        else dict(
            scheduler_interval_seconds=3600,
            metrics_flush_size=10**9,
            log_system_metrics=False,
            metrics_buffer_max_rows=1000,
        )
    )
    with mp.Persistence(config(uri, **overrides), install_signal_handlers=False) as persist:
        handle = persist.track(f"step-{'default' if default_config else 'quiet'}", torch.nn.Linear(2, 2))
        handle.step(loss=0.0)
        persist.flush(timeout=60)
        calls, start = 0, time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            for _ in range(1000):
                handle.step(loss=1.0, accuracy=0.5)  # never better than 0.0: no save
            calls += 1000
        elapsed = time.perf_counter() - start
        handle.metrics.take()  # the values a tight loop made beyond the bound are not the benchmark's subject
        return elapsed / calls * 1e6


# ------------------------------------------------------------------------------------------------ durable


def save_fsync_ms(model: torch.nn.Module, directory: Path, repeats: int) -> float:
    samples = []
    for i in range(repeats):
        path = directory / f"baseline-{i}.pt"
        start = time.perf_counter()
        with open(path, "wb") as handle:
            torch.save(model.state_dict(), handle)
            handle.flush()
            os.fsync(handle.fileno())
        samples.append(time.perf_counter() - start)
        path.unlink()
    return median_ms(samples)


def durable_ms(model: torch.nn.Module, uri: str, name: str, repeats: int, **overrides: Any) -> tuple[float, float]:
    """(blocked ms, step-to-registered ms) medians over `repeats` performance saves."""
    blocked, durable = [], []
    with mp.Persistence(config(uri, log_system_metrics=False, **overrides), install_signal_handlers=False) as persist:
        handle = persist.track(name, model)
        for i in range(2):  # warm-up: registered model creation, first artifact directory, spare buffers
            handle.step(loss=1e9 - i)
            persist.flush(timeout=600)
        for i in range(repeats):
            start = time.perf_counter()
            handle.step(loss=1000.0 - i)  # always an improvement: a performance save
            blocked.append(time.perf_counter() - start)
            assert handle.flush(timeout=600)
            durable.append(time.perf_counter() - start)
    return median_ms(blocked), median_ms(durable)


# ------------------------------------------------------------------------------------------------ restore


def restore_ms(size_mb: float, uri: str, name: str, repeats: int, **overrides: Any) -> dict[str, float]:
    """Medians of torch.load(weights_only=True) of the checkpoint file, restore() into a fresh model, and
    load_checkpoint() of models:/name@best, interleaved so that each sees the same page cache."""
    settings = config(uri, log_system_metrics=False, **overrides)
    with mp.Persistence(settings, install_signal_handlers=False) as persist:
        handle = persist.track(name, make_model(size_mb))
        handle.step(loss=1.0)
        persist.flush(timeout=600)
        info = persist.store.alias_version(persist.config.registered_name(name))
    assert info is not None
    path = Path(info.source.removeprefix("file://")) / "checkpoint.pt"
    loads, restores, loaded = [], [], []
    with mp.Persistence(settings, install_signal_handlers=False) as persist:
        for _ in range(repeats + 1):
            start = time.perf_counter()
            torch.load(path, map_location="cpu", weights_only=True)
            loads.append(time.perf_counter() - start)
            fresh = make_model(size_mb, seed=1)
            handle = persist.handles.get(name) or persist.track(name, fresh)
            handle.model = fresh
            start = time.perf_counter()
            assert handle.restore() is not None
            restores.append(time.perf_counter() - start)
            start = time.perf_counter()
            mp.load_checkpoint(f"models:/{persist.config.registered_name(name)}@best", tracking_uri=uri)
            loaded.append(time.perf_counter() - start)
    # the first round warms the page cache and the registry connection
    return {
        "torch_load_ms": median_ms(loads[1:]),
        "restore_ms": median_ms(restores[1:]),
        "load_checkpoint_ms": median_ms(loaded[1:]),
    }


# ------------------------------------------------------------------------------------------------ small


class StoreCallCounter:
    """Counts the calls into MLflow's sqlite tracking and registry stores (outermost calls only: one per
    transaction the client asks for), while `counting` is set."""

    def __init__(self) -> None:
        from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore as RegistryStore
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore as TrackingStore

        self.counts: collections.Counter[str] = collections.Counter()
        self.counting = False
        self._depth = threading.local()
        for cls in (RegistryStore, TrackingStore):
            for name, method in list(vars(cls).items()):
                if not name.startswith("_") and callable(method):
                    setattr(cls, name, self._wrap(method, name))

    def _wrap(self, method: Callable[..., Any], name: str) -> Callable[..., Any]:
        @functools.wraps(method)
        def counted(*args: Any, **kwargs: Any) -> Any:
            depth = getattr(self._depth, "value", 0)
            if self.counting and depth == 0 and threading.current_thread().name == "mlflow-persist-writer":
                self.counts[name] += 1
            self._depth.value = depth + 1
            try:
                return method(*args, **kwargs)
            finally:
                self._depth.value = depth

        return counted


def small_checkpoint(uri: str, repeats: int, counter: StoreCallCounter) -> dict[str, Any]:
    """A 100 KB model saved on every step (each an improvement), in the steady state: retention deletes one
    old version per save and `best` moves each time."""
    model = make_model(0.1)
    samples = []
    settings = config(uri, log_system_metrics=False, max_overhead=1.0)  # a save's latency, not the budget's pace
    with mp.Persistence(settings, install_signal_handlers=False) as persist:
        handle = persist.track("small", model)
        for i in range(8):  # fill the retention windows
            handle.step(loss=1e6 - i)
            persist.flush(timeout=60)
        counter.counting = True
        for i in range(repeats):
            start = time.perf_counter()
            handle.step(loss=1000.0 - i)
            while handle.last_saved is None or handle.last_saved[1] != handle.current_step:
                time.sleep(0.0002)  # registered: the save is acknowledged; retention follows on the writer
            samples.append(time.perf_counter() - start)
            assert handle.flush(timeout=60)
        counter.counting = False
    per_save = {name: count / repeats for name, count in sorted(counter.counts.items())}
    return {"small_ms": median_ms(samples), "round_trips_per_save": sum(per_save.values()), "round_trips": per_save}


# ------------------------------------------------------------------------------------------------ main


def rows(figures: dict[str, Any]) -> Iterator[str]:
    yield (
        f"step() without a save, default config: {figures['step_default_us']:.1f} us per call "
        f"(flush deferred, scheduler idle: {figures['step_quiet_us']:.1f} us)"
    )
    yield (
        f"{figures['size_mb']:.0f} MB durable: step() blocked {figures['blocked_ms']:.1f} ms; until registered "
        f"{figures['durable_ms']:.1f} ms vs torch.save+fsync {figures['save_fsync_ms']:.1f} ms = "
        f"{figures['durable_ratio']:.2f}x"
    )
    yield (
        f"{figures['size_mb']:.0f} MB restore: {figures['restore_ms']:.1f} ms vs torch.load {figures['torch_load_ms']:.1f} "
        f"ms = {figures['restore_ratio']:.2f}x; load_checkpoint {figures['load_checkpoint_ms']:.1f} ms = "
        f"{figures['load_checkpoint_ratio']:.2f}x"
    )
    yield (
        f"{figures['size_mb']:.0f} MB with weights_format=safetensors: until registered "
        f"{figures['durable_safetensors_ms']:.1f} ms = {figures['safetensors_durable_ratio']:.2f}x the torch format's; "
        f"restore {figures['restore_safetensors_ms']:.1f} ms = {figures['safetensors_restore_ratio']:.2f}x"
    )
    yield (
        f"100 KB: step() until registered {figures['small_ms']:.1f} ms; {figures['round_trips_per_save']:.1f} "
        f"registry round trips per save ({', '.join(f'{k} {v:g}' for k, v in figures['round_trips'].items())})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--size-mb", type=float, default=100.0)
    parser.add_argument("--step-seconds", type=float, default=8.0, help="how long each step() loop runs")
    parser.add_argument("--dir", default=None, help="directory for the stores (default: a temp dir)")
    args = parser.parse_args()
    counter = StoreCallCounter()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="mlflow-persist-bench-") as tmp:
        root = Path(tmp)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        figures: dict[str, Any] = {
            "size_mb": args.size_mb,
            "machine": f"{cpu_model()}, {os.cpu_count()} cores",
            "date": time.strftime("%Y-%m-%d"),
            "torch": torch.__version__,
        }
        figures["step_quiet_us"] = step_cost_us(uri, args.step_seconds, default_config=False)
        figures["step_default_us"] = step_cost_us(uri, args.step_seconds, default_config=True)
        model = make_model(args.size_mb)
        figures["save_fsync_ms"] = save_fsync_ms(model, root, args.repeats)
        figures["blocked_ms"], figures["durable_ms"] = durable_ms(model, uri, "durable", args.repeats)
        figures["durable_ratio"] = figures["durable_ms"] / figures["save_fsync_ms"]
        _, figures["durable_safetensors_ms"] = durable_ms(
            model, uri, "durable-st", args.repeats, weights_format="safetensors"
        )
        figures["safetensors_durable_ratio"] = figures["durable_safetensors_ms"] / figures["durable_ms"]
        del model
        figures.update(restore_ms(args.size_mb, uri, "restore", args.repeats))
        figures["restore_ratio"] = figures["restore_ms"] / figures["torch_load_ms"]
        figures["load_checkpoint_ratio"] = figures["load_checkpoint_ms"] / figures["torch_load_ms"]
        with_safetensors = restore_ms(args.size_mb, uri, "restore-st", args.repeats, weights_format="safetensors")
        figures["restore_safetensors_ms"] = with_safetensors["restore_ms"]
        figures["safetensors_restore_ratio"] = figures["restore_safetensors_ms"] / figures["restore_ms"]
        figures.update(small_checkpoint(uri, max(10, args.repeats * 3), counter))
    for row in rows(figures):
        print(row)
    print("BENCH_JSON " + json.dumps(figures))


if __name__ == "__main__":
    main()
