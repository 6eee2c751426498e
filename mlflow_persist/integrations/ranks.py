"""What every rank runs under `torch.distributed`: rank 0's broadcasts, the stop agreement, and the per-rank
handle (the real `ModelHandle` on rank 0, a step counter elsewhere). `distributed.py` builds on it.

- **Opening, tracking and restoring are collective**, and every one of them reaches its broadcast on rank 0
  whatever happens: rank 0 does the store work, then broadcasts the outcome (`agree`). Every rank then loads
  the same state or raises the same error; no rank waits forever.
- **A restore sends the tensors with `dist.broadcast`**, one collective per tensor on the process group's own
  transport; only the state's structure (keys, shapes, dtypes, plain values) is pickled.
- **A stop signal anywhere stops every rank at the same step** (`StopAgreement`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import signal
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist

from mlflow_persist._format.payload import capture_rng_state, decoded_rng_state, restore_rng_state
from mlflow_persist._policy.policy import FINAL, NO_SAVE, SaveDecision
from mlflow_persist._runtime.handle import ModelHandle, RestoreInfo, Stateful
from mlflow_persist._runtime.persistence import Persistence
from mlflow_persist._runtime.process_effects import GracefulExit, SignalHandlers, interactive_session
from mlflow_persist.errors import PersistError

T = TypeVar("T")

log = logging.getLogger("mlflow_persist")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def global_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def broadcast_from_writer(value: Any) -> Any:
    """Rank 0's `value` on every rank (pickled; tensors must be on the CPU)."""
    if not is_distributed():
        return value
    box = [value if global_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def same_random_streams() -> frozenset[str]:
    """Collective: the random generators (`torch`, `numpy`, `python`, `cuda`) whose state is the same on every
    rank, as after the same seed on every rank (`seed_everything`, the Trainer's `set_seed`): rank 0's saved
    state of those is every rank's."""
    state = decoded_rng_state(capture_rng_state())
    if not is_distributed():
        return frozenset(state)
    digests = {key: _state_digest(value) for key, value in state.items()}
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, digests)
    return frozenset(key for key, digest in digests.items() if all(other.get(key) == digest for other in gathered))


def _state_digest(value: Any) -> str:
    """The same for the same random state in any process (a pickled tensor is not: it varies per process)."""
    digest = hashlib.sha256()
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, torch.Tensor):
            digest.update(item.detach().cpu().contiguous().numpy().tobytes())
        elif isinstance(item, np.ndarray):
            digest.update(np.ascontiguousarray(item).tobytes())
        elif isinstance(item, (list, tuple)):
            digest.update(f"[{len(item)}".encode())
            pending.extend(reversed(item))
        else:
            digest.update(repr(item).encode())
    return digest.hexdigest()


def share_rank_zero_random_state(name: str, same_streams: frozenset[str]) -> None:
    """Collective, once rank 0 restored its random state from a checkpoint: for each generator the ranks shared
    before the restore (`same_random_streams`), every rank takes rank 0's restored state, so a resumed run draws
    what an uninterrupted one draws (dropout, sampling). A checkpoint holds rank 0's random state only, so
    ranks whose torch generator was seeded apart keep their own stream, which rank 0 says once."""
    if not is_distributed():
        return
    if "torch" not in same_streams and global_rank() == 0:
        log.warning(
            "%s: the ranks' torch random states differ (seeded per rank), and a checkpoint holds rank 0's only: "
            "the other ranks resume with the streams they started with, so their draws (dropout, sampling) differ "
            "from an uninterrupted run's",
            name,
        )
    if not same_streams:
        return
    shared = {key: value for key, value in capture_rng_state().items() if key in same_streams}
    encoded = torch.frombuffer(bytearray(pickle.dumps(shared)), dtype=torch.uint8)
    received = broadcast_state({"rng": encoded} if global_rank() == 0 else None)  # the bytes go by dist.broadcast
    if global_rank() != 0:
        restore_rng_state(pickle.loads(received["rng"].numpy().tobytes()))  # noqa: S301 - rank 0's own bytes


_TENSOR = "__mlflow_persist_tensor__"


