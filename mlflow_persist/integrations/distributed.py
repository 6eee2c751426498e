"""Persistence under `torch.distributed`: rank 0 writes and registers; the other ranks never touch the store.

- **Saves** happen on rank 0 alone. Under data parallelism every rank holds the same weights and optimizer
  state, so rank 0's snapshot is everyone's; no collective is involved, so a save that fails or hangs on
  rank 0 never blocks another rank.
- **Opening, tracking and restoring are collective**, and every one of them reaches its broadcast on rank 0
  whatever happens: rank 0 does the store work, then broadcasts the outcome (the restored state dicts, or its
  error). Every rank then loads the same state or raises the same error; no rank waits forever.
- Without `torch.distributed` initialized (or with one process) it is exactly one `Persistence`.
- **A lost rank 0 ends the other ranks** within `rank_zero_timeout` seconds, with one line saying why
  (rank_zero_watch.py).

- **A stop signal anywhere stops every rank at the same step**: with signal handling on (the default outside
  notebooks), every rank turns SIGTERM/SIGINT into a stop request, and every `step()` is one `all_reduce` of
  one integer, so the request of any rank raises GracefulExit on all of them at that step; rank 0 then takes
  the final checkpoints as it closes. Without it, a rank that stops alone leaves the others waiting in their
  next collective.
- **A restore sends the tensors with `dist.broadcast`**, one collective per tensor on the process group's own
  transport; only the state's structure (keys, shapes, dtypes, plain values) is pickled.

Sharded state (FSDP, `torch.distributed.checkpoint`) is saved and restored by every rank: sharded.py.
"""

from __future__ import annotations

from typing import Any

import torch

from mlflow_persist._runtime.handle import ModelHandle, Stateful
from mlflow_persist._runtime.persistence import Persistence
from mlflow_persist._runtime.process_effects import ProcessEffects, interactive_session
from mlflow_persist.config import PersistConfig
from mlflow_persist.errors import ConfigError
from mlflow_persist.integrations.rank_zero_watch import RankZeroWatch
from mlflow_persist.integrations.ranks import (
    DistributedHandle,
    StopAgreement,
    agree,
    broadcast_from_writer,
    broadcast_state,
    global_rank,
    is_distributed,
)
from mlflow_persist.integrations.sharded import ShardChannel, is_sharded_model, lead_or_follow, track_sharded


class DistributedPersistence:
    """A `Persistence` on rank 0, nothing on the other ranks; collective `track` and `restore`.

    Create it on every rank after `init_process_group`. Saves happen on rank 0 alone and involve no other
    rank; opening, `track` and `restore` are collective, and every rank ends with the same state or the same
    error. Without `torch.distributed` initialized (or with one process) it is exactly one `Persistence`.
    """

    def __init__(
        self,
        config: PersistConfig | None = None,
        *,
        store: Any = None,
        install_signal_handlers: bool | None = None,
        rank_zero_timeout: float | None = 60.0,
        **kwargs: Any,
    ) -> None:
        """`rank_zero_timeout`: seconds the other ranks wait for a sign of life from rank 0 before they exit
        with EXIT_RANK_ZERO_LOST and one line saying why (rank_zero_watch.py); None: never."""
        self.rank = global_rank()
        self.persistence: Persistence | None = None
        outcome: tuple[str, Any] = ("ok", None)
        if self.is_writer:
            try:
                self.persistence = Persistence(
                    config, store=store, install_signal_handlers=install_signal_handlers, **kwargs
                )
            except Exception as exc:  # noqa: BLE001 - broadcast to the other ranks, then raised everywhere
                outcome = ("error", exc)
        agree(outcome, "open the store")
        wanted = ProcessEffects(signal_handlers=install_signal_handlers).wants_signal_handlers(interactive_session())
        grace = (config or PersistConfig()).shutdown_grace_seconds
        self.stops = StopAgreement(self.persistence, grace) if is_distributed() and wanted else None
        self._channel: ShardChannel | None = None  # once a sharded model is tracked
        self.watch = (
            RankZeroWatch(rank_zero_timeout).start() if is_distributed() and rank_zero_timeout is not None else None
        )

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    def track(
        self,
        name: str,
        model: torch.nn.Module,
        optimizer: Stateful | None = None,
        scheduler: Stateful | None = None,
        extra: Stateful | None = None,
        *,
        sharded: bool | None = None,
        **kwargs: Any,
    ) -> DistributedHandle:
        """Collective. `sharded`: save and restore the model and optimizer as shards, every rank its own, with
        `torch.distributed.checkpoint` (sharded.py); None (the default) does so when the model holds sharded
        parameters (FSDP2's `fully_shard`)."""
        if sharded is None:
            sharded = is_distributed() and is_sharded_model(model)
        if sharded:
            if not is_distributed():
                raise ConfigError(f"{name}: sharded checkpoints need torch.distributed with 2 or more ranks.")
            self._channel = self._channel or ShardChannel()
            return track_sharded(
                self.persistence, self._channel, name, model, optimizer, scheduler, extra, self.stops, **kwargs
            )
        handle: ModelHandle | None = None
        outcome: tuple[str, Any] = ("ok", None)
        if self.persistence is not None:
            try:
                handle = self.persistence.track(name, model, optimizer, scheduler, extra, **kwargs)
            except Exception as exc:  # noqa: BLE001
                outcome = ("error", exc)
        agree(outcome, f"track {name!r}")
        return DistributedHandle(handle, model, optimizer, scheduler, extra, self.stops)

    def close(self, final_checkpoints: bool = True, timeout: float | None = 600.0) -> None:
        """Rank 0 takes the final checkpoints and closes; collective when a model is sharded (every rank writes
        its final shards)."""
        if self.stops is not None:
            self.stops.close()
        persistence = self.persistence

        def close_writer() -> None:
            if persistence is not None:
                persistence.close(final_checkpoints=final_checkpoints, timeout=timeout)

        try:
            if self._channel is not None:
                lead_or_follow(self._channel, close_writer if self.is_writer else None)
            else:
                close_writer()
        finally:
            if self.watch is not None:
                self.watch.stop()

    def __enter__(self) -> DistributedPersistence:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


__all__ = [
    "DistributedHandle",
    "DistributedPersistence",
    "broadcast_from_writer",
    "broadcast_state",
    "global_rank",
    "is_distributed",
]
