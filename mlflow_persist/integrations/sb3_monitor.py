"""When an SB3 monitor can be judged unknown: the pure rule `PersistCallback` applies after every env step.

SB3 records its keys at different moments: `train/*` inside each update (the first one comes after a rollout,
or after `learning_starts`), `rollout/ep_*` only right before a log dump (the callback computes those itself at
each episode end), a user's callback whenever it likes. So a monitor missing from what was recorded so far is
judged only once a training update has been recorded and one more env step has passed (a callback listed
after ours records that step too): by then every key SB3 records per update or per step has been seen once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["MonitorCheck"]

TRAINING_PREFIX = "train/"


@dataclass
class MonitorCheck:
    """`monitor` against the names recorded so far. `always_known` are names the callback produces itself
    (the episode means, the evaluation's monitor): a monitor among them is never judged unknown."""

    monitor: str | None
    always_known: frozenset[str] = frozenset()
    seen: set[str] = field(default_factory=set)
    decided: bool = False
    _trained_steps: int = 0

    def __post_init__(self) -> None:
        self.decided = self.monitor is None or self.monitor in self.always_known

    def unknown_after(self, names: Iterable[str]) -> bool:
        """Record the names of one env step; True once: when the monitor is judged unknown at this step."""
        if self.decided:
            return False
        self.seen.update(names)
        if self.monitor in self.seen:
            self.decided = True
            return False
        if self._trained_steps == 0 and not any(name.startswith(TRAINING_PREFIX) for name in self.seen):
            return False
        self._trained_steps += 1
        if self._trained_steps < 2:  # the step that recorded the update; one more for callbacks after ours
            return False
        self.decided = True
        return True

    def logged(self) -> list[str]:
        """Every name the monitor could have been, sorted: what was recorded and what the callback produces."""
        return sorted(self.seen | self.always_known)
