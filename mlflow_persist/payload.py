"""What a checkpoint holds, how it is serialized and checksummed, and how every format version is read.

A checkpoint is a directory with two files:

- `checkpoint.pt`: `torch.save` of a plain dict (tensors, numbers, strings, lists, dicts), so it loads with
  `torch.load(weights_only=True)` and can never execute code;
- `manifest.json`: format version, sha256 of `checkpoint.pt`, step, category, metrics, created_at.

Format history (every loader reads every older version, filling new fields with defaults):
- 1: model_state, optimizer_state, step, metrics.
- 2: adds model_name, scheduler_state, extra_state, rng_state, category, created_at.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from mlflow_persist.errors import CheckpointCorruptError
from mlflow_persist.timestamps import utc_now_iso

FORMAT_VERSION = 2
CHECKPOINT_FILE = "checkpoint.pt"
MANIFEST_FILE = "manifest.json"
_NDARRAY_KEY = "__mlflow_persist_ndarray__"
_hash_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-persist-sha256")


def _new_hash_pool_after_fork() -> None:
    # A forked child inherits the pool object but not its worker thread: work submitted there would never run.
    global _hash_pool
    _hash_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-persist-sha256")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_hash_pool_after_fork)

@dataclass
class CheckpointState:
    """A verified, loaded checkpoint: plain state dicts ready for `load_state_dict`."""

    model_state: Mapping[str, torch.Tensor]
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
    sha256: str | None = None


# ---------------------------------------------------------------------------------------------- snapshot

def copy_to_cpu(value: Any, reuse: Any = None) -> Any:
    """A deep copy where every tensor is detached and copied to CPU memory (the one blocking cost of a save).

    `reuse` is an earlier copy of the same structure whose writer is done with it: a tensor of the same shape
    and dtype at the same place is overwritten in place, which spares fresh allocations and their page
    faults (the dominant cost of copying a state dict into new memory).
    """
    if isinstance(value, torch.Tensor):
        if (isinstance(reuse, torch.Tensor) and reuse.shape == value.shape and reuse.dtype == value.dtype
                and reuse.device.type == "cpu" and reuse.layout == value.layout == torch.strided):
            return reuse.copy_(value.detach())
        return value.detach().to("cpu", copy=True)
    if isinstance(value, np.ndarray):
        return _encode_ndarray(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        spare = reuse if isinstance(reuse, dict) else {}
        copied = ((k, copy_to_cpu(v, spare.get(k))) for k, v in value.items())
        return OrderedDict(copied) if isinstance(value, OrderedDict) else dict(copied)
    if isinstance(value, (list, tuple)):
        spare_items = list(reuse) if isinstance(reuse, (list, tuple)) and len(reuse) == len(value) else \
            [None] * len(value)
        items = [copy_to_cpu(v, r) for v, r in zip(value, spare_items)]
        return items if isinstance(value, list) else tuple(items)
    if value is None or isinstance(value, (bool, int, float, str, bytes, torch.dtype, torch.device)):
        return value
    raise TypeError(
        f"a checkpoint cannot hold a {type(value).__name__}; make state_dict() return tensors, numbers, "
        "strings, lists, tuples, dicts or numpy arrays"
    )


def _encode_ndarray(array: np.ndarray) -> dict[str, Any]:
    contiguous = np.ascontiguousarray(array)
    raw = torch.frombuffer(bytearray(contiguous.tobytes()), dtype=torch.uint8) if contiguous.nbytes else \
        torch.empty(0, dtype=torch.uint8)
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


def restore_rng_state(state: Mapping[str, Any] | None) -> None:
    if not state:
        return
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "numpy" in state:
        np.random.set_state(_decode(state["numpy"]))
    if "python" in state:
        random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_tuples(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_to_tuples(v) for v in value)
    return value


def build_payload(*, model_name: str, model_state: Mapping[str, Any], optimizer_state: Any = None,
                  scheduler_state: Any = None, extra_state: Any = None, step: int, metrics: Mapping[str, float],
                  category: str, rng_state: Mapping[str, Any] | None = None,
                  reuse: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The payload dict of the current format, every tensor already copied to CPU memory (into the tensors
    of `reuse`, a released earlier payload, where they fit)."""
    spare = reuse or {}
    return {
        "format_version": FORMAT_VERSION,
        "model_name": model_name,
        "model_state": copy_to_cpu(model_state, spare.get("model_state")),
        "optimizer_state": copy_to_cpu(optimizer_state, spare.get("optimizer_state")),
        "scheduler_state": copy_to_cpu(scheduler_state, spare.get("scheduler_state")),
        "extra_state": copy_to_cpu(extra_state, spare.get("extra_state")),
        "rng_state": dict(rng_state) if rng_state is not None else capture_rng_state(),
        "step": int(step),
        "metrics": {k: float(v) for k, v in metrics.items()},
        "category": category,
        "created_at": utc_now_iso(),
    }


