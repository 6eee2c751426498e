"""Pure decision logic: no I/O, no clock of its own (time is passed in as seconds).

- `PerformanceTracker`: best value, recent history, improvement amount, degradation streak.
- `PeriodicSchedule`: periodic saves every N steps and every X minutes.
- `decide_save`: the save decision of one step.
- `select_best`, `retention_deletions`, `disk_pressure_order`: which versions carry `best`, which fall out
  of the retention windows, and what to delete first when the disk runs short.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "BEST_ELIGIBLE",
    "CATEGORIES",
    "EPISODE",
    "FINAL",
    "KEEP_MARKED_CUTS",
    "LEGACY",
    "NO_SAVE",
    "PERFORMANCE",
    "PERIODIC",
    "ROLLBACK",
    "DeltaMode",
    "Mode",
    "PerformanceTracker",
    "PeriodicSchedule",
    "SaveDecision",
    "VersionSummary",
    "decide_save",
    "disk_pressure_order",
    "improvement",
    "is_better",
    "recorded_mode",
    "retention_deletions",
    "select_best",
]

Mode = Literal["min", "max"]
DeltaMode = Literal["abs", "rel"]

PERFORMANCE = "performance"
PERIODIC = "periodic"
FINAL = "final"
LEGACY = "legacy"
ROLLBACK = "rollback"
EPISODE = "episode"  # an episode-end save, ranked by its episode score under its own monitor, never `best`
CATEGORIES = (PERFORMANCE, PERIODIC, FINAL, LEGACY, ROLLBACK, EPISODE)
BEST_ELIGIBLE = frozenset({PERFORMANCE, LEGACY, ROLLBACK})


def is_better(
    value: float, reference: float | None, mode: Mode, min_delta: float = 0.0, delta_mode: DeltaMode = "abs"
) -> bool:
    """True when `value` beats `reference` by more than `min_delta` (a missing reference is always beaten)."""
    if value is None or math.isnan(value):
        return False
    if reference is None or math.isnan(reference):
        return True
    margin = min_delta * abs(reference) if delta_mode == "rel" else min_delta
    if mode == "min":
        return value < reference - margin
    return value > reference + margin


def improvement(value: float, reference: float | None, mode: Mode) -> float | None:
    """How much better `value` is than `reference`, positive when better (None without a reference)."""
    if reference is None:
        return None
    return reference - value if mode == "min" else value - reference


@dataclass
class PerformanceTracker:
    """Per-model performance state: best value, recent history and the degradation streak.

    `best_value` is the best of what is stored (`stored_best`) and of the performance saves still in flight
    (`claims`, by step). A save that fails or is dropped withdraws its claim (`settle(step, stored=False)`),
    so the best never rests on a value no version holds.
    """

    monitor: str | None
    mode: Mode = "min"
    min_delta: float = 0.0
    min_delta_mode: DeltaMode = "abs"
    history_size: int = 1000
    best_value: float | None = None
    best_step: int | None = None
    last_value: float | None = None
    degraded_steps: int = 0
    history: deque[tuple[int, float]] = field(default_factory=deque)
    stored_best: float | None = None
    stored_best_step: int | None = None
    claims: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.history = deque(self.history, maxlen=self.history_size)

    def observe(self, step: int, value: float) -> None:
        self.last_value = value
        self.history.append((step, value))

    def beats_best(self, value: float) -> bool:
        return is_better(value, self.best_value, self.mode, self.min_delta, self.min_delta_mode)

    def accept_best(self, step: int, value: float) -> float | None:
        """Record a new best, claimed by the save decided at `step`; returns the improvement over the
        previous best."""
        gained = improvement(value, self.best_value, self.mode)
        self.best_value, self.best_step = value, step
        self.claims[step] = value
        self.degraded_steps = 0
        return gained

    def reset_best(self, value: float | None, step: int | None) -> None:
        """The best as the store holds it (at restore): no claims in flight."""
        self.stored_best, self.stored_best_step = value, step
        self.claims.clear()
        self.best_value, self.best_step = value, step

    def settle(self, step: int, stored: bool) -> None:
        """The performance save decided at `step` is stored (its value may become the stored best) or is
        not (failed, dropped): its claim ends and the best is recomputed from what remains."""
        value = self.claims.pop(step, None)
        if value is None:
            return
        if stored and (self.stored_best is None or is_better(value, self.stored_best, self.mode)):
            self.stored_best, self.stored_best_step = value, step
        candidates = [(v, s) for s, v in self.claims.items()]
        if self.stored_best is not None:
            candidates.append((self.stored_best, self.stored_best_step or 0))
        if not candidates:
            self.best_value, self.best_step = None, None
            return
        sign = 1.0 if self.mode == "min" else -1.0
        self.best_value, self.best_step = min(candidates, key=lambda c: (sign * c[0], -c[1]))

    def update_degradation(self, value: float, margin: float | None, margin_mode: DeltaMode) -> int:
        """Count consecutive steps worse than best by more than `margin`; returns the current streak."""
        if margin is None or self.best_value is None or math.isnan(value):
            self.degraded_steps = 0
            return 0
        opposite: Mode = "max" if self.mode == "min" else "min"
        worse = is_better(value, self.best_value, opposite, margin, margin_mode)
        self.degraded_steps = self.degraded_steps + 1 if worse else 0
        return self.degraded_steps


@dataclass
class PeriodicSchedule:
    """Periodic saves by step count and by wall time, independent of performance saves."""

    every_steps: int | None = None
    every_seconds: float | None = None
    next_step: int | None = None
    last_time: float | None = None
    time_due: bool = False

    def start(self, step: int, now: float) -> None:
        if self.every_steps:
            self.next_step = (step // self.every_steps + 1) * self.every_steps
        self.last_time = now
        self.time_due = False

    def check_time(self, now: float) -> bool:
        """Called by the scheduler job: marks a time-based save due when the interval has passed."""
        if self.every_seconds is not None and self.last_time is not None:
            if now - self.last_time >= self.every_seconds:
                self.time_due = True
        return self.time_due

    def due(self, step: int) -> bool:
        if self.time_due:
            return True
        return self.next_step is not None and step >= self.next_step

    def taken(self, step: int, now: float) -> None:
        if self.every_steps:
            self.next_step = (step // self.every_steps + 1) * self.every_steps
        self.last_time = now
        self.time_due = False


@dataclass(frozen=True)
class SaveDecision:
    """What one `step()` decided. `save` is False on the vast majority of steps."""

    save: bool
    category: str | None = None
    value: float | None = None
    improvement: float | None = None
    reason: str = ""

    def __bool__(self) -> bool:
        return self.save


NO_SAVE = SaveDecision(False, reason="no improvement and nothing due")


def decide_save(
    tracker: PerformanceTracker, schedule: PeriodicSchedule, step: int, value: float | None
) -> SaveDecision:
    """Performance save when the monitored value beats the best by more than min_delta, else periodic when due.

    A performance save on a step where a periodic save is also due leaves the periodic save due, so it is
    taken at the next step: periodic checkpoints keep their own rhythm regardless of performance saves.
    Pure apart from updating the tracker's notion of `best` when a performance save is decided.
    """
    if value is not None and tracker.beats_best(value):
        previous = tracker.best_value
        gained = tracker.accept_best(step, value)
        reason = (
            f"{tracker.monitor} improved from {previous} to {value}"
            if previous is not None
            else f"first {tracker.monitor} value {value}"
        )
        return SaveDecision(True, PERFORMANCE, value, gained, reason)
    if schedule.due(step):
        return SaveDecision(True, PERIODIC, value, None, "periodic save due")
    return NO_SAVE


@dataclass(frozen=True)
class VersionSummary:
    """What the policies need to know about one registered version."""

    version: int
    category: str
    value: float | None = None
    step: int | None = None
    corrupt: bool = False
    monitor: str | None = None
    superseded: bool = False  # an old-format version kept after `migrate` rewrote it
    mode: str | None = None  # the mode its trainer ranked with (tag `mlflow_persist.mode`), when recorded
    cut_complete: bool = False  # a member of a complete system checkpoint (tag `mlflow_persist.cut_complete`)


def recorded_mode(versions: Iterable[VersionSummary], fallback: Mode) -> Mode:
    """The mode to rank by: the one the newest version recorded (what its trainer used), else `fallback`.
    A tool run without the trainer's config must not rank a `max` monitor as `min`."""
    for v in sorted(versions, key=lambda v: v.version, reverse=True):
        if v.mode in ("min", "max"):
            return v.mode  # type: ignore[return-value]
    return fallback


