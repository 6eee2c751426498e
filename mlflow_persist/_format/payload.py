"""What a checkpoint holds, how it is serialized and checksummed, and how every format version is read.

A checkpoint is a directory with two files:

- `checkpoint.pt`: `torch.save` of a plain dict (tensors, numbers, strings, lists, dicts), so it loads with
  `torch.load(weights_only=True)` and can never execute code;
- `manifest.json`: format version, the digest of `checkpoint.pt` and its algorithm (digest.py), step,
  category, metrics, created_at;
- for a sharded checkpoint, `shards/` with the ranks' DCP files, recorded in `checkpoint.pt` (shards.py);
- with `weights_format="safetensors"`, `model.safetensors` with the weights, recorded in `checkpoint.pt`
  (safetensors_weights.py).

Format history (every loader reads every older version, filling new fields with defaults):
- 1: model_state, optimizer_state, step, metrics.
- 2: adds model_name, scheduler_state, extra_state, rng_state, category, created_at.

Longer than 400 lines: the writer and the reader of every format version live side by side, because a change
to one must be made to the other in the same place.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import random
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlflow_persist._format.device_copy import DeviceCopies
from mlflow_persist._format.digest import (
    DEFAULT_ALGORITHM,
    SHA256,
    Digest,
    digest_bytes,
    digest_file,
    new_hasher,
    recorded_digest,
)
from mlflow_persist._format.direct_io import DirectFile
from mlflow_persist._format.safetensors_weights import (
    SAFETENSORS,
    WEIGHTS_FILE,
    is_weights_record,
    read_weights,
    split_weights,
    weights_record,
    write_safetensors,
)
from mlflow_persist._format.shards import SHARDS_DIR, SHARDS_KEY, adopt_shards, is_sharded, verify_shards
from mlflow_persist._format.timestamps import utc_now_iso
from mlflow_persist.errors import CheckpointCorruptError, PersistError

__all__ = [
    "CHECKPOINT_FILE",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "CheckpointState",
    "WrittenCheckpoint",
    "build_payload",
    "capture_rng_state",
    "checkpoint_files",
    "copy_to_cpu",
    "decoded_rng_state",
    "manifest_bytes",
    "manifest_digest",
    "payload_to_state",
    "read_checkpoint_bytes",
    "read_checkpoint_dir",
    "read_manifest",
    "restore_rng_state",
    "serialize",
    "sha256_file",
    "upgrade_payload",
    "write_checkpoint_dir",
]

FORMAT_VERSION = 2
CHECKPOINT_FILE = "checkpoint.pt"
MANIFEST_FILE = "manifest.json"
_NDARRAY_KEY = "__mlflow_persist_ndarray__"


@dataclass
class CheckpointState:
    """A verified, loaded checkpoint: plain state dicts ready for `load_state_dict`."""

    model_state: Mapping[str, Any]  # tensors (a shard record for a sharded checkpoint: shards.py)
    optimizer_state: dict[str, Any] | None = None
    scheduler_state: dict[str, Any] | None = None
    extra_state: Any = None
    rng_state: dict[str, Any] | None = None
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    name: str | None = None
    version: int | None = None
    category: str | None = None
    created_at: str | None = None
    digest: Digest | None = None
    monitor_state: dict[str, Any] | None = None  # the handle's smoothing state (None in older checkpoints)


# ---------------------------------------------------------------------------------------------- snapshot


def copy_to_cpu(value: Any, reuse: Any = None, device_copies: DeviceCopies | None = None) -> Any:
    """A deep copy where every tensor is detached and copied to CPU memory (the one blocking cost of a save).

    `reuse` is an earlier copy of the same structure whose writer is done with it: a tensor of the same shape
    and dtype at the same place is overwritten in place, which spares fresh allocations and their page
    faults (the dominant cost of copying a state dict into new memory). Accelerator tensors go through
    `device_copies` (device_copy.py): launched asynchronously, complete once its `finish()` wait returns.
    """
    if isinstance(value, torch.Tensor):
        if device_copies is not None and device_copies.handles(value):
            return device_copies.copy(value, reuse)
        if (
            isinstance(reuse, torch.Tensor)
            and reuse.shape == value.shape
            and reuse.dtype == value.dtype
            and reuse.device.type == "cpu"
            and reuse.layout == value.layout == torch.strided
        ):
            return reuse.copy_(value.detach())
        return value.detach().to("cpu", copy=True)
    if isinstance(value, np.ndarray):
        return _encode_ndarray(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        spare = reuse if isinstance(reuse, dict) else {}
        copied = ((k, copy_to_cpu(v, spare.get(k), device_copies)) for k, v in value.items())
        return OrderedDict(copied) if isinstance(value, OrderedDict) else dict(copied)
    if isinstance(value, (list, tuple)):
        spare_items = (
            list(reuse) if isinstance(reuse, (list, tuple)) and len(reuse) == len(value) else [None] * len(value)
        )
        items = [copy_to_cpu(v, r, device_copies) for v, r in zip(value, spare_items)]
        return items if isinstance(value, list) else tuple(items)
    if value is None or isinstance(value, (bool, int, float, str, bytes, torch.dtype, torch.device)):
        return value
    raise TypeError(
        f"a checkpoint cannot hold a {type(value).__name__}; make state_dict() return tensors, numbers, "
        "strings, lists, tuples, dicts or numpy arrays"
    )


def _encode_ndarray(array: np.ndarray) -> dict[str, Any]:
    contiguous = np.ascontiguousarray(array)
    raw = (
        torch.frombuffer(bytearray(contiguous.tobytes()), dtype=torch.uint8)
        if contiguous.nbytes
        else torch.empty(0, dtype=torch.uint8)
    )
    return {_NDARRAY_KEY: raw, "dtype": contiguous.dtype.str, "shape": list(contiguous.shape)}


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if _NDARRAY_KEY in value:
            data = value[_NDARRAY_KEY].numpy().tobytes()
            return np.frombuffer(data, dtype=np.dtype(value["dtype"])).reshape(value["shape"]).copy()
        decoded = {k: _decode(v) for k, v in value.items()}
        return OrderedDict(decoded) if isinstance(value, OrderedDict) else decoded
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_decode(v) for v in value)
    return value


def capture_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": copy_to_cpu(np.random.get_state()),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def decoded_rng_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """The saved random states as their generators take them back (numpy's tuple, Python's nested tuples)."""
    decoded = dict(state)
    if "numpy" in state:
        decoded["numpy"] = _decode(state["numpy"])
    if "python" in state:
        decoded["python"] = _to_tuples(state["python"])
    return decoded


def restore_rng_state(state: Mapping[str, Any] | None) -> None:
    if not state:
        return
    state = decoded_rng_state(state)
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "numpy" in state:
        np.random.set_state(state["numpy"])
    if "python" in state:
        random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuples(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_to_tuples(v) for v in value)
    return value


def build_payload(
    *,
    model_name: str,
    model_state: Mapping[str, Any],
    optimizer_state: Any = None,
    scheduler_state: Any = None,
    extra_state: Any = None,
    step: int,
    metrics: Mapping[str, float],
    category: str,
    rng_state: Mapping[str, Any] | None = None,
    reuse: Mapping[str, Any] | None = None,
    device_copies: DeviceCopies | None = None,
    monitor_state: Mapping[str, Any] | None = None,
    weights_format: str = "torch",
) -> dict[str, Any]:
    """The payload dict of the current format, every tensor copied to CPU memory (into the tensors of
    `reuse`, a released earlier payload, where they fit). With `device_copies`, accelerator tensors are
    still being copied when this returns: wait for `device_copies.finish()` before reading them."""
    spare = reuse or {}
    copies = device_copies
    return {
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "model_state": copy_to_cpu(model_state, spare.get("model_state"), copies),
        "optimizer_state": copy_to_cpu(optimizer_state, spare.get("optimizer_state"), copies),
        "scheduler_state": copy_to_cpu(scheduler_state, spare.get("scheduler_state"), copies),
        "extra_state": copy_to_cpu(extra_state, spare.get("extra_state"), copies),
        "rng_state": dict(rng_state) if rng_state is not None else capture_rng_state(),
        "step": int(step),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "category": category,
        "created_at": utc_now_iso(),
        "monitor_state": copy_to_cpu(dict(monitor_state)) if monitor_state is not None else None,
        "weights_format": weights_format,
    }


# ---------------------------------------------------------------------------------------------- writing


@dataclass(frozen=True)
class WrittenCheckpoint:
    directory: Path
    digest: Digest
    size_bytes: int


def _save_zip(payload: Mapping[str, Any], file_like: Any) -> None:
    """`torch.save` without torch's per-record CRC32, for this call only (the checkpoint's own digest covers
    every byte, and `torch.serialization.set_crc32_options` would change every other torch.save of the
    process). Falls back to a plain torch.save when this torch lacks the private writer API."""
    try:
        writer = torch._C.PyTorchFileWriter(file_like, False, torch.serialization._get_storage_alignment())
        save = torch.serialization._save
    except (AttributeError, TypeError):
        torch.save(dict(payload), file_like)
        return
    save(dict(payload), writer, pickle, torch.serialization.DEFAULT_PROTOCOL, False)  # type: ignore[no-untyped-call]
    writer.write_end_of_file()
    file_like.flush()


def serialize(payload: Mapping[str, Any]) -> bytes:
    buffer = io.BytesIO()
    _save_zip(payload, buffer)
    return buffer.getvalue()


class _DigestingWriter:
    """A write-only file object for the serializer that computes the digest of every byte on the way, so the
    bytes are written once, straight from the snapshot's tensors, with no in-memory copy of the checkpoint."""

    def __init__(self, handle: Any, algorithm: str = DEFAULT_ALGORITHM) -> None:
        self._handle = handle
        self._algorithm = algorithm
        self._hasher = new_hasher(algorithm)
        self.size = 0
        self.error: OSError | None = None  # torch reports a failed write as a RuntimeError without the errno

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self._hasher.update(view)
        try:
            self._handle.write(view)
        except OSError as exc:
            self.error = exc
            raise
        self.size += view.nbytes
        return view.nbytes

    def flush(self) -> None:
        self._handle.flush()

    def digest(self) -> Digest:
        return Digest(self._algorithm, self._hasher.hexdigest())


