"""Shared helpers of the trading tests: recorded cases, a fake persistence handle, a list recorder."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mlflow_persist.trading.features import features_from_frames
from mlflow_persist.trading.market import Draws, MarketData
from mlflow_persist.trading.trainers import TrainingCase


def market_cases(market: MarketData, count: int, start: int = 0) -> list[TrainingCase]:
    """Training cases for consecutive bars (outputs filled where trainers need them)."""
    cases = []
    for i in range(start, start + count):
        position = market.first + i
        frames = market.frames(position, Draws.generate(0, i, 0.5))
        tensors = features_from_frames(frames)
        later = features_from_frames(market.frames(position + 4, Draws.generate(0, i + 4, 0.5)))
        cases.append(
            TrainingCase(
                tensors=tensors,
                outputs={"cob_rl.action": torch.tensor([i % 3])},
                action=i % 3,
                outcome=market.outcome(position, frames["cob"]),
                next_tensors={"dqn.state": later["dqn.state"]},
            )
        )
    return cases


@dataclass
class FakeDecision:
    save: bool
    category: str | None = None


class FakeHandle:
    """Saves every ``save_every`` steps, registering a version (with its weights) ``delay`` steps later."""

    def __init__(self, name: str, model: torch.nn.Module, save_every: int = 5, delay: int = 2) -> None:
        self.name = name
        self.model = model
        self.save_every = save_every
        self.delay = delay
        self.current_step = 0
        self.last_version: int | None = None
        self.last_save_time: float | None = None
        self.best_value: float | None = None
        self.metrics: list[dict[str, float]] = []
        self.versions: dict[int, tuple[int, dict[str, torch.Tensor]]] = {}
        self._queue: list[tuple[int, int, dict[str, torch.Tensor]]] = []

    def step(self, **metrics: float) -> FakeDecision:
        self.current_step += 1
        self.metrics.append(metrics)
        loss = metrics["loss"]
        if self.best_value is None or loss < self.best_value:
            self.best_value = loss
        for due, step, state in list(self._queue):
            if due <= self.current_step:
                version = len(self.versions) + 1
                self.versions[version] = (step, state)
                self.last_version = version
                self.last_save_time = float(self.current_step)
                self._queue.remove((due, step, state))
        if self.current_step % self.save_every == 0:
            state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self._queue.append((self.current_step + self.delay, self.current_step, state))
            return FakeDecision(True, "periodic")
        return FakeDecision(False)

    def version_step(self, version: int) -> int | None:
        return self.versions[version][0] if version in self.versions else None


def memory_system(
    seed: int = 0,
    cut_every_steps: int = 20,
    recorder: Any = None,
    store: Any = None,
    durable: Any = None,
    **config: Any,
) -> tuple[Any, Any]:
    """A trading system on a MemoryStore (started; `store` to share one); returns (persistence, system).
    Close the persistence."""
    import mlflow_persist as mp
    from mlflow_persist.testing import MemoryStore
    from mlflow_persist.trading.app import with_trading_defaults
    from mlflow_persist.trading.system import EnhancedRealtimeTrainingSystem

    values = dict(
        tracking_uri="memory://",
        keep_best=100,
        keep_periodic=100,
        keep_final=100,
        keep_episode=100,
        log_system_metrics=False,
        min_free_disk_mb=0,
        min_free_disk_percent=0,
    )
    values.update(config)
    persistence = mp.Persistence(
        with_trading_defaults(mp.PersistConfig(**values)),
        store=store if store is not None else MemoryStore(),
        install_signal_handlers=False,
    )
    system = EnhancedRealtimeTrainingSystem(
        persistence, seed=seed, recorder=recorder, cut_every_steps=cut_every_steps, durable=durable
    )
    system.start()
    return persistence, system


class ListRecorder:
    def __init__(self) -> None:
        self.episodes: list[Any] = []

    def record(self, episode: Any) -> None:
        self.episodes.append(episode)
