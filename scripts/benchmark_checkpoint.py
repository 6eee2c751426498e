"""Checkpoint cost benchmark: ratios against baselines measured in the same process, on the same disk.

(a) time the training thread is blocked per checkpoint vs copying the state dict to CPU memory alone;
(b) time from step() until the checkpoint is durable, checksummed and registered vs torch.save + fsync;
(c) cost of step() when nothing is saved, with synchronous mlflow.log_metric per step and
    mlflow.pytorch.log_model per checkpoint for comparison.

Usage: python scripts/benchmark_checkpoint.py [--repeats N] [--sizes 2,100] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402

import mlflow_persist as mp  # noqa: E402
from mlflow_persist.payload import copy_to_cpu  # noqa: E402


def make_model(megabytes: float) -> torch.nn.Module:
    width = int((megabytes * 2**20 / 4) ** 0.5)
    return torch.nn.Sequential(torch.nn.Linear(width, width, bias=False))


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def baseline_copy(model: torch.nn.Module, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        copy_to_cpu(model.state_dict())
        samples.append(time.perf_counter() - start)
    return median_ms(samples)


def baseline_copy_into_buffers(model: torch.nn.Module, repeats: int) -> float:
    """The floor: copying into tensors allocated once (no page faults)."""
    buffers = copy_to_cpu(model.state_dict())
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for name, tensor in model.state_dict().items():
            buffers[name].copy_(tensor.detach())
        samples.append(time.perf_counter() - start)
    return median_ms(samples)


def baseline_save_fsync(model: torch.nn.Module, directory: Path, repeats: int) -> float:
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


def measure_persist(model: torch.nn.Module, uri: str, name: str, repeats: int) -> tuple[float, float]:
    """(blocked ms, step-to-registered ms) medians over `repeats` performance saves."""
    cfg = mp.PersistConfig(tracking_uri=uri, keep_best=2, keep_periodic=2, min_free_disk_mb=1,
                           min_free_disk_percent=0, log_system_metrics=False)
    blocked, durable = [], []
    with mp.Persistence(cfg, install_signal_handlers=False) as persist:
        handle = persist.track(name, model)
        handle.step(loss=1e9)  # warm-up: registered model creation, first artifact dir
        persist.flush(timeout=600)
        for i in range(repeats):
            start = time.perf_counter()
            handle.step(loss=1000.0 - i)  # always an improvement: a performance save
            blocked.append(time.perf_counter() - start)
            assert handle.flush(timeout=600)
            durable.append(time.perf_counter() - start)
    return median_ms(blocked), median_ms(durable)


def measure_step_no_save(uri: str, calls: int) -> tuple[float, float]:
    """(training-thread µs per step() without a save, background µs per buffered metric flushed to MLflow).

    The metric flush is deferred during the timed loop so that the first figure is the training thread's own
    cost, not GIL contention with the background flush, which is timed on its own as the second figure.
    """
    cfg = mp.PersistConfig(tracking_uri=uri, log_system_metrics=False, min_free_disk_mb=1, min_free_disk_percent=0,
                           scheduler_interval_seconds=3600, metrics_flush_size=10**9)
    with mp.Persistence(cfg, install_signal_handlers=False) as persist:
        handle = persist.track("step-cost", torch.nn.Linear(2, 2))
        handle.step(loss=0.0)
        persist.flush(timeout=60)
        start = time.perf_counter()
        for _ in range(calls):
            handle.step(loss=1.0, accuracy=0.5)  # never better than 0.0: no save
        step_us = (time.perf_counter() - start) / calls * 1e6
        start = time.perf_counter()
        persist.flush_metrics()
        flush_us = (time.perf_counter() - start) / (2 * calls) * 1e6
    return step_us, flush_us


def measure_mlflow_sync(uri: str, model: torch.nn.Module, metric_calls: int) -> tuple[float, float]:
    import mlflow
    import mlflow.pytorch

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("benchmark-baseline")
    with mlflow.start_run():
        start = time.perf_counter()
        for i in range(metric_calls):
            mlflow.log_metric("loss", 1.0, step=i)
        per_metric = (time.perf_counter() - start) / metric_calls * 1e6
        start = time.perf_counter()
        mlflow.pytorch.log_model(model, name="model", pip_requirements=["torch"], serialization_format="pickle")
        log_model = time.perf_counter() - start
    return per_metric, log_model * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="2,100", help="model sizes in MB, comma separated")
    parser.add_argument("--dir", default=None, help="directory for the store (default: a temp dir)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="mlflow-persist-bench-") as tmp:
        root = Path(tmp)
        uri = f"sqlite:///{root / 'mlflow.db'}"
        rows = []
        for size in [float(s) for s in args.sizes.split(",")]:
            model = make_model(size)
            actual_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
            copy_ms = baseline_copy(model, args.repeats)
            buffer_ms = baseline_copy_into_buffers(model, args.repeats)
            save_ms = baseline_save_fsync(model, root, args.repeats)
            blocked_ms, durable_ms = measure_persist(model, uri, f"bench-{int(size)}mb", args.repeats)
            rows.append((actual_mb, copy_ms, buffer_ms, blocked_ms, save_ms, durable_ms))
        step_us, flush_us = measure_step_no_save(uri, 20_000)
        metric_us, log_model_ms = measure_mlflow_sync(uri, make_model(rows[0][0]), 200)
    print("(a) blocked: time step() holds the training thread when it saves, against copying the state dict to CPU "
          "into new tensors and into tensors allocated once")
    print("(b) durable: step() until the checkpoint is written, fsynced, checksummed and registered, against "
          "torch.save + fsync of the same state dict")
    print(f"{'model':>8} | {'copy (new)':>10} | {'copy (reused)':>13} | {'blocked':>8} | {'(a) vs new':>10} | "
          f"{'(a) vs reused':>13} | {'save+fsync':>10} | {'durable':>9} | {'(b) ratio':>9}")
    for mb, copy_ms, buffer_ms, blocked_ms, save_ms, durable_ms in rows:
        print(f"{mb:>6.1f}MB | {copy_ms:>8.1f}ms | {buffer_ms:>11.1f}ms | {blocked_ms:>6.1f}ms | "
              f"{blocked_ms / copy_ms:>9.2f}x | {blocked_ms / buffer_ms:>12.2f}x | {save_ms:>8.1f}ms | "
              f"{durable_ms:>7.1f}ms | {durable_ms / save_ms:>8.2f}x")
    print(f"(c) step() without a save: {step_us:.1f} us per call on the training thread (background flush: "
          f"{flush_us:.0f} us per metric, batched); synchronous mlflow.log_metric: {metric_us:.0f} us per call "
          f"({metric_us / step_us:.0f}x); mlflow.pytorch.log_model of the {rows[0][0]:.0f} MB model: "
          f"{log_model_ms:.0f} ms per checkpoint")


if __name__ == "__main__":
    main()