def _sort_key_best(mode: Mode) -> Callable[[VersionSummary], tuple[float, int]]:
    def key(v: VersionSummary) -> tuple[float, int]:
        value = v.value if v.value is not None and not math.isnan(v.value) else math.inf
        ranked = value if mode == "min" else -value if value != math.inf else math.inf
        return (ranked, -v.version)  # ties: the newer version wins

    return key


def select_best(versions: Iterable[VersionSummary], mode: Mode, monitor: str | None = None) -> VersionSummary | None:
    """The valid version with the best value among performance-based, legacy and rollback versions.

    With `monitor`, only versions measured by that metric (or by an unrecorded one) are compared: a legacy
    `performance_score` and a training `loss` are not comparable."""
    versions = list(versions)
    mode = recorded_mode(versions, mode)
    candidates = [
        v
        for v in versions
        if v.category in BEST_ELIGIBLE
        and not v.corrupt
        and not v.superseded
        and v.value is not None
        and not math.isnan(v.value)
        and (monitor is None or v.monitor in (None, monitor))
    ]
    if not candidates:
        return None
    return min(candidates, key=_sort_key_best(mode))


#: Each model keeps its members of this many newest marked cuts: one model's versions cannot show whether its
#: newest marked cut is complete (a crash between two marker writes), so the one before is kept as well.
KEEP_MARKED_CUTS = 2


