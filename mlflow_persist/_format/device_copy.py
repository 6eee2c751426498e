"""Snapshots of accelerator tensors without stalling the training thread.

A CUDA tensor is copied into a pinned host buffer with a non-blocking copy on a side stream that first waits
for the work already queued on the training stream. The training thread pays only for launching the copies;
the training stream is then told to wait for an event recorded after them, so the next in-place update
(optimizer.step) cannot overwrite a tensor before it has been copied, and the writer thread waits for the same
event before it reads the host buffers. Host buffers are reused from the previous snapshot when they fit,
so pinned memory is allocated once.

The CUDA calls sit behind `CopyBackend`, so the bookkeeping (stream per device, buffer reuse, ordering) is
exercised by CPU-only tests through a backend that treats CPU tensors as device tensors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import torch

__all__ = ["CopyBackend", "CudaBackend", "DeviceCopies", "default_backend"]


class CopyBackend(Protocol):
    def handles(self, tensor: torch.Tensor) -> bool: ...
    def side_stream(self, device: torch.device) -> Any: ...
    def start_after_queued_work(self, stream: Any, device: torch.device) -> None: ...
    def host_buffer(self, like: torch.Tensor) -> torch.Tensor: ...
    def copy_async(self, host: torch.Tensor, tensor: torch.Tensor, stream: Any) -> None: ...
    def record(self, stream: Any, device: torch.device) -> Callable[[], None]: ...


class CudaBackend:
    def __init__(self) -> None:
        self._streams: dict[torch.device, Any] = {}

    def handles(self, tensor: torch.Tensor) -> bool:
        return tensor.is_cuda and tensor.layout == torch.strided

    def side_stream(self, device: torch.device) -> Any:
        if device not in self._streams:
            self._streams[device] = torch.cuda.Stream(device=device)
        return self._streams[device]

    def start_after_queued_work(self, stream: Any, device: torch.device) -> None:
        stream.wait_stream(torch.cuda.current_stream(device))

    def host_buffer(self, like: torch.Tensor) -> torch.Tensor:
        return torch.empty(like.shape, dtype=like.dtype, device="cpu", pin_memory=True)

    def copy_async(self, host: torch.Tensor, tensor: torch.Tensor, stream: Any) -> None:
        with torch.cuda.stream(stream):
            host.copy_(tensor.detach(), non_blocking=True)
        tensor.record_stream(stream)  # the caching allocator must not hand the source's memory out before the copy ran

    def record(self, stream: Any, device: torch.device) -> Callable[[], None]:
        event = torch.cuda.Event()
        event.record(stream)
        torch.cuda.current_stream(device).wait_event(event)  # later training kernels wait for the copies, on the GPU
        return event.synchronize


_cuda_backend: CudaBackend | None = None


def default_backend() -> CopyBackend | None:
    """The CUDA backend when CUDA is initialized in this process (a model on the GPU), else None."""
    global _cuda_backend
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    if _cuda_backend is None:
        _cuda_backend = CudaBackend()
    return _cuda_backend


class DeviceCopies:
    """The asynchronous device-to-host copies of one snapshot; `finish()` returns what the writer waits on."""

    def __init__(self, backend: CopyBackend) -> None:
        self.backend = backend
        self._streams: dict[torch.device, Any] = {}
        self.launched = 0

    def handles(self, tensor: torch.Tensor) -> bool:
        return self.backend.handles(tensor)

    def copy(self, tensor: torch.Tensor, reuse: Any = None) -> torch.Tensor:
        stream = self._streams.get(tensor.device)
        if stream is None:
            stream = self._streams[tensor.device] = self.backend.side_stream(tensor.device)
            self.backend.start_after_queued_work(stream, tensor.device)
        fits = (
            isinstance(reuse, torch.Tensor)
            and reuse.shape == tensor.shape
            and reuse.dtype == tensor.dtype
            and reuse.device.type == "cpu"
            and reuse.is_contiguous()
        )
        host = reuse if fits else self.backend.host_buffer(tensor)
        self.backend.copy_async(host, tensor, stream)
        self.launched += 1
        return host

    def finish(self) -> Callable[[], None] | None:
        """Order the training streams after the copies; returns a wait for the copies (None: nothing launched)."""
        waits = [self.backend.record(stream, device) for device, stream in self._streams.items()]
        if not waits:
            return None

        def wait_for_copies() -> None:
            for wait in waits:
                wait()

        return wait_for_copies
