"""What every framework callback shares: numeric metrics out of a framework's log dict, and several
optimizers or schedulers tracked as one stateful object."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


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
