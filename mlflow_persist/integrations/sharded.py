"""Sharded checkpoints (FSDP, any `torch.distributed.checkpoint` state dict): every rank writes and reads its
own shards with DCP; rank 0 alone decides, registers and verifies.

- **Saving.** Rank 0's handle decides as always. When it saves, it tells the other ranks, and every rank writes
  its shards with `dcp.save` into one staging folder next to the run's checkpoints; DCP's own collectives end
  the write on every rank together and write `.metadata` on rank 0, so rank 0 registers the version only
  after every rank finished. The writer thread then moves the folder into the version's directory, digests
  each file and records the digests in `checkpoint.pt` (`_format/shards.py`). The shard write itself is
  synchronous, as a plain `dcp.save` is; registering and everything after it is not.
- **Restoring.** Rank 0 picks the newest version whose `checkpoint.pt` and shard files all verify (a damaged
  one falls back to the one before, as ever), then every rank loads its own shards with `dcp.load` and
  `set_state_dict`: no rank ever holds the whole state.
- **Collective points.** `step()`, `save()`, `restore()` and `DistributedPersistence.close()` run on every
  rank; on every step rank 0 broadcasts one integer saying whether shards are to be written.

Requirements, each checked with a one-sentence error: the ranks share the run's artifact folder as files (the
default sqlite store with local artifacts, or an artifact root on a shared filesystem); a store behind a
server, with its outbox, is not supported. Only rank 0's random state is saved (ranks seeded alike take it
at a restore: ranks.py).
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from mlflow_persist._format.atomic import STAGING_PREFIX
from mlflow_persist._format.shards import SHARDS_KEY
from mlflow_persist._policy.versions import CHECKPOINTS_DIR, checkpoint_dirname
from mlflow_persist._runtime.handle import ModelHandle, RestoreInfo, Stateful
from mlflow_persist.errors import CheckpointMismatchError, ConfigError, PersistError
from mlflow_persist.integrations.ranks import (
    DistributedHandle,
    StopAgreement,
    agree,
    broadcast_from_writer,
    broadcast_state,
    collective_device,
    global_rank,
    same_random_streams,
    share_rank_zero_random_state,
)

log = logging.getLogger("mlflow_persist")

T = TypeVar("T")

_DONE, _SAVE, _LOAD = 0, 1, 2


def is_sharded_model(model: torch.nn.Module) -> bool:
    """Whether `model` holds sharded parameters (DTensor, as FSDP2's `fully_shard` makes them)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(parameter, DTensor) for parameter in model.parameters())


class ShardChannel:
    """Rank 0 leads, the other ranks follow: while rank 0 runs one handle call (`lead`), the others wait in
    `follow` and write or read shards when told to; one integer per call when nothing is to be done."""

    def __init__(self) -> None:
        self.leading = False
        self.states: dict[str, ShardedState] = {}

    def lead(self, action: Callable[[], T]) -> T:
        self.leading = True
        try:
            return action()
        finally:
            self.leading = False
            self._send(_DONE)

    def request(self, kind: int, name: str, path: str) -> None:
        """On rank 0, inside `lead`: every rank writes (`_SAVE`) or reads (`_LOAD`) `name`'s shards at `path`."""
        if not self.leading:
            raise PersistError(
                f"{name}: a sharded checkpoint is written and read by every rank together; call step(), save(), "
                "restore() and close() on every rank (this call ran on rank 0 alone)."
            )
        self._send(kind, (name, path))
        self.states[name].run(kind, path)

    def follow(self) -> None:
        """On every other rank: carry out rank 0's requests until it is done; a failure is raised at the end
        (rank 0's own call reports the same failure, as DCP raises on every rank)."""
        failure: Exception | None = None
        while True:
            kind = self._receive_kind()
            if kind == _DONE:
                break
            name, path = broadcast_from_writer(None)
            try:
                self.states[name].run(kind, path)
            except Exception as exc:  # noqa: BLE001 - keep following, so rank 0's next request is not left waiting
                failure = exc
        if failure is not None:
            raise failure

    def _send(self, kind: int, detail: tuple[str, str] | None = None) -> None:
        flag = torch.tensor([kind], dtype=torch.int64, device=collective_device())
        dist.broadcast(flag, src=0)
        if detail is not None:
            broadcast_from_writer(detail)

    @staticmethod
    def _receive_kind() -> int:
        flag = torch.zeros(1, dtype=torch.int64, device=collective_device())
        dist.broadcast(flag, src=0)
        return int(flag.item())


class ShardedState:
    """One model's sharded objects on this rank, written and read with DCP."""

    def __init__(self, name: str, model: torch.nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        self.name = name
        self.model = model
        self.optimizer = optimizer

    def _state(self) -> dict[str, Any]:
        optimizers = [self.optimizer] if self.optimizer is not None else []
        model_state, optimizer_state = get_state_dict(self.model, optimizers)
        return {"model": model_state, "optimizer": optimizer_state} if optimizers else {"model": model_state}

    def run(self, kind: int, path: str) -> None:
        if kind == _SAVE:
            dcp.save(self._state(), storage_writer=dcp.FileSystemWriter(path, sync_files=True))
        else:
            state = self._state()
            dcp.load(state, checkpoint_id=path)
            optimizers = [self.optimizer] if self.optimizer is not None else []
            set_state_dict(
                self.model,
                optimizers,
                model_state_dict=state["model"],
                optim_state_dict=state.get("optimizer", {}),
            )


class _ShardsStandIn(torch.nn.Module):
    """What rank 0's handle tracks in place of the sharded model and optimizer: its state is the shard record,
    and loading one has every rank read its shards."""

    def __init__(self, name: str, channel: ShardChannel) -> None:
        super().__init__()
        self.shards_of = name
        self.channel = channel

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        return {SHARDS_KEY: ""}  # the one key a sharded checkpoint's model_state has (the fit check)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        record = state_dict.get(SHARDS_KEY)
        if not isinstance(record, Mapping) or "directory" not in record:
            raise PersistError("the checkpoint holds no verified shards")
        try:
            self.channel.request(_LOAD, self.shards_of, str(record["directory"]))
        except PersistError:
            raise
        except Exception as exc:  # noqa: BLE001 - DCP raises many types for a state that does not fit
            raise CheckpointMismatchError(
                f"{self.shards_of}: the ranks could not load the checkpoint's shards ({type(exc).__name__}: "
                f"{str(exc)[:300]}); track the model and optimizer it was saved from, on as many ranks."
            ) from None
        return None


def shard_writer(handle: ModelHandle, channel: ShardChannel) -> Callable[[int], dict[str, Any]]:
    """Rank 0's `model_state_for_save`: every rank writes its shards into a fresh staging folder beside the
    run's checkpoints; the payload names it, and the writer moves it into the version (shards.py)."""
    root = _local_checkpoints_root(handle)

    def write(step: int) -> dict[str, Any]:
        staging = root / f"{STAGING_PREFIX}{checkpoint_dirname(handle.registered_name, step)}"
        try:
            root.mkdir(parents=True, exist_ok=True)
            channel.request(_SAVE, handle.name, str(staging))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return {SHARDS_KEY: str(staging)}

    return write


def _local_checkpoints_root(handle: ModelHandle) -> Path:
    local_dir = getattr(handle.pipeline.store, "local_artifact_dir", None)
    root = local_dir(handle.run_id) if local_dir is not None and handle.pipeline.outbox is None else None
    if root is None:
        raise _not_local(handle.name)
    return Path(root) / CHECKPOINTS_DIR


def _not_local(name: str) -> ConfigError:
    return ConfigError(
        f"{name}: sharded checkpoints need the run's artifacts as files every rank can write (the default sqlite "
        "store with local artifacts, or an artifact root on a shared filesystem), and this store keeps them "
        "elsewhere; use such a store, or save the full state (FULL_STATE_DICT) instead."
    )


class ShardedHandle(DistributedHandle):
    """A `DistributedHandle` whose model and optimizer are saved and restored as shards, every rank its own."""

    def __init__(
        self,
        handle: ModelHandle | None,
        model: torch.nn.Module,
        optimizer: Stateful | None,
        scheduler: Stateful | None,
        extra: Stateful | None,
        stops: StopAgreement | None,
        channel: ShardChannel,
    ) -> None:
        super().__init__(handle, model, None, scheduler, extra, stops)
        self._channel = channel

    def _on_rank_zero(self, call: Callable[[], T]) -> T:
        return self._channel.lead(call)

    def _beside_rank_zero(self) -> None:
        try:
            self._channel.follow()
        except Exception as exc:  # noqa: BLE001 - rank 0 records the failed save; training goes on
            log.warning("a sharded save failed on this rank: %s", exc)

    def restore(self, strict: bool = True) -> RestoreInfo | None:
        """Collective: rank 0 picks and verifies the version, every rank loads its own shards; the scheduler and
        extra state (whole on rank 0) reach the other ranks by broadcast."""
        outcome: tuple[str, Any] = ("ok", None)
        same_streams = same_random_streams()
        if self.handle is not None:
            handle = self.handle
            try:
                outcome = ("ok", self._channel.lead(lambda: handle.restore(strict=strict)))
            except Exception as exc:  # noqa: BLE001 - raised on every rank by _agree
                outcome = ("error", exc)
        else:
            try:
                self._channel.follow()
            except Exception as exc:  # noqa: BLE001 - rank 0 reports it; _agree raises it everywhere
                log.warning("loading the shards failed on this rank: %s", exc)
        info = agree(outcome, "restore the checkpoint")
        if info is not None:
            small = {key: obj for key, obj in self._objects.items() if key in ("scheduler", "extra") and obj}
            states = {key: obj.state_dict() for key, obj in small.items()} if self.handle is not None else None
            states = broadcast_state(states)
            if self.handle is None:
                for key, state in (states or {}).items():
                    small[key].load_state_dict(state)
                self._step = info.step
            share_rank_zero_random_state(self.handle.name if self.handle is not None else "", same_streams)
        return info


def track_sharded(
    persistence: Any,
    channel: ShardChannel,
    name: str,
    model: torch.nn.Module,
    optimizer: Stateful | None,
    scheduler: Stateful | None,
    extra: Stateful | None,
    stops: StopAgreement | None,
    **kwargs: Any,
) -> ShardedHandle:
    """`DistributedPersistence.track` for a sharded model (collective)."""
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(
            f"{name}: a sharded checkpoint needs a torch.optim.Optimizer (got {type(optimizer).__name__})."
        )
    handle: ModelHandle | None = None
    outcome: tuple[str, Any] = ("ok", None)
    if persistence is not None:
        try:
            if persistence.outbox is not None or not hasattr(persistence.store, "local_artifact_dir"):
                raise _not_local(name)  # before tracking: a handle that can never save must not exist
            handle = persistence.track(name, _ShardsStandIn(name, channel), None, scheduler, extra, **kwargs)
            handle.model_state_for_save = shard_writer(handle, channel)
        except Exception as exc:  # noqa: BLE001 - raised on every rank by _agree
            outcome = ("error", exc)
    agree(outcome, f"track {name!r}")
    channel.states[name] = ShardedState(name, model, optimizer)
    return ShardedHandle(handle, model, optimizer, scheduler, extra, stops, channel)


def lead_or_follow(channel: ShardChannel, action: Callable[[], T] | None) -> T | None:
    """Rank 0 runs `action` (closing, typically) leading the channel; the other ranks follow it."""
    if global_rank() == 0:
        assert action is not None
        return channel.lead(action)
    try:
        channel.follow()
    except Exception as exc:  # noqa: BLE001 - rank 0's close reports the failed final save
        log.warning("a sharded final save failed on this rank: %s", exc)
    return None


__all__ = ["ShardChannel", "ShardedHandle", "is_sharded_model", "track_sharded"]