# ---------------------------------------------------------------------------------------------- writing

@dataclass(frozen=True)
class WrittenCheckpoint:
    directory: Path
    sha256: str
    size_bytes: int


def serialize(payload: Mapping[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(dict(payload), buffer)
    return buffer.getvalue()


class _HashingWriter:
    """A write-only file object for torch.save that fsyncs at the end and computes the sha256 on the way.

    Large chunks are hashed on a second thread while this one writes them (hashlib and file writes both
    release the GIL), so the checksum costs almost nothing on top of the write, and the bytes are written
    once, straight from torch's serializer, without an in-memory copy of the whole checkpoint.
    """

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._digest = hashlib.sha256()
        self.size = 0
        self.error: OSError | None = None  # torch reports a failed write as a RuntimeError without the errno

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        try:
            hashing = self._hash_in_background(view) if view.nbytes >= 1 << 20 else None
            if hashing is not None:
                try:
                    self._handle.write(view)
                finally:
                    hashing.result()
            else:
                self._digest.update(view)
                self._handle.write(view)
        except OSError as exc:
            self.error = exc
            raise
        self.size += view.nbytes
        return view.nbytes

    def _hash_in_background(self, view: memoryview) -> Any:
        """A future hashing `view` on the pool's thread; None when the pool refuses work (at interpreter exit,
        once `concurrent.futures` shut its pools down: an atexit close then hashes on the writing thread)."""
        try:
            return _hash_pool.submit(self._digest.update, view)
        except RuntimeError:
            return None

    def flush(self) -> None:
        self._handle.flush()

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def write_checkpoint_dir(payload: Mapping[str, Any], directory: Path) -> WrittenCheckpoint:
    """Serialize `payload` into `directory`: checkpoint.pt (hashed on the way) and manifest.json.

    Durability is the caller's: write into the staging directory of `atomic.atomic_directory`, which fsyncs
    the files and renames the directory into place."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / CHECKPOINT_FILE, "wb") as handle:
        writer = _HashingWriter(handle)
        try:
            torch.save(dict(payload), writer)
        except Exception:
            if writer.error is not None:
                raise writer.error from None  # the real cause (e.g. ENOSPC), so callers can react to its errno
            raise
    (directory / MANIFEST_FILE).write_bytes(manifest_bytes(payload, writer.hexdigest(), writer.size))
    return WrittenCheckpoint(directory, writer.hexdigest(), writer.size)


def manifest_bytes(payload: Mapping[str, Any], sha256: str, size_bytes: int) -> bytes:
    manifest = {
        "format_version": payload.get("format_version", FORMAT_VERSION),
        "sha256": sha256,
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
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointCorruptError(f"{path} is missing; the checkpoint is incomplete.") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointCorruptError(f"{path} is not valid JSON ({exc}); the checkpoint is damaged.") from None


def read_checkpoint_dir(directory: Path, expected_sha256: str | None = None) -> CheckpointState:
    """Verify the sha256 (against `expected_sha256`, else the manifest) and load with weights_only=True."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    checkpoint = directory / CHECKPOINT_FILE
    if not checkpoint.is_file():
        raise CheckpointCorruptError(f"{checkpoint} is missing; the checkpoint is incomplete.")
    return read_checkpoint_bytes(checkpoint.read_bytes(), expected_sha256 or manifest.get("sha256"),
                                 label=str(checkpoint))


def read_checkpoint_bytes(data: bytes, expected_sha256: str | None, label: str = CHECKPOINT_FILE
                          ) -> CheckpointState:
    """Verify `data` (the bytes of a checkpoint.pt) against `expected_sha256` and load it with
    weights_only=True; damaged or hostile bytes raise CheckpointCorruptError."""
    actual = hashlib.sha256(data).hexdigest()
    if expected_sha256 and actual != expected_sha256:
        raise CheckpointCorruptError(
            f"{label} has sha256 {actual[:12]}… but {expected_sha256[:12]}… was recorded; the file is damaged."
        )
    try:
        raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged or hostile files
        raise CheckpointCorruptError(f"{label} cannot be loaded safely ({type(exc).__name__}: {exc}).") from None
    state = payload_to_state(raw)
    state.sha256 = actual
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
    )
