"""EnhancedRealtimeTrainingSystem: the four models training continuously on the bar stream, with persistence.

On start it tracks every model, plus the system's own state, and restores the newest complete system
checkpoint (a cut, see ``Persistence.restore_all``): weights, optimizers, the DQN agent's epsilon, counters
and target network, and the system state (``SystemState``: the bar position, the decisions not matured
yet, every trainer's replay buffer, RNG stream and windows, the serving weights, the episode scores). The
bar stream then continues with the bar after the cut, and the run goes on exactly as one never interrupted.

Each bar is one decision. Every ``cut_every_steps`` bars the system takes a cut; SERVING_LAG bars later the
serving weights switch to that cut's weights (serving.py). Every ``episode_length`` bars an episode ends: its
score per model is logged, and a model whose episode score improved gets an ``episode`` checkpoint.
Performance checkpoints are the core's: per model, on the smoothed held-out score its trainer evaluates.
On shutdown the core's ``Persistence.close()`` takes the final cut.

Longer than 400 lines: one class, the wiring of the four trainers around one bar loop; split, the loop's order
would be spread over several files.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from mlflow_persist._observe.logs import package_logger

from .data import BarStream
from .episode import EpisodeRecorder
from .market import MarketData
from .models import MODEL_NAMES, build_model
from .orchestrator import PendingDecision, TradingOrchestrator
from .serving import SERVING_LAG, Candidate, weights_of
from .trainers import Trainer, build_trainers

__all__ = [
    "EPISODE_SCORES",
    "EVALUATE_EVERY_STEPS",
    "OUTBOX_WAIT_SECONDS",
    "SERVING_WAIT_SECONDS",
    "SYSTEM_STATE",
    "EnhancedRealtimeTrainingSystem",
    "EpisodeEvaluation",
    "Promotion",
    "SystemState",
]

log = package_logger("mlflow_persist.trading.system")

#: Per model, the metric an episode is evaluated on and whether higher is better.
EPISODE_SCORES: dict[str, tuple[str, bool]] = {
    "dqn": ("reward", True),
    "cnn": ("online_loss", False),
    "cob_rl": ("reward", True),
    "extrema": ("online_loss", False),
}
#: The name the system's own state is tracked under (a member of every cut).
SYSTEM_STATE = "system"
#: Steps between two evaluations of a model's held-out score (its monitor).
EVALUATE_EVERY_STEPS = 10
#: How long the serving switch waits for a cut's registration before it keeps the old weights.
SERVING_WAIT_SECONDS = 300.0
#: Behind an outbox (a tracking server), how long it waits for the registration after the write.
OUTBOX_WAIT_SECONDS = 30.0


@dataclass
class Promotion:
    """A pending switch of the serving weights: at bar `at`, to the weights of the cut taken LAG bars before.
    `candidates` is empty while that cut's own snapshot is taken (its state then restores the weights from
    the cut itself)."""

    at: int
    candidates: dict[str, Candidate] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return {
            "at": self.at,
            "candidates": {
                name: {"step": c.step, "weights": c.weights, "version": c.resolve()}
                for name, c in self.candidates.items()
            },
        }


@dataclass
class EpisodeEvaluation:
    index: int
    scores: dict[str, float]
    improved: list[str] = field(default_factory=list)


class SystemState:
    """The system's own part of a cut (``state_dict``/``load_state_dict`` for ``Persistence.track_state``)."""

    def __init__(self, system: EnhancedRealtimeTrainingSystem) -> None:
        self.system = system

    def state_dict(self) -> dict[str, Any]:
        system = self.system
        assert system.orchestrator is not None
        return {
            "seed": system.seed,
            "steps_done": system.steps_done,
            "episodes": len(system.episodes),
            "best_scores": dict(system._best_scores),
            "episode_metrics": {name: list(values) for name, values in system._episode_metrics.items()},
            "promotion": system._promotion.state_dict() if system._promotion is not None else None,
            "orchestrator": system.orchestrator.state_dict(),
            "trainers": {name: trainer.runtime_state() for name, trainer in system.trainers.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        system = self.system
        assert system.orchestrator is not None
        if int(state["seed"]) != system.seed:
            raise ValueError(
                f"the system checkpoint was taken with --seed {state['seed']}, this run uses "
                f"--seed {system.seed}; resume with the same seed"
            )
        system.steps_done = int(state["steps_done"])
        system.episodes = [EpisodeEvaluation(i, {}) for i in range(int(state["episodes"]))]
        system._best_scores = {k: float(v) for k, v in state["best_scores"].items()}
        system._episode_metrics = {k: [float(x) for x in v] for k, v in state["episode_metrics"].items()}
        system._restored_promotion = state["promotion"]
        system.orchestrator.load_state_dict(state["orchestrator"])
        for name, saved in state["trainers"].items():
            system.trainers[name].load_runtime_state(saved)


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
        cut_every_steps: int | None = 100,
        cut_every_minutes: float | None = None,
        durable: Callable[[], Callable[[], bool]] | None = None,
    ) -> None:
        self.persistence = persistence
        self.seed = int(seed)
        self.speed = speed
        self.recorder = recorder
        self.episode_length = episode_length
        self.market = market or MarketData(seed=self.seed)
        self.refresh_every = refresh_every
        self.cut_every_steps = cut_every_steps
        self.cut_every_minutes = cut_every_minutes
        self.durable = durable  # a cut also waits for this (the episodes recorded so far being stored)
        self.models: dict[str, nn.Module] = {}
        self.trainers: dict[str, Trainer] = {}
        self.handles: dict[str, Any] = {}
        self.restored: dict[str, Any] = {}
        self.orchestrator: TradingOrchestrator | None = None
        self.steps_done = 0
        self.steps_this_run = 0
        self.episodes: list[EpisodeEvaluation] = []
        self.cuts_taken: list[str] = []
        self._best_scores: dict[str, float] = {}
        self._episode_metrics: dict[str, list[float]] = {name: [] for name in MODEL_NAMES}
        self._promotion: Promotion | None = None
        self._restored_promotion: dict[str, Any] | None = None
        self._last_cut_time = time.monotonic()
        self.stream: BarStream | None = None

    # ------------------------------------------------------------------------------------ start

    def start(self) -> dict[str, Any]:
        """Build the models, the orchestrator, track everything and restore the newest complete cut."""
        self.models = {name: build_model(name, seed=self.seed) for name in MODEL_NAMES}
        self.trainers = build_trainers(self.models, seed=self.seed)
        self.orchestrator = TradingOrchestrator(
            self.market,
            self.trainers,
            seed=self.seed,
            handles=self.handles,
            recorder=self.recorder,
            model_seed=self.seed,
            on_trained=self._collect,
        )
        if self.persistence is None:
            return self.restored
        for name, trainer in self.trainers.items():
            self.handles[name] = self.persistence.track(
                name,
                trainer.model,
                optimizer=trainer.optimizer,
                extra=trainer.extra,
                evaluate=trainer.evaluate,
                evaluate_every_steps=EVALUATE_EVERY_STEPS,
            )
        self.orchestrator.handles = dict(self.handles)
        self.persistence.track_state(SYSTEM_STATE, SystemState(self), step=lambda: self.steps_done)
        self.restored = self.persistence.restore_all()
        if SYSTEM_STATE in self.restored:
            self._resume_promotion()
            log.info("resumed the system checkpoint %s at bar %d", self.restored[SYSTEM_STATE].cut, self.steps_done)
        else:
            self._start_without_system_state()
        return self.restored

    def _start_without_system_state(self) -> None:
        """No complete cut holds the system state (first start, or checkpoints from before cuts): the models
        resumed their own newest checkpoints, and the bar stream continues after the furthest of them."""
        orchestrator = self.orchestrator
        assert orchestrator is not None
        for name, info in self.restored.items():
            if name in orchestrator.serving:
                orchestrator.serving[name].module.load_state_dict(self.trainers[name].model.state_dict())
                orchestrator.serving[name].version, orchestrator.serving[name].step = info.version, info.step
                orchestrator.model_states[name].update(steps=info.step, last_checkpoint_version=info.version)
                log.info("%s: restored v%s (%s, step %d)", name, info.version, info.category, info.step)
        orchestrator.step_index = max((getattr(h, "current_step", 0) for h in self.handles.values()), default=0)
        self.steps_done = orchestrator.step_index

    def _resume_promotion(self) -> None:
        """A serving switch that was pending at the restored cut still happens at its bar: to the weights the
        state saved, or, when the restored cut is the switch's own cut, to the restored weights."""
        saved = self._restored_promotion
        if saved is None:
            return
        candidates = {}
        if saved["candidates"]:
            for name, c in saved["candidates"].items():
                candidates[name] = Candidate(int(c["step"]), dict(c["weights"]), lambda v=c["version"]: v)  # type: ignore[misc]
        else:
            for name, trainer in self.trainers.items():
                info = self.restored.get(name)
                if info is not None and info.cut == self.restored[SYSTEM_STATE].cut:
                    candidates[name] = Candidate(info.step, weights_of(trainer.model), lambda v=info.version: v)  # type: ignore[misc]
        self._promotion = Promotion(int(saved["at"]), candidates)

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
        until_step: int | None = None,
    ) -> int:
        """Train until ``steps`` bars (or the total bar count ``until_step``, across restarts), ``minutes`` of
        wall time or ``stop`` is set; returns the bars processed."""
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
            sleep=stop.wait,  # type: ignore[arg-type]
        )
        done = 0
        while not stop.is_set():
            if steps is not None and done >= steps:
                break
            if until_step is not None and self.steps_done >= until_step:
                break
            if deadline is not None and clock() >= deadline:
                break
            position = next(self.stream)
            if stop.is_set():
                break
            decision = orchestrator.on_bar(position)
            done += 1
            self.steps_done += 1
            self.steps_this_run += 1
            self._after_bar()
            if on_step is not None:
                on_step(decision)
        return done

    def _after_bar(self) -> None:
        """Everything that follows a bar, in a fixed order, so a cut holds the state after all of it."""
        orchestrator = self.orchestrator
        assert orchestrator is not None
        if self.steps_done % self.refresh_every == 0:
            for name in self.handles:
                orchestrator.refresh_saves(name)
        if self._promotion is not None and self.steps_done >= self._promotion.at:
            self._promote()
        if self.steps_done % self.episode_length == 0:
            self.complete_episode()
        if self.persistence is None:
            return
        if self.cut_every_steps and self.steps_done % self.cut_every_steps == 0:
            self.take_cut(serve=True)
        elif (
            self.cut_every_minutes
            and self._promotion is None
            and time.monotonic() - self._last_cut_time >= self.cut_every_minutes * 60
        ):
            # Wall-time cuts save; they never switch serving (that is bar-driven), and wait for a pending switch
            # to pass: a cut that restores a pending switch must hold the weights of that switch.
            self.take_cut(serve=False)

    def take_cut(self, serve: bool) -> str:
        """A periodic system checkpoint of every model and the system state; with `serve`, its weights
        start serving SERVING_LAG bars from now."""
        wait_for = [self.durable()] if self.durable is not None else []
        if serve:
            self._promotion = Promotion(self.steps_done + SERVING_LAG)  # its own cut: no candidates in the state
        # A serving cut is never skipped for a busy writer (its weights decide every later bar, so a skip would
        # make the run depend on timing); it waits as long as the switch itself waits for the registration.
        submit_wait = SERVING_WAIT_SECONDS if serve else -1.0
        cut_id = self.persistence.save_all("periodic", wait_for=wait_for, submit_wait=submit_wait)  # type: ignore[union-attr]
        self._last_cut_time = time.monotonic()
        self.cuts_taken.append(cut_id)
        if serve and self._promotion is not None:
            self._promotion.candidates = {
                name: Candidate(
                    int(handle.current_step), weights_of(self.trainers[name].model), self._version_of(name, cut_id)
                )
                for name, handle in self.handles.items()
            }
        return cut_id

    def _version_of(self, name: str, cut_id: str) -> Callable[[], int | None]:
        """Resolves the version `name` registered for `cut_id`: waits for its save when it is still running."""

        def resolve() -> int | None:
            cut = self.persistence.cut(cut_id)  # type: ignore[union-attr]
            job = cut.jobs.get(name) if cut is not None else None
            if job is None:
                match = [v for v in self.handles[name].history(limit=50) if v.cut == cut_id]
                return match[-1].version if match else None
            if not job.done.wait(SERVING_WAIT_SECONDS):
                log.error(
                    "%s: the cut %s was not written within %.0f s; the serving weights stay as they are",
                    name,
                    cut_id,
                    SERVING_WAIT_SECONDS,
                )
                return None
            if job.outcome != "saved":
                return None
            version = getattr(job.result, "version", None)
            if version is None and cut.done.wait(OUTBOX_WAIT_SECONDS):  # behind an outbox: registered at the drain
                version = getattr(cut.versions.get(name), "version", None)
            return int(version) if version is not None else None

        return resolve

    def _promote(self) -> None:
        assert self.orchestrator is not None and self._promotion is not None
        candidates = self._promotion.candidates
        self._promotion = None
        for name, candidate in candidates.items():
            serving = self.orchestrator.serving[name]
            if serving.promote(candidate):
                log.debug("%s: decisions now use version %s (step %s)", name, serving.version, serving.step)
            else:
                log.warning(
                    "%s: the cut's checkpoint was not registered; decisions keep using version %s",
                    name,
                    serving.version,
                )

    # ------------------------------------------------------------------------------------ episodes

    def complete_episode(self) -> EpisodeEvaluation:
        """Score the finished episode per model; a model whose episode score improved gets an `episode` save."""
        evaluation = EpisodeEvaluation(index=len(self.episodes), scores={})
        for name, values in self._episode_metrics.items():
            if not values:
                continue
            key, higher_is_better = EPISODE_SCORES[name]
            score = math.fsum(values) / len(values)
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
                handle.save("episode", value=score, monitor=f"episode/{key}")
                log.info(
                    "%s: episode %d improved episode/%s from %.6g to %.6g; saved an episode checkpoint",
                    name,
                    evaluation.index,
                    key,
                    best,
                    score,
                )
        self.episodes.append(evaluation)
        return evaluation

    def _log_episode(self, handle: Any, key: str, score: float, index: int) -> None:
        """Buffered like every other metric of the model (a synchronous MLflow call here cost the training
        loop about 24 ms per episode)."""
        handle.metrics.add(handle.current_step, {f"episode/{key}": score, "episode/index": float(index)})

    @property
    def model_states(self) -> dict[str, dict[str, Any]]:
        return self.orchestrator.model_states if self.orchestrator is not None else {}