def broadcast_state(state: Any) -> Any:
    """Rank 0's nested state (dicts, lists and tuples of tensors and plain values) on every rank: the structure
    as one small pickled object, each tensor with `dist.broadcast` (never pickled)."""
    if not is_distributed():
        return state
    tensors: list[torch.Tensor] = []
    skeleton = broadcast_from_writer(_skeleton(state, tensors) if global_rank() == 0 else None)
    device = collective_device()
    if global_rank() != 0:
        tensors = [torch.empty(shape, dtype=dtype) for shape, dtype in _tensor_specs(skeleton)]
    received = []
    for tensor in tensors:
        on_device = tensor.to(device)
        dist.broadcast(on_device, src=0)
        received.append(on_device.cpu() if on_device.device != tensor.device else on_device)
    return _filled(skeleton, received)


def collective_device() -> torch.device:
    """Where the process group's collectives take tensors: the current GPU under NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _skeleton(state: Any, tensors: list[torch.Tensor]) -> Any:
    """`state` with each tensor replaced by a placeholder (its index in `tensors`, its shape and dtype)."""

    def placeholder(tensor: torch.Tensor) -> tuple[str, int, tuple[int, ...], torch.dtype]:
        tensors.append(tensor.detach().cpu().contiguous())
        return (_TENSOR, len(tensors) - 1, tuple(tensor.shape), tensor.dtype)

    return _map_leaves(state, lambda value: isinstance(value, torch.Tensor), placeholder)


def _is_placeholder(value: Any) -> bool:
    return isinstance(value, tuple) and len(value) == 4 and value[0] == _TENSOR


def _tensor_specs(skeleton: Any) -> list[tuple[tuple[int, ...], torch.dtype]]:
    specs: dict[int, tuple[tuple[int, ...], torch.dtype]] = {}

    def note(placeholder: Any) -> Any:
        specs[placeholder[1]] = (placeholder[2], placeholder[3])
        return placeholder

    _map_leaves(skeleton, _is_placeholder, note)
    return [specs[index] for index in range(len(specs))]


def _filled(skeleton: Any, tensors: list[torch.Tensor]) -> Any:
    return _map_leaves(skeleton, _is_placeholder, lambda placeholder: tensors[placeholder[1]])


def _map_leaves(value: Any, is_leaf: Callable[[Any], bool], convert: Callable[[Any], Any]) -> Any:
    """`value` (nested dicts, lists, tuples) with every leaf for which `is_leaf` holds replaced by `convert(leaf)`."""
    if is_leaf(value):
        return convert(value)
    if isinstance(value, dict):
        items = ((k, _map_leaves(v, is_leaf, convert)) for k, v in value.items())
        return OrderedDict(items) if isinstance(value, OrderedDict) else dict(items)
    if isinstance(value, (list, tuple)):
        converted = [_map_leaves(v, is_leaf, convert) for v in value]
        return converted if isinstance(value, list) else tuple(converted)
    return value


class StopAgreement:
    """Agrees, at every step, whether any rank received a stop signal: one `all_reduce(MAX)` of the pending
    signal number. This rank's own requests come from rank 0's `Persistence` or, on the other ranks, from
    handlers installed here."""

    def __init__(self, persistence: Persistence | None, grace_seconds: float) -> None:
        self.persistence = persistence
        self.local: SignalHandlers | None = None
        if persistence is None:  # rank 0's Persistence installs its own
            self.local = SignalHandlers(grace_seconds, _exit_now, interactive_session())
            self.local.install()

    def pending(self) -> int:
        if self.persistence is not None:
            return self.persistence.pending_signal or 0
        return (self.local.signum or 0) if self.local is not None and self.local.stop.is_set() else 0

    def agree(self, raised: GracefulExit | None) -> GracefulExit | None:
        """The GracefulExit every rank raises at this step (`raised`: rank 0's own), or None to go on."""
        flag = torch.tensor([self.pending()], dtype=torch.int64, device=collective_device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        signum = int(flag.item())
        if not signum:
            return raised
        if self.local is not None:
            self.local.reached_boundary()
        return raised or GracefulExit(0 if signum == signal.SIGTERM else 128 + signum)

    def close(self) -> None:
        if self.local is not None:
            self.local.uninstall()


def _exit_now(signum: int) -> None:
    """No step boundary came within the grace period (or a second signal): a rank other than 0 holds nothing to
    save, so it exits at once."""
    os._exit(128 + signum)


def agree(outcome: tuple[str, Any], what: str) -> Any:
    """Broadcast rank 0's (`ok`, value) or (`error`, exception); raise the error on every rank."""
    kind, value = broadcast_from_writer(
        outcome if outcome[0] == "ok" else ("error", f"{type(outcome[1]).__name__}: {outcome[1]}")
    )
    if kind == "error":
        if global_rank() == 0:
            raise outcome[1]
        raise PersistError(
            f"Rank 0 could not {what} ({value}); every rank stops with it. Fix the store, then relaunch all ranks."
        )
    return value


class DistributedHandle:
    """One model on every rank: the real handle on rank 0, a step counter elsewhere."""

    def __init__(
        self,
        handle: ModelHandle | None,
        model: torch.nn.Module,
        optimizer: Stateful | None,
        scheduler: Stateful | None,
        extra: Stateful | None,
        stops: StopAgreement | None = None,
    ) -> None:
        self.handle = handle
        self._stops = stops
        self._objects = {"model": model, "optimizer": optimizer, "scheduler": scheduler, "extra": extra}
        self._step = 0

    @property
    def current_step(self) -> int:
        return self.handle.current_step if self.handle is not None else self._step

    def __getattr__(self, name: str) -> Any:
        """Everything else of `ModelHandle` (`best_value`, `saves`, `history()`, ...), on rank 0."""
        handle = self.__dict__.get("handle")
        if handle is None:
            raise AttributeError(f"{name!r} is only available on rank 0, where the model's handle lives")
        return getattr(handle, name)

    def step(self, step: int | None = None, **metrics: float) -> SaveDecision:
        """On rank 0 `ModelHandle.step`; elsewhere it only counts (report the same metrics on every rank,
        reduced across ranks where it matters: rank 0 decides on what it is given). With signal handling on it
        is collective: a stop signal received by any rank raises GracefulExit on every rank here."""
        decision, stop = NO_SAVE, None
        if self.handle is not None:
            handle = self.handle
            try:
                decision = self._on_rank_zero(lambda: handle.step(step, **metrics))
            except GracefulExit as raised:  # rank 0's own stop request: the others learn of it first
                stop = raised
        else:
            self._beside_rank_zero()
            self._step = self._step + 1 if step is None else int(step)
        if self._stops is not None:
            stop = self._stops.agree(stop)
        if stop is not None:
            raise stop
        return decision

    def save(self, category: str = FINAL, **kwargs: Any) -> Any:
        """Rank 0's `ModelHandle.save` (None on the other ranks)."""
        if self.handle is None:
            self._beside_rank_zero()
            return None
        handle = self.handle
        return self._on_rank_zero(lambda: handle.save(category, **kwargs))

    def _on_rank_zero(self, call: Callable[[], T]) -> T:
        """Run a call of rank 0's handle (a sharded handle has the other ranks take part: sharded.py)."""
        return call()

    def _beside_rank_zero(self) -> None:
        """What the other ranks do while rank 0 runs a handle call: nothing, unless the model is sharded."""

    def restore(self, strict: bool = True) -> RestoreInfo | None:
        """Collective: rank 0 restores from the store and sends what it loaded; every rank returns the same
        RestoreInfo with the same state loaded, or raises rank 0's error."""
        outcome: tuple[str, Any] = ("ok", None)
        states = None
        same_streams = same_random_streams()
        if self.handle is not None:
            try:
                info = self.handle.restore(strict=strict)
                if info is not None and is_distributed():
                    states = {key: obj.state_dict() for key, obj in self._objects.items() if obj is not None}
                outcome = ("ok", info)
            except Exception as exc:  # noqa: BLE001
                outcome = ("error", exc)
        info = agree(outcome, "restore the checkpoint")
        if info is not None and is_distributed():
            states = broadcast_state(states)  # rank 0's loaded state; the tensors go by dist.broadcast
        if self.handle is None and info is not None:
            for key, state in (states or {}).items():
                target = self._objects[key]
                if target is not None:
                    target.load_state_dict(state)
            self._step = info.step
        if info is not None:
            share_rank_zero_random_state(self.handle.name if self.handle is not None else "", same_streams)
        return info


__all__ = [
    "DistributedHandle",
    "StopAgreement",
    "agree",
    "broadcast_from_writer",
    "broadcast_state",
    "collective_device",
    "global_rank",
    "is_distributed",
    "same_random_streams",
    "share_rank_zero_random_state",
]
