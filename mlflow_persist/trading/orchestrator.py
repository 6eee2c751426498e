"""The trading orchestrator: per bar it builds inputs, decides, and trains every model once the outcome is known."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Protocol

import pandas as pd
import torch

from mlflow_persist._observe.logs import package_logger

from .episode import EpisodeRecorder, TradingEpisode
from .features import dqn_state, features_from_frames
from .market import HORIZON, Draws, MarketData
from .replay import decide
from .rewards import trade_reward
from .serving import ServingModel
from .trainers import Trainer, TrainingCase

__all__ = ["Handle", "PendingDecision", "TradingOrchestrator", "episode_id", "new_model_state"]

log = package_logger("mlflow_persist.trading.orchestrator")


class Handle(Protocol):
    """What the orchestrator needs of a persistence handle (``Persistence.track(...)``)."""

    last_version: int | None
    last_save_time: float | None

    def step(self, **metrics: float) -> Any: ...


@dataclass
class PendingDecision:
    step: int
    position: int
    bar_time: pd.Timestamp
    wall_time: float
    frames: dict[str, pd.DataFrame]
    tensors: dict[str, torch.Tensor]
    outputs: dict[str, torch.Tensor]
    action: int
    checkpoint_versions: dict[str, int | None]
    checkpoint_steps: dict[str, int | None]
    market: dict[str, Any]


def episode_id(seed: int, step: int) -> str:
    """The id of the episode of decision ``step``: the same in every run of the same seed, so bars processed
    again after a restart replace their earlier records instead of adding to them."""
    return f"s{int(seed)}-{int(step):012d}"


def new_model_state(steps: int = 0, version: int | None = None, best: float | None = None) -> dict[str, Any]:
    return {
        "current_loss": None,
        "best_loss": best,
        "accuracy": None,
        "last_checkpoint_version": version,
        "last_save_time": None,
        "last_save_category": None,
        "steps": steps,
    }


class TradingOrchestrator:
    """Decides on every bar with the serving (registered) weights and trains the live models on matured decisions."""

    def __init__(
        self,
        market: MarketData,
        trainers: Mapping[str, Trainer],
        seed: int,
        handles: Mapping[str, Handle] | None = None,
        recorder: EpisodeRecorder | None = None,
        restored: Mapping[str, tuple[int | None, int | None]] | None = None,
        first_step: int = 0,
        model_seed: int | None = None,
        clock: Callable[[], float] = time.time,
        on_trained: Callable[[str, dict[str, float]], None] | None = None,
    ) -> None:
        self.market = market
        self.trainers = dict(trainers)
        self.seed = int(seed)
        self.model_seed = self.seed if model_seed is None else model_seed
        self.handles = dict(handles or {})
        self.recorder = recorder
        self.clock = clock
        self.on_trained = on_trained
        restored = restored or {}
        self.serving = {
            name: ServingModel(name, trainer.model, *restored.get(name, (None, None)))
            for name, trainer in self.trainers.items()
        }
        self.model_states: dict[str, dict[str, Any]] = {
            name: new_model_state(restored.get(name, (None, None))[1] or 0, restored.get(name, (None, None))[0])
            for name in self.trainers
        }
        self.step_index = first_step
        self.pending: deque[PendingDecision] = deque()
        self._states_by_position: dict[int, torch.Tensor] = {}
        self.last_action: int | None = None

    # ---------------------------------------------------------------------------------- deciding

    def serving_modules(self) -> dict[str, torch.nn.Module]:
        return {name: serving.module for name, serving in self.serving.items()}

    def on_bar(self, position: int) -> PendingDecision:
        """Decide at bar ``position``; then train on every decision whose outcome is now known."""
        decision = self._decide(position)
        self.pending.append(decision)
        while self.pending and decision.step - self.pending[0].step >= HORIZON:
            self._train_models_on_decision(self.pending.popleft())
        return decision

    def _decide(self, position: int) -> PendingDecision:
        dqn = self.trainers.get("dqn")
        epsilon = float(getattr(dqn, "epsilon", 0.0))
        draws = Draws.generate(self.seed, self.step_index, epsilon)
        frames = self.market.frames(position, draws)
        tensors = features_from_frames(frames)
        action, outputs = decide(self.serving_modules(), tensors)
        self._states_by_position[position] = tensors["dqn.state"]
        decision = PendingDecision(
            step=self.step_index,
            position=position,
            bar_time=frames["bars"].index[-1],
            wall_time=self.clock(),
            frames=frames,
            tensors=tensors,
            outputs=outputs,
            action=action,
            checkpoint_versions={name: s.version for name, s in self.serving.items()},
            checkpoint_steps={name: s.step for name, s in self.serving.items()},
            market=self.market.conditions(position, frames["cob"]),
        )
        self.step_index += 1
        self.last_action = action
        return decision

    # ---------------------------------------------------------------------------------- training

    def _next_state(self, position: int) -> torch.Tensor:
        later = position + HORIZON
        cached = self._states_by_position.get(later)
        if cached is not None:
            return cached
        return dqn_state(self.market.window(later))

    def _train_models_on_decision(self, decision: PendingDecision) -> dict[str, dict[str, float]]:
        """Train each model on a decision whose outcome is known, report metrics, update ``model_states``."""
        outcome = self.market.outcome(decision.position, decision.frames["cob"])
        case = TrainingCase(
            tensors=decision.tensors,
            outputs=decision.outputs,
            action=decision.action,
            outcome=outcome,
            next_tensors={"dqn.state": self._next_state(decision.position)},
        )
        self._states_by_position.pop(decision.position, None)
        results: dict[str, dict[str, float]] = {}
        for name, trainer in self.trainers.items():
            metrics = trainer.train(case)
            results[name] = metrics
            self._report(name, trainer, metrics)
            if self.on_trained is not None:
                self.on_trained(name, metrics)
        if self.recorder is not None:
            self._record(decision, outcome, results)
        return results

    def _report(self, name: str, trainer: Trainer, metrics: dict[str, float]) -> None:
        state = self.model_states[name]
        state["steps"] += 1
        state["current_loss"] = metrics["loss"]
        if "accuracy" in metrics:
            state["accuracy"] = metrics["accuracy"]
        handle = self.handles.get(name)
        if handle is None:
            best = state["best_loss"]
            if math.isfinite(metrics["loss"]) and (best is None or metrics["loss"] < best):
                state["best_loss"] = metrics["loss"]
            return
        decision = handle.step(**metrics)
        step = int(getattr(handle, "current_step", state["steps"]))
        state["steps"] = step
        best_value = getattr(handle, "best_value", None)
        if best_value is not None:
            state["best_loss"] = best_value
        elif math.isfinite(metrics["loss"]) and (state["best_loss"] is None or metrics["loss"] < state["best_loss"]):
            state["best_loss"] = metrics["loss"]
        if getattr(decision, "save", False):
            state["last_save_category"] = getattr(decision, "category", None)
        self.refresh_saves(name)

    def refresh_saves(self, name: str) -> None:
        """Pick up a newly registered version of ``name`` for ``model_states`` (display only: the serving
        weights switch at fixed bars, see serving.py)."""
        handle = self.handles.get(name)
        if handle is None:
            return
        state = self.model_states[name]
        version = handle.last_version
        state["last_save_time"] = handle.last_save_time
        if version is not None and version != state["last_checkpoint_version"]:
            state["last_checkpoint_version"] = version

    # ---------------------------------------------------------------------------------- system checkpoints

    def state_dict(self) -> dict[str, Any]:
        """The position in the bar stream, the decisions not matured yet and the serving weights. A pending
        decision keeps what cannot be recomputed (its outputs came from the serving weights of its time);
        its frames and tensors are rebuilt from its position and draws at load."""
        return {
            "step_index": self.step_index,
            "last_action": self.last_action,
            "pending": [
                {
                    "step": d.step,
                    "position": d.position,
                    "wall_time": d.wall_time,
                    "action": d.action,
                    "epsilon": float(d.frames["draws"]["epsilon"].iloc[0]),
                    "outputs": {k: v.detach().clone() for k, v in d.outputs.items()},
                    "checkpoint_versions": dict(d.checkpoint_versions),
                    "checkpoint_steps": dict(d.checkpoint_steps),
                }
                for d in self.pending
            ],
            "serving": {name: serving.state_dict() for name, serving in self.serving.items()},
            "model_states": {
                name: {k: v for k, v in state.items() if isinstance(v, (int, float, str, type(None)))}
                for name, state in self.model_states.items()
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_index = int(state["step_index"])
        self.last_action = state["last_action"]
        self.pending = deque(self._rebuild(saved) for saved in state["pending"])
        self._states_by_position = {d.position: d.tensors["dqn.state"] for d in self.pending}
        for name, saved in state["serving"].items():
            self.serving[name].load_state_dict(saved)
        for name, saved in state.get("model_states", {}).items():
            self.model_states.setdefault(name, new_model_state()).update(saved)

    def _rebuild(self, saved: dict[str, Any]) -> PendingDecision:
        frames = self.market.frames(
            int(saved["position"]), Draws.generate(self.seed, int(saved["step"]), float(saved["epsilon"]))
        )
        return PendingDecision(
            step=int(saved["step"]),
            position=int(saved["position"]),
            bar_time=frames["bars"].index[-1],
            wall_time=float(saved["wall_time"]),
            frames=frames,
            tensors=features_from_frames(frames),
            outputs=dict(saved["outputs"]),
            action=int(saved["action"]),
            checkpoint_versions=dict(saved["checkpoint_versions"]),
            checkpoint_steps=dict(saved["checkpoint_steps"]),
            market=self.market.conditions(int(saved["position"]), frames["cob"]),
        )

    def _record(self, decision: PendingDecision, outcome: Any, results: dict[str, dict[str, float]]) -> None:
        cob_action = int(decision.outputs["cob_rl.action"].item())
        reward = trade_reward(decision.action, outcome)
        decided = {f.name: getattr(decision, f.name) for f in fields(decision)}  # shallow: no frame copies
        episode = TradingEpisode(
            episode_id=episode_id(self.seed, decision.step),
            reward=reward,
            rng={
                "seed": self.seed,
                "step": decision.step,
                "draws": "numpy.random.default_rng([seed, step, 0xD1CE]): random(), integers(0, 3), random()",
                "cob_seed": self.market.seed,
                "cob_rng": "numpy.random.default_rng([cob_seed, position])",
                "model_seed": self.model_seed,
            },
            rewards={"dqn": reward, "cob_rl": trade_reward(cob_action, outcome)},
            **decided,
        )
        self.recorder.record(episode)  # type: ignore[union-attr]