def write_checkpoint_dir(payload: Mapping[str, Any], directory: Path) -> WrittenCheckpoint:
    """Serialize `payload` into `directory`: checkpoint.pt (digested on the way) and manifest.json.

    Durability is the caller's: write into the staging directory of `atomic.atomic_directory`, which fsyncs
    the files and renames the directory into place. A payload without `model_state` is refused before any
    byte is written: it could never be restored, and must never become a registered version."""
    if not isinstance(payload, Mapping) or "model_state" not in payload:
        raise PersistError(
            "refusing to write a checkpoint without model_state (an empty or released snapshot); this is a bug "
            "in the caller: report it, the previous checkpoints are untouched."
        )
    directory.mkdir(parents=True, exist_ok=True)
    staged = payload["model_state"].get(SHARDS_KEY) if is_sharded(payload["model_state"]) else None
    if isinstance(staged, str):  # the ranks' DCP files: moved in, recorded with their digests (shards.py)
        payload = {**payload, "model_state": {SHARDS_KEY: adopt_shards(staged, directory)}}
    elif payload.get("weights_format") == SAFETENSORS:  # the weights as model.safetensors (safetensors_weights.py)
        tensors, rest, order = split_weights(payload["model_state"])
        weights = _write_digested(directory / WEIGHTS_FILE, lambda writer: write_safetensors(tensors, writer))
        payload = {**payload, "model_state": weights_record(weights.digest(), weights.size, rest, order)}
    writer = _write_digested(directory / CHECKPOINT_FILE, lambda file_like: _save_zip(payload, file_like))
    digest = writer.digest()
    (directory / MANIFEST_FILE).write_bytes(manifest_bytes(payload, digest, writer.size))
    return WrittenCheckpoint(directory, digest, writer.size)


