"""`run_trading`: the reference trading system training continuously with persistence (the `run` command)."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

from mlflow_persist._observe.logs import package_logger
from mlflow_persist.config import PersistConfig
from mlflow_persist.errors import ConfigError

from .episode import EpisodeRecorder
from .progress import ProgressView

__all__ = [
    "DEFAULT_PERIODIC_EVERY_STEPS",
    "MODEL_MONITORS",
    "MONITOR_SMOOTHING",
    "StopSignals",
    "cut_schedule",
    "run_trading",
    "with_trading_defaults",
]

log = package_logger("mlflow_persist.trading")

#: System checkpoint (cut) interval used when the configuration sets neither steps nor minutes.
DEFAULT_PERIODIC_EVERY_STEPS = 100
#: The trading models' monitors: each trainer's held-out score, smoothed (settings a config may override
#: under [models.<name>]).
MODEL_MONITORS: dict[str, dict[str, Any]] = {
    "dqn": {"monitor": "mean_reward", "mode": "max"},
    "cob_rl": {"monitor": "mean_reward", "mode": "max"},
    "cnn": {"monitor": "heldout_loss", "mode": "min"},
    "extrema": {"monitor": "heldout_loss", "mode": "min"},
}
MONITOR_SMOOTHING: dict[str, Any] = {"monitor_smoothing": "ema", "monitor_ema_alpha": 0.2}


class StopSignals:
    """Turn SIGINT/SIGTERM into a stop request at the next bar; a second signal stops at once."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.stop.is_set():
            raise SystemExit(128 + signum)  # asked twice: unwind now (the `with Persistence` still closes)
        self.received = signum
        log.warning("received %s: stopping after this bar; final checkpoints follow", signal.Signals(signum).name)
        self.stop.set()

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()


def cut_schedule(config: PersistConfig) -> tuple[int | None, float | None]:
    """Bars and minutes between the system checkpoints: the configured periodic interval (default every
    DEFAULT_PERIODIC_EVERY_STEPS bars)."""
    if config.periodic_every_steps is None and config.periodic_every_minutes is None:
        return DEFAULT_PERIODIC_EVERY_STEPS, None
    return config.periodic_every_steps, config.periodic_every_minutes


def with_trading_defaults(config: PersistConfig) -> PersistConfig:
    """The config the trading models are tracked with: periodic saves are the system's cuts (so no model
    saves periodically on its own), and each model's monitor is its trainer's held-out score, smoothed,
    unless `[models.<name>]` says otherwise."""
    models = {name: dict(overrides) for name, overrides in config.models.items()}
    for name, monitor in MODEL_MONITORS.items():
        smoothing = {} if "monitor_smoothing" in config.model_fields_set else MONITOR_SMOOTHING
        models[name] = {**monitor, **smoothing, **models.get(name, {})}
        models[name].update(periodic_every_steps=None, periodic_every_minutes=None)
    return config.model_copy(update={"periodic_every_steps": None, "periodic_every_minutes": None, "models": models})


def _step_hook(recorder: Any, view: ProgressView | None) -> Callable[[Any], None] | None:
    """What runs after each bar: the recorder's ``after_bar`` (it fingerprints newly serving weights), then the view."""
    after_bar = getattr(recorder, "after_bar", None)
    if not callable(after_bar) and view is None:
        return None

    def on_step(decision: Any) -> None:
        if callable(after_bar):
            after_bar()
        if view is not None:
            view.update(decision)

    return on_step


def run_trading(
    config: PersistConfig,
    steps: int | None,
    minutes: float | None,
    seed: int,
    progress: bool = True,
    speed: float = 0.0,
    recorder_factory: Callable[[Any], EpisodeRecorder | None] | None = None,
    persistence_factory: Callable[[PersistConfig], Any] | None = None,
    until_step: int | None = None,
) -> int:
    """Train the four models on the replayed EURUSD stream until ``steps``/``minutes``, the total bar count
    ``until_step`` (counted across restarts) or a signal; returns 0.

    The system restores its newest complete system checkpoint first and the core saves a final one on exit.
    """
    if steps is not None and steps < 0:
        raise ConfigError(f"--steps must be 0 or more, got {steps}.")
    if until_step is not None and until_step < 0:
        raise ConfigError(f"--until-step must be 0 or more, got {until_step}.")
    if minutes is not None and minutes <= 0:
        raise ConfigError(f"--minutes must be more than 0, got {minutes}.")
    import torch

    from mlflow_persist import Persistence

    from .system import EnhancedRealtimeTrainingSystem

    torch.set_num_threads(1)  # small models: one thread each for training and the writer beats oversubscription
    cut_every_steps, cut_every_minutes = cut_schedule(config)
    config = with_trading_defaults(config)
    stop = threading.Event()
    make_persistence = persistence_factory or (lambda cfg: Persistence(cfg))
    started = time.monotonic()
    # Our handlers go in after Persistence's own, so a signal stops the loop at the next bar boundary.
    with make_persistence(config) as persistence, StopSignals(stop) as signals:
        recorder = recorder_factory(persistence) if recorder_factory is not None else None
        durable = getattr(recorder, "stored_marker", None)
        system = EnhancedRealtimeTrainingSystem(
            persistence,
            seed=seed,
            speed=speed,
            recorder=recorder,
            cut_every_steps=cut_every_steps,
            cut_every_minutes=cut_every_minutes,
            durable=durable if callable(durable) else None,
        )
        try:
            try:
                system.start()
            except BaseException:
                # A restore that failed half-way leaves the objects in no state worth a final checkpoint.
                persistence.close(final_checkpoints=False)
                raise
            attach = getattr(recorder, "attach", None)
            if callable(attach) and system.orchestrator is not None:
                attach(system.orchestrator.serving)
            if not stop.is_set():
                view = ProgressView(system, until_step if until_step is not None else steps) if progress else None
                on_step = _step_hook(recorder, view)
                if view is not None:
                    with view:
                        system.run(steps=steps, minutes=minutes, stop=stop, on_step=on_step, until_step=until_step)
                else:
                    system.run(steps=steps, minutes=minutes, stop=stop, on_step=on_step, until_step=until_step)
        finally:
            close = getattr(recorder, "close", None)
            if callable(close):
                close()
        elapsed = time.monotonic() - started
        log.info(
            "trained %d steps in %.1fs (%.1f steps/s; %d in all)%s; saving final checkpoints",
            system.steps_this_run,
            elapsed,
            system.steps_this_run / elapsed if elapsed > 0 else 0.0,
            system.steps_done,
            f" after {signal.Signals(signals.received).name}" if signals.received else "",
        )
    return 0
