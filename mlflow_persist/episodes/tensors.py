"""Exact tensor <-> bytes codec: dtype, shape and the raw element bytes, nothing else."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from mlflow_persist.episodes.errors import EpisodeEncodingError

__all__ = [
    "TensorRecord",
    "decode_tensor",
    "describe_difference",
    "encode_tensor",
    "state_fingerprint",
    "tensor_digest",
    "tensors_identical",
]


@dataclass(frozen=True)
class TensorRecord:
    """A tensor as stored: dtype name (e.g. 'float32'), shape and little-endian element bytes."""

    dtype: str
    shape: tuple[int, ...]
    data: bytes


def _dtype_from_name(name: str) -> torch.dtype:
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise EpisodeEncodingError(
            f"stored tensor dtype '{name}' is unknown to this torch build; upgrade torch to read it."
        )
    return dtype


def encode_tensor(tensor: torch.Tensor, *, key: str = "tensor") -> TensorRecord:
    """Copy a dense tensor's bytes (to CPU first) with its dtype and shape."""
    if not isinstance(tensor, torch.Tensor):
        raise EpisodeEncodingError(f"'{key}' is a {type(tensor).__name__}, not a torch.Tensor; record tensors only.")
    if tensor.layout != torch.strided or tensor.is_quantized:
        raise EpisodeEncodingError(
            f"tensor '{key}' is sparse or quantized; convert it with .to_dense() before recording."
        )
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    raw = flat.view(torch.uint8) if flat.numel() else torch.empty(0, dtype=torch.uint8)
    return TensorRecord(
        str(tensor.dtype).removeprefix("torch."), tuple(int(s) for s in tensor.shape), raw.numpy().tobytes()
    )


def decode_tensor(record: TensorRecord) -> torch.Tensor:
    """Rebuild the tensor: same dtype, shape and bytes; always a fresh CPU tensor."""
    dtype = _dtype_from_name(record.dtype)
    if not record.data:
        return torch.empty(record.shape, dtype=dtype)
    raw = torch.frombuffer(bytearray(record.data), dtype=torch.uint8)
    return raw.view(dtype).reshape(record.shape).clone()


def tensor_digest(tensor: torch.Tensor) -> str:
    """sha256 of dtype, shape and bytes: equal digests mean bitwise-identical tensors."""
    rec = encode_tensor(tensor)
    h = hashlib.sha256(f"{rec.dtype}|{rec.shape}|".encode())
    h.update(rec.data)
    return h.hexdigest()


def tensors_identical(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality (dtype, shape, bytes): stricter than torch.equal, and NaN equals the same NaN."""
    if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
        return False
    return encode_tensor(a).data == encode_tensor(b).data


def describe_difference(key: str, expected: torch.Tensor, actual: torch.Tensor) -> str:
    """One sentence saying how two tensors differ."""
    if expected.dtype != actual.dtype:
        return f"'{key}' dtype {actual.dtype} differs from the recorded {expected.dtype}"
    if tuple(expected.shape) != tuple(actual.shape):
        return f"'{key}' shape {tuple(actual.shape)} differs from the recorded {tuple(expected.shape)}"
    e = encode_tensor(expected).data
    a = encode_tensor(actual).data
    first = next(i for i in range(len(e)) if e[i] != a[i])
    elem = first // max(expected.element_size(), 1)
    return f"'{key}' differs from the recorded tensor at element {elem} (flat index)"


def state_fingerprint(state: dict[str, torch.Tensor] | torch.nn.Module) -> str:
    """sha256 over a model's state_dict (names, dtypes, shapes, bytes) to prove which weights decided."""
    sd = state.state_dict() if isinstance(state, torch.nn.Module) else state
    h = hashlib.sha256()
    for name in sorted(sd):
        value = sd[name]
        h.update(name.encode() + b"\0")
        if isinstance(value, torch.Tensor):
            h.update(tensor_digest(value).encode())
        else:
            h.update(repr(value).encode())
    return h.hexdigest()
