"""Helpers shared by the reliability tests: small models, content digests, fork children, log capture."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORK = multiprocessing.get_context("fork")


def make_model(seed: int, width: int = 256) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A small MLP (each tensor under 1 MB) and its Adam optimizer."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(32, width), torch.nn.ReLU(), torch.nn.Linear(width, 1))
    return model, torch.optim.Adam(model.parameters(), lr=1e-3)


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> float:
    x = torch.randn(16, 32)
    loss = (model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def digest(tensors: Any) -> str:
    """sha256 over the tensors of a (possibly nested) state dict, key order independent."""
    h = hashlib.sha256()

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, torch.Tensor):
            h.update(prefix.encode())
            h.update(value.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                walk(f"{prefix}.{key}", value[key])
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                walk(f"{prefix}[{i}]", item)

    walk("", tensors)
    return h.hexdigest()


class LineLog:
    """Append-only event lines written with one os.write each, so a SIGKILLed writer never tears a line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def emit(self, kind: str, data: Any = None) -> None:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.write(self._fd, f"{kind} {json.dumps(data)} {time.time():.3f}\n".encode())

    def read(self) -> list[tuple[str, Any]]:
        if not self.path.exists():
            return []
        events = []
        self.stamps: list[float] = []
        for line in self.path.read_text().splitlines():
            kind, _, rest = line.partition(" ")
            raw, _, stamp = rest.rpartition(" ")
            events.append((kind, json.loads(raw)))
            self.stamps.append(float(stamp))
        return events

    def first(self, kind: str) -> Any:
        return next((d for k, d in self.read() if k == kind), None)

    def all(self, kind: str) -> list[Any]:
        return [d for k, d in self.read() if k == kind]

    def wait_for(self, kind: str, proc: Any, timeout: float = 180.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for k, d in self.read():
                if k == kind:
                    return d
                if k == "ERROR":
                    raise AssertionError(f"child failed:\n{d}")
            if not proc.is_alive():
                raise AssertionError(f"child exited ({proc.exitcode}) before {kind!r}: {self.read()[-5:]}")
            time.sleep(0.02)
        raise AssertionError(f"no {kind!r} event within {timeout}s")


def fork_child(target: Callable[..., None], *args: Any) -> Any:
    """Start `target(*args)` in a forked child (the parent's imports are reused); any exception is reported on
    the child's LineLog (its first argument) as an ERROR event and the child exits 3."""

    def body() -> None:
        events: LineLog = args[0]
        try:
            # The parent may have run OpenMP-parallel torch ops (other tests in this process); a forked child
            # that starts an OpenMP team again hangs in libgomp, so children compute single-threaded.
            torch.set_num_threads(1)
            target(*args)
        except BaseException:  # noqa: BLE001
            events.emit("ERROR", traceback.format_exc())
            os._exit(3)
        os._exit(0)

    proc = FORK.Process(target=body, daemon=True)
    proc.start()
    return proc


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


@contextlib.contextmanager
def capture_logs(name: str = "mlflow_persist") -> Iterator[ListHandler]:
    """Collect the records of logger `name` directly (the CLI may have turned its propagation off)."""
    logger = logging.getLogger(name)
    handler = ListHandler()
    previous = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


def warm_up_torch() -> None:
    """Resolve torch's lazy imports (the optimizer pulls in torch._dynamo, ~5 s) once in the parent, so forked
    children do not each pay for them. Tiny tensors only: no intra-op thread pool is started before a fork."""
    import io

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    torch.load(buffer, weights_only=True)


def full_digest(value: Any) -> str:
    """sha256 over every leaf of a (possibly nested) state, unlike `digest()`, which sees tensors only: tensors
    and numpy arrays (dtype, shape, bytes), numbers, bools, strings, bytes, None, dtypes and devices, each with
    its type, so a changed learning rate, step or flag changes it. Mappings count by key (any order), lists and
    tuples by position (one may come back as the other). Anything else raises TypeError: no field is ever
    skipped silently."""
    h = hashlib.sha256()

    def put(tag: str, data: bytes = b"") -> None:
        h.update(f"{tag}:{len(data)}:".encode())
        h.update(data)

    def walk(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            put("tensor", f"{flat.dtype}{list(value.shape)}".encode())
            put("bytes", flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
        elif isinstance(value, np.ndarray):
            array = np.ascontiguousarray(value)
            put("ndarray", f"{array.dtype.str}{list(array.shape)}".encode())
            put("bytes", array.tobytes())
        elif isinstance(value, np.generic):
            walk(value.item())
        elif isinstance(value, Mapping):
            put("map", str(len(value)).encode())
            for key in sorted(value, key=repr):
                put("key", repr(key).encode())
                walk(value[key])
        elif isinstance(value, (list, tuple)):
            put("seq", str(len(value)).encode())
            for item in value:
                walk(item)
        elif value is None or isinstance(value, (bool, int, float, str, torch.dtype, torch.device)):
            put(type(value).__name__, repr(value).encode())
        elif isinstance(value, bytes):
            put("raw", value)
        else:
            raise TypeError(f"full_digest does not know how to digest a {type(value).__name__}: {value!r:.80}")

    walk(value)
    return h.hexdigest()


def field_digests(fields: Mapping[str, Any]) -> dict[str, str]:
    """`full_digest` of each named field (model, optimizer, ...): comparing two of these names the fields that
    differ."""
    return {name: full_digest(value) for name, value in fields.items()}


def differing_fields(expected: Mapping[str, str], actual: Mapping[str, str]) -> list[str]:
    """The names whose digests differ between two `field_digests`, a field missing on either side included."""
    return sorted(name for name in set(expected) | set(actual) if expected.get(name) != actual.get(name))
