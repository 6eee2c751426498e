"""EnhancedRealtimeTrainingSystem: the four models training continuously on the bar stream, with persistence.

On start it tracks every model with the persistence core and restores its newest (or
best, per ``resume_from``) checkpoint, including the DQN agent's epsilon, counters and
target network; the bar stream continues where the restored steps left off. Each bar
is one decision; every ``episode_length`` bars a training episode completes: the
episode is evaluated per model and a model whose evaluation improved is saved. On
shutdown the core's ``Persistence.close()`` saves the final checkpoints.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .data import BarStream
from .episode import EpisodeRecorder
from .market import MarketData
from .models import MODEL_NAMES, build_model
from .orchestrator import PendingDecision, TradingOrchestrator
from .serving import VersionStep
from .trainers import Trainer, build_trainers
from mlflow_persist.logging_setup import package_logger

log = package_logger("mlflow_persist.trading.system")

#: Per model, the metric an episode is evaluated on and whether higher is better.
EPISODE_SCORES: dict[str, tuple[str, bool]] = {
    "dqn": ("reward", True),
    "cnn": ("online_loss", False),
    "cob_rl": ("reward", True),
    "extrema": ("online_loss", False),
}


@dataclass
class EpisodeEvaluation:
    index: int
    scores: dict[str, float]
    improved: list[str] = field(default_factory=list)


def handle_version_step(persistence: Any) -> VersionStep:
    """Resolve a registered version's training step: from the handle when the core exposes it, else its tags."""

    def lookup(name: str, version: int) -> int | None:
        handle = persistence.handles[name]
        saved = getattr(handle, "last_saved", None)
        if isinstance(saved, tuple) and len(saved) == 2 and saved[0] == version:
            return int(saved[1])
        try:
            return persistence.store.get_version(handle.registered_name, version).step
        except Exception as exc:  # noqa: BLE001 - a registry hiccup only delays switching the serving weights
            log.debug("%s: could not read the step of v%s: %s", name, version, exc)
            return None

    return lookup


class EnhancedRealtimeTrainingSystem:
    """Collects training data from the stream, trains all models online and keeps them persisted."""

    def __init__(
        self,
        persistence: Any | None,
        seed: int = 0,
        speed: float = 0.0,
        recorder: EpisodeRecorder | None = None,
        episode_length: int = 100,
        market: MarketData | None = None,
        refresh_every: int = 10,
    ) -> None:
        self.persistence = persistence
        self.seed = int(seed)
        self.speed = speed
        self.recorder = recorder
        self.episode_length = episode_length
        self.market = market or MarketData(seed=self.seed)
        self.refresh_every = refresh_every
        self.models: dict[str, nn.Module] = {}
        self.trainers: dict[str, Trainer] = {}
        self.handles: dict[str, Any] = {}
        self.restored: dict[str, Any] = {}
        self.orchestrator: TradingOrchestrator | None = None
        self.steps_done = 0
        self.episodes: list[EpisodeEvaluation] = []
        self._best_scores: dict[str, float] = {}
        self._episode_metrics: dict[str, list[float]] = {name: [] for name in MODEL_NAMES}
        self.stream: BarStream | None = None

    # ------------------------------------------------------------------------------------ start

    def start(self) -> dict[str, Any]:
        """Build the models, track them, restore their checkpoints and prepare the orchestrator."""
        self.models = {name: build_model(name, seed=self.seed) for name in MODEL_NAMES}
        self.trainers = build_trainers(self.models, seed=self.seed)
        restored_pairs: dict[str, tuple[int | None, int | None]] = {}
        if self.persistence is not None:
            for name, trainer in self.trainers.items():
                handle = self.persistence.track(name, trainer.model, optimizer=trainer.optimizer, extra=trainer.extra)
                self.handles[name] = handle
                info = handle.restore()
                self.restored[name] = info
                if info is not None:
                    restored_pairs[name] = (info.version, info.step)
                    log.info("%s: restored v%d (%s, step %d)", name, info.version, info.category, info.step)
        first_step = max((getattr(h, "current_step", 0) for h in self.handles.values()), default=0)
        self.orchestrator = TradingOrchestrator(
            self.market,
            self.trainers,
            seed=self.seed,
            handles=self.handles,
            recorder=self.recorder,
            version_step=handle_version_step(self.persistence) if self.persistence is not None else (lambda n, v: None),
            restored=restored_pairs,
            first_step=first_step,
            model_seed=self.seed,
            on_trained=self._collect,
        )
        return self.restored

    def _collect(self, name: str, metrics: dict[str, float]) -> None:
        """Keep each model's per-step metric for the episode evaluation."""
        key = EPISODE_SCORES[name][0]
        if key in metrics:
            self._episode_metrics[name].append(float(metrics[key]))

    # ------------------------------------------------------------------------------------ run

    def run(
        self,
        steps: int | None = None,
        minutes: float | None = None,
        stop: threading.Event | None = None,
        on_step: Callable[[PendingDecision], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> int:
        """Train until ``steps`` bars, ``minutes`` of wall time or ``stop`` is set; returns the bars processed."""
        if self.orchestrator is None:
            self.start()
        orchestrator = self.orchestrator
        assert orchestrator is not None
        stop = stop or threading.Event()
        deadline = None if minutes is None else clock() + minutes * 60.0
        self.stream = BarStream(
            self.market.end,
            self.market.first,
            start=self.market.first + orchestrator.step_index,
            speed=self.speed,
            sleep=stop.wait,
        )
        done = 0
        while not stop.is_set():
            if steps is not None and done >= steps:
                break
            if deadline is not None and clock() >= deadline:
                break
            position = next(self.stream)
            if stop.is_set():
                break
            decision = orchestrator.on_bar(position)
            done += 1
            self.steps_done += 1
            if self.steps_done % self.refresh_every == 0:
                for name in self.handles:
                    orchestrator.refresh_saves(name)
            if self.steps_done % self.episode_length == 0:
                self.complete_episode()
            if on_step is not None:
                on_step(decision)
        return done

    # ------------------------------------------------------------------------------------ episodes

    def complete_episode(self) -> EpisodeEvaluation:
        """Evaluate the finished episode per model; save the models whose evaluation improved."""
        evaluation = EpisodeEvaluation(index=len(self.episodes), scores={})
        for name, values in self._episode_metrics.items():
            if not values:
                continue
            key, higher_is_better = EPISODE_SCORES[name]
            score = sum(values) / len(values)
            values.clear()
            if not math.isfinite(score):
                continue
            evaluation.scores[name] = score
            best = self._best_scores.get(name)
            better = best is None or (score > best if higher_is_better else score < best)
            if better:
                self._best_scores[name] = score
            handle = self.handles.get(name)
            if handle is None:
                continue
            self._log_episode(handle, key, score, evaluation.index)
            if better and best is not None:
                evaluation.improved.append(name)
                handle.save(category="performance")
                self.orchestrator.serving[name].keep_candidate(handle.current_step, self.trainers[name].model)  # type: ignore[union-attr]
                log.info("%s: episode %d improved %s to %.6g; saved", name, evaluation.index, key, score)
        self.episodes.append(evaluation)
        return evaluation

    def _log_episode(self, handle: Any, key: str, score: float, index: int) -> None:
        """Buffered like every other metric of the model (a synchronous MLflow call here cost the training
        loop about 24 ms per episode)."""
        handle.metrics.add(handle.current_step, {f"episode/{key}": score, "episode/index": float(index)})

    @property
    def model_states(self) -> dict[str, dict[str, Any]]:
        return self.orchestrator.model_states if self.orchestrator is not None else {}