def _protected(versions: Sequence[VersionSummary], best_version: int | None, keep: Collection[int] = ()) -> set[int]:
    """Never deleted: the newest version, `best`, this model's members of its newest marked system checkpoints
    (KEEP_MARKED_CUTS), and `keep` (its member of the newest complete cut, as the runtime knows it across
    models: the cut a restart resumes from)."""
    protected = {max(v.version for v in versions), *keep}
    if best_version is not None:
        protected.add(best_version)
    in_cuts = sorted(v.version for v in versions if v.cut_complete and not v.corrupt)
    protected.update(in_cuts[-KEEP_MARKED_CUTS:])
    return protected


def retention_deletions(
    versions: Sequence[VersionSummary],
    mode: Mode,
    keep_best: int,
    keep_periodic: int,
    keep_final: int,
    best_version: int | None,
    keep_episode: int = 3,
    keep: Collection[int] = (),
) -> list[int]:
    """Versions that fall out of the windows: performance beyond the top `keep_best`, periodic beyond the
    newest `keep_periodic`, final beyond the newest `keep_final`, episode beyond the newest `keep_episode`.
    Never the `best` version, the newest version, the newest complete cut's member or a version in `keep`;
    legacy, rollback and corrupt versions are left to the operator."""
    if not versions:
        return []
    mode = recorded_mode(versions, mode)
    protected = _protected(versions, best_version, keep)
    delete: list[int] = []
    performance = sorted(
        (v for v in versions if v.category == PERFORMANCE and not v.corrupt and not v.superseded),
        key=_sort_key_best(mode),
    )
    delete += [v.version for v in performance[keep_best:]]
    for category, window_size in ((PERIODIC, keep_periodic), (FINAL, keep_final), (EPISODE, keep_episode)):
        window = sorted(
            (v for v in versions if v.category == category and not v.corrupt and not v.superseded),
            key=lambda v: v.version,
            reverse=True,
        )
        delete += [v.version for v in window[window_size:]]
    return sorted(v for v in delete if v not in protected)


def disk_pressure_order(
    versions: Sequence[VersionSummary], mode: Mode, best_version: int | None, keep: Collection[int] = ()
) -> list[int]:
    """Deletion order when the disk runs short: episode and periodic oldest first, then final oldest first,
    then performance worst first. Never the `best` version, the newest version, the newest complete cut's
    member or a version in `keep`."""
    if not versions:
        return []
    mode = recorded_mode(versions, mode)
    protected = _protected(versions, best_version, keep)
    live = [v for v in versions if not v.superseded]
    periodic = sorted((v for v in live if v.category in (PERIODIC, EPISODE)), key=lambda v: v.version)
    final = sorted((v for v in live if v.category == FINAL), key=lambda v: v.version)
    performance = sorted((v for v in live if v.category == PERFORMANCE), key=_sort_key_best(mode), reverse=True)
    return [v.version for v in (*periodic, *final, *performance) if v.version not in protected]
