"""The asynchronous snapshot path of GPU tensors (device_copy.py), exercised on CPU tensors: a backend that
treats every tensor as a device tensor and runs its copies late, on a thread of its own, the way a side
stream runs them after step() has returned. A GPU run of the same path: tests/format/test_gpu_snapshot.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import torch

import mlflow_persist as mp
from mlflow_persist._format.device_copy import DeviceCopies
from mlflow_persist.testing import MemoryStore


class LateCopies:
    """A 'side stream' per device that runs each copy 50 ms after it was launched."""

    def __init__(self) -> None:
        self.streams_made: list[torch.device] = []
        self.waited_for_queued_work = 0
        self.buffers_allocated = 0
        self.pending: list[threading.Thread] = []

    def handles(self, tensor: torch.Tensor) -> bool:
        return True

    def side_stream(self, device: torch.device) -> Any:
        self.streams_made.append(device)
        return object()

    def start_after_queued_work(self, stream: Any, device: torch.device) -> None:
        self.waited_for_queued_work += 1

    def host_buffer(self, like: torch.Tensor) -> torch.Tensor:
        self.buffers_allocated += 1
        return torch.full(like.shape, float("nan"), dtype=like.dtype)  # garbage until the copy lands

    def copy_async(self, host: torch.Tensor, tensor: torch.Tensor, stream: Any) -> None:
        source = tensor.detach().clone()  # what the device holds when the copy is ordered

        def later() -> None:
            time.sleep(0.05)
            host.copy_(source)

        thread = threading.Thread(target=later)
        thread.start()
        self.pending.append(thread)

    def record(self, stream: Any, device: torch.device) -> Callable[[], None]:
        launched, self.pending = self.pending, []

        def wait() -> None:
            for thread in launched:
                thread.join()

        return wait


def _config() -> mp.PersistConfig:
    return mp.PersistConfig(
        min_free_disk_mb=0,
        min_free_disk_percent=0,
        log_system_metrics=False,
        scheduler_interval_seconds=60,
        keep_best=100,
        keep_periodic=100,
        keep_final=100,
    )


def test_the_writer_serializes_a_snapshot_only_after_its_device_copies_complete() -> None:
    store = MemoryStore()
    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    expected = []
    with mp.Persistence(_config(), store=store, install_signal_handlers=False) as persist:
        handle = persist.track("net", model, optimizer=optimizer)
        handle.copy_backend = backend = LateCopies()
        for step in range(1, 4):
            optimizer.zero_grad()
            model(torch.randn(8, 64)).pow(2).mean().backward()
            optimizer.step()
            expected.append({k: v.clone() for k, v in model.state_dict().items()})
            handle.step(loss=10.0 - step)  # an improvement each time: a snapshot each time
            assert handle.flush(timeout=30)
    versions = store.list_versions("net")
    assert [v.step for v in versions if v.category == "performance"] == [1, 2, 3]
    for info, live in zip([v for v in versions if v.category == "performance"], expected):
        saved = store.load_version(info).model_state
        for key, tensor in live.items():
            assert torch.equal(saved[key], tensor), f"{key} of step {info.step} is not what the model held"
    # Host buffers come from the first snapshot and are reused: 2 model tensors + 2 momentum buffers.
    assert backend.buffers_allocated == 4
    assert backend.streams_made == [torch.device("cpu")] * backend.waited_for_queued_work


def test_one_stream_per_device_and_no_wait_when_nothing_was_launched() -> None:
    backend = LateCopies()
    copies = DeviceCopies(backend)
    assert copies.finish() is None
    copies = DeviceCopies(backend)
    host = [copies.copy(torch.arange(4.0) * i) for i in range(3)]
    wait = copies.finish()
    assert wait is not None and copies.launched == 3 and backend.waited_for_queued_work == 1
    wait()
    assert [h.tolist() for h in host] == [[0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 2.0, 3.0], [0.0, 2.0, 4.0, 6.0]]