def _write_digested(path: Path, write: Callable[[_DigestingWriter], None]) -> _DigestingWriter:
    """Write a file through DirectFile, digesting every byte on the way."""
    with DirectFile(path) as handle:
        writer = _DigestingWriter(handle)
        try:
            write(writer)
        except Exception:
            if writer.error is not None:
                raise writer.error from None  # the real cause (e.g. ENOSPC), so callers can react to its errno
            raise
    return writer


def checkpoint_files(directory: Path) -> tuple[str, ...]:
    """The files of a written checkpoint directory, in upload order: the manifest first (a folder that exists
    remotely says when it was written), checkpoint.pt, then model.safetensors when the weights are there."""
    extra = (WEIGHTS_FILE,) if (Path(directory) / WEIGHTS_FILE).is_file() else ()
    return (MANIFEST_FILE, CHECKPOINT_FILE, *extra)


def manifest_bytes(payload: Mapping[str, Any], digest: Digest, size_bytes: int) -> bytes:
    manifest = {
        "format_version": payload.get("format_version", FORMAT_VERSION),
        "digest_algorithm": digest.algorithm,
        "digest": digest.hexdigest,
        "size_bytes": size_bytes,
        "model_name": payload.get("model_name"),
        "step": payload.get("step"),
        "category": payload.get("category"),
        "metrics": payload.get("metrics", {}),
        "created_at": payload.get("created_at"),
    }
    return json.dumps(manifest, indent=1).encode()


