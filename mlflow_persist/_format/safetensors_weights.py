"""The weights as `model.safetensors` beside `checkpoint.pt` (the setting `weights_format="safetensors"`).

`model.safetensors` holds every tensor of the model's state dict in the safetensors format (an 8-byte header
length, a JSON header, the raw little-endian bytes), written here as a stream through the checkpoint's
digesting writer, so the bytes are written once, straight from the snapshot, and digested on the way.
`checkpoint.pt` keeps the rest (optimizer, scheduler, extra, metrics) and, as its `model_state`, a weights
record: `{WEIGHTS_KEY: {"file", "algorithm", "hexdigest", "size", "order", "rest"}}` (`rest`: the state dict's
entries that are not tensors). The registry keeps `checkpoint.pt`'s digest, which covers the record, which
covers `model.safetensors`. The weights load with the `safetensors` package (memory-mapped; no pickle at all)
and are as readable by any safetensors tool: `safetensors.torch.load_file("model.safetensors")`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mlflow_persist._format.digest import Digest, digest_file
from mlflow_persist.errors import CheckpointCorruptError, ConfigError

__all__ = [
    "SAFETENSORS",
    "WEIGHTS_FILE",
    "WEIGHTS_KEY",
    "is_weights_record",
    "read_weights",
    "require_safetensors",
    "split_weights",
    "weights_record",
    "write_safetensors",
]

SAFETENSORS = "safetensors"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_KEY = "__mlflow_persist_safetensors__"

_DTYPES: dict[torch.dtype, str] = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
}


def require_safetensors() -> None:
    """Fail at once, not at the first restore, when the `safetensors` package is missing."""
    try:
        import safetensors.torch  # noqa: F401
    except ImportError:
        raise ConfigError(
            'weights_format="safetensors" needs the safetensors package; install mlflow-persist[safetensors] '
            'or set weights_format="torch".'
        ) from None


def is_weights_record(model_state: Any) -> bool:
    return isinstance(model_state, Mapping) and len(model_state) == 1 and WEIGHTS_KEY in model_state


def split_weights(model_state: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any], list[str]]:
    """The state dict's dense CPU tensors of a safetensors dtype, everything else, and the key order."""
    tensors: dict[str, torch.Tensor] = {}
    rest: dict[str, Any] = {}
    for key, value in model_state.items():
        if isinstance(value, torch.Tensor) and value.layout == torch.strided and value.dtype in _DTYPES:
            tensors[key] = value
        else:
            rest[key] = value
    return tensors, rest, list(model_state)


def write_safetensors(tensors: Mapping[str, torch.Tensor], file_like: Any) -> None:
    """Write `tensors` in the safetensors format to `file_like` (anything with `write`), tensor by tensor."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        header[name] = {
            "dtype": _DTYPES[tensor.dtype],
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    file_like.write(len(encoded).to_bytes(8, "little"))
    file_like.write(encoded)
    for tensor in tensors.values():
        if tensor.numel():
            flat = tensor.detach().contiguous().reshape(-1).view(torch.uint8)
            file_like.write(flat.numpy().data)


def weights_record(digest: Digest, size: int, rest: Mapping[str, Any], order: list[str]) -> dict[str, Any]:
    return {
        WEIGHTS_KEY: {
            "file": WEIGHTS_FILE,
            "algorithm": digest.algorithm,
            "hexdigest": digest.hexdigest,
            "size": size,
            "order": list(order),
            "rest": dict(rest),
        }
    }


def read_weights(directory: Path, model_state: Mapping[str, Any]) -> dict[str, Any]:
    """The model state dict a weights record stands for: `model.safetensors` verified against the record,
    then loaded with the `safetensors` package; CheckpointCorruptError when it is missing or damaged."""
    record = model_state[WEIGHTS_KEY]
    path = Path(directory) / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointCorruptError(f"{path} is missing; the checkpoint is incomplete.")
    if path.stat().st_size != int(record["size"]):
        raise CheckpointCorruptError(f"{path} has {path.stat().st_size} bytes, {record['size']} were written.")
    if digest_file(path, record["algorithm"]) != Digest(record["algorithm"], record["hexdigest"]):
        raise CheckpointCorruptError(f"{path} does not match its recorded digest; it was damaged.")
    require_safetensors()
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as exc:  # noqa: BLE001 - verified bytes that still do not parse: a writer bug, not an attack
        raise CheckpointCorruptError(f"{path} cannot be read as safetensors ({type(exc).__name__}: {exc}).") from None
    values = {**tensors, **record["rest"]}
    return {key: values[key] for key in record["order"] if key in values}
