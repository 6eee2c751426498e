"""What every framework callback shares: the persistence it opens, numeric metrics out of a framework's log
dict, and several optimizers or schedulers tracked as one stateful object."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from mlflow_persist._observe.logs import package_logger
from mlflow_persist._store.protocol import CheckpointStore
from mlflow_persist.config import PersistConfig
from mlflow_persist.errors import PersistError
from mlflow_persist.integrations.distributed import DistributedPersistence

__all__ = ["StatefulList", "close_persistence", "numeric_metrics", "one_or_list", "open_persistence"]

log = package_logger("mlflow_persist.integrations")


def open_persistence(
    config: PersistConfig | None, store: CheckpointStore | None, options: Mapping[str, Any]
) -> DistributedPersistence:
    """The persistence a callback writes through: one `Persistence`, on rank 0 only under torch.distributed."""
    return DistributedPersistence(config, store=store, **options)


def close_persistence(persistence: DistributedPersistence | None, name: str, final_checkpoints: bool = True) -> None:
    """Take the final checkpoints and finish the run. A checkpoint that could never be written is logged, not
    raised: training is over and the model in memory is intact."""
    if persistence is None:
        return
    try:
        persistence.close(final_checkpoints=final_checkpoints)
    except PersistError as exc:
        log.error("%s: %s", name, exc)


def numeric_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers among `values` (Python numbers, numpy scalars, one-element tensors), as floats."""
    metrics: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, bool):
            continue
        try:
            if hasattr(value, "numel") and value.numel() != 1:
                continue
            number = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError, RuntimeError):
            continue
        if math.isfinite(number):
            metrics[str(key)] = number
    return metrics


class StatefulList:
    """Several optimizers (or schedulers) as one `state_dict`/`load_state_dict` object, in order."""

    def __init__(self, items: Sequence[Any]) -> None:
        self.items = list(items)

    def state_dict(self) -> list[Any]:
        return [item.state_dict() for item in self.items]

    def load_state_dict(self, state: list[Any]) -> None:
        if len(state) != len(self.items):
            raise ValueError(f"the checkpoint holds {len(state)} states, the trainer has {len(self.items)}")
        for item, saved in zip(self.items, state):
            item.load_state_dict(saved)


def one_or_list(items: Sequence[Any]) -> Any | None:
    """None for no items, the item itself for one, a `StatefulList` for several."""
    if not items:
        return None
    return items[0] if len(items) == 1 else StatefulList(items)