# ---------------------------------------------------------------------------------------------- reading


def sha256_file(path: str | os.PathLike[str]) -> str:
    return digest_file(path, SHA256).hexdigest


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_FILE
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return manifest
    except FileNotFoundError:
        raise CheckpointCorruptError(f"{path} is missing; the checkpoint is incomplete.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointCorruptError(f"{path} is not valid JSON ({exc}); the checkpoint is damaged.") from None


def manifest_digest(manifest: Mapping[str, Any]) -> Digest | None:
    return recorded_digest(manifest.get("digest_algorithm"), manifest.get("digest"), manifest.get("sha256"))


def _check_digest(actual: Digest, expected: Digest | None, label: str) -> None:
    if expected is not None and actual.hexdigest != expected.hexdigest:
        raise CheckpointCorruptError(
            f"{label} has {actual.algorithm} {actual.hexdigest[:12]}… but {expected.hexdigest[:12]}… was recorded; "
            "the file is damaged."
        )


def _digest_or_corrupt(compute: Callable[[str], Digest], expected: Digest | None, label: str) -> Digest:
    try:
        return compute(expected.algorithm if expected is not None else DEFAULT_ALGORITHM)
    except ValueError as exc:  # an algorithm this version does not know
        raise CheckpointCorruptError(f"{label} cannot be verified: {exc}.") from None


def read_checkpoint_dir(directory: Path, expected: Digest | None = None) -> CheckpointState:
    """Verify the digest (against `expected`, else the manifest's) and load with weights_only=True.

    The file is hashed through a memory map and loaded with `torch.load(mmap=True)`: its pages are read
    once, from the page cache, and the tensors are copied only where the caller copies them (load_state_dict).
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    checkpoint = directory / CHECKPOINT_FILE
    if not checkpoint.is_file():
        raise CheckpointCorruptError(f"{checkpoint} is missing; the checkpoint is incomplete.")
    expected = expected or manifest_digest(manifest)
    actual = _digest_or_corrupt(lambda algorithm: digest_file(checkpoint, algorithm), expected, str(checkpoint))
    _check_digest(actual, expected, str(checkpoint))
    try:
        raw = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - not mappable (an old non-zip file); a plain load decides
        raw = _load_or_corrupt(lambda: torch.load(checkpoint, map_location="cpu", weights_only=True), str(checkpoint))
    state = payload_to_state(raw)
    state.digest = actual
    if is_weights_record(state.model_state):  # checkpoint.pt verified: now the weights file it records
        state.model_state = read_weights(directory, state.model_state)
    elif is_sharded(state.model_state):  # checkpoint.pt verified: now the shard files it records
        record = state.model_state[SHARDS_KEY]
        verify_shards(directory, record)
        state.model_state = {SHARDS_KEY: {"directory": str(directory / SHARDS_DIR), "files": dict(record)}}
    return state


def _load_or_corrupt(load: Callable[[], Any], label: str) -> Any:
    try:
        return load()
    except Exception as exc:  # torch raises many types for damaged or hostile files  # noqa: BLE001
        raise CheckpointCorruptError(f"{label} cannot be loaded safely ({type(exc).__name__}: {exc}).") from None


def read_checkpoint_bytes(data: bytes, expected: Digest | None, label: str = CHECKPOINT_FILE) -> CheckpointState:
    """Verify `data` (the bytes of a checkpoint.pt) against `expected` and load it with weights_only=True;
    damaged or hostile bytes raise CheckpointCorruptError."""
    actual = _digest_or_corrupt(lambda algorithm: digest_bytes(data, algorithm), expected, label)
    _check_digest(actual, expected, label)
    raw = _load_or_corrupt(lambda: torch.load(io.BytesIO(data), map_location="cpu", weights_only=True), label)
    state = payload_to_state(raw)
    state.digest = actual
    if is_weights_record(state.model_state) or is_sharded(state.model_state):
        raise CheckpointCorruptError(f"{label} keeps its weights in files beside it, which were not provided.")
    return state


def upgrade_payload(raw: Mapping[str, Any]) -> dict[str, Any]:
    """Bring a payload of any older format version to the current one."""
    if not isinstance(raw, Mapping) or "model_state" not in raw:
        raise CheckpointCorruptError("checkpoint.pt holds no model_state; it is not an mlflow-persist checkpoint.")
    payload = dict(raw)
    version = int(payload.get("format_version", 1))
    if version > FORMAT_VERSION:
        raise CheckpointCorruptError(
            f"checkpoint format {version} is newer than this mlflow-persist ({FORMAT_VERSION}); upgrade the package."
        )
    if version < 2:
        payload.setdefault("model_name", None)
        payload.setdefault("scheduler_state", None)
        payload.setdefault("extra_state", None)
        payload.setdefault("rng_state", None)
        payload.setdefault("category", None)
        payload.setdefault("created_at", None)
        payload.setdefault("optimizer_state", None)
        payload.setdefault("metrics", {})
        payload.setdefault("step", 0)
    payload["source_format_version"] = version
    payload["format_version"] = FORMAT_VERSION
    return payload


def payload_to_state(raw: Mapping[str, Any]) -> CheckpointState:
    payload = upgrade_payload(raw)
    return CheckpointState(
        model_state=payload["model_state"],
        optimizer_state=payload["optimizer_state"],
        scheduler_state=payload["scheduler_state"],
        extra_state=_decode(payload["extra_state"]),
        rng_state=payload["rng_state"],
        step=int(payload["step"]),
        metrics=dict(payload["metrics"] or {}),
        format_version=int(payload["source_format_version"]),
        name=payload["model_name"],
        category=payload["category"],
        created_at=payload["created_at"],
        monitor_state=payload.get("monitor_state"),
    )
