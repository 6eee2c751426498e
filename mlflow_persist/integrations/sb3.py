"""Stable-Baselines3: `PersistCallback`, a `BaseCallback` that checkpoints `model.policy`, its optimizer(s) and
the algorithm's counters into MLflow, and resumes from the newest checkpoint when `learn()` starts.

    model.learn(total_timesteps=100_000, callback=PersistCallback("cartpole-dqn", config))

- Step axis: `model.num_timesteps`. A checkpoint of step N holds all of step N: SB3 calls `on_step` after
  counting the env step and before recording it (replay buffer, `_last_obs`, DQN's `_n_calls`, the
  schedules), so each `on_step` reports the step before, and the end of `learn()` reports the last one. A restarted `learn(total_timesteps=T)` continues from the restored
  timestep and ends at T, not at restored + T (pass the same T after every restart). SB3 ends `learn()` only
  at the end of a rollout, and a restore between two updates starts a fresh one, so an off-policy run may
  end up to `train_freq - 1` steps past T.
- Monitor: any key of SB3's logger (`train/loss`, `rollout/exploration_rate`, ...), reported at the step
  it was recorded; `rollout/ep_rew_mean`, `rollout/ep_len_mean` and `rollout/success_rate` are computed at
  each episode end as SB3 does (from `model.ep_info_buffer`), since SB3 records them only right before it
  clears the logger.
- A monitor SB3 has not recorded by the step after its first training update fails `learn()` with
  `ConfigError` naming the recorded keys; `monitor=None` takes periodic and final checkpoints only.
- A `VecNormalize` wrapper's running statistics (observations, returns) are kept with every checkpoint, as
  SB3's own `VecNormalize.save` keeps them, so a resumed agent scales its inputs as before.
- `save_replay_buffer=True` (off-policy algorithms) also keeps the filled part of the replay buffer (copied
  at every save); without it a restart resumes with an empty buffer. With `replay_buffer_every_steps=N` a
  checkpoint holds it only when N env steps passed since the last one that did (final ones always do); a
  restore of one without it loads the buffer of the newest older version that holds it (retention keeps
  that version) and warns how many env steps of transitions that buffer lacks.
- A SIGTERM/SIGINT stops `learn()` at the next env step (SB3's own stop: `_on_step` returns False), takes
  the final checkpoints and then exits (`GracefulExit`).
- Under `torch.distributed` only rank 0 touches the store (`mlflow_persist.integrations.distributed`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.save_util import recursive_getattr
from stable_baselines3.common.utils import safe_mean
from stable_baselines3.common.vec_env import sync_envs_normalization

from mlflow_persist._observe.logs import package_logger
from mlflow_persist._policy.policy import SaveDecision
from mlflow_persist._policy.versions import VersionInfo
from mlflow_persist._runtime.handle import ModelHandle, RestoreInfo
from mlflow_persist._runtime.process_effects import GracefulExit
from mlflow_persist._store.protocol import CheckpointStore
from mlflow_persist.config import PersistConfig
from mlflow_persist.errors import CheckpointCorruptError, ConfigError
from mlflow_persist.integrations.common import close_persistence, numeric_metrics, one_or_list, open_persistence
from mlflow_persist.integrations.distributed import DistributedHandle, DistributedPersistence, broadcast_state
from mlflow_persist.integrations.ranks import agree
from mlflow_persist.integrations.sb3_monitor import MonitorCheck
from mlflow_persist.integrations.sb3_state import (
    COUNTERS,
    REPLAY_ARRAYS,
    AlgorithmState,
    BufferMark,
    ReplayBufferState,
    VecNormalizeState,
)

__all__ = [
    "COUNTERS",
    "EPISODE_MEANS",
    "EVAL_MONITOR",
    "REPLAY_ARRAYS",
    "SUCCESS_RATE",
    "AlgorithmState",
    "PersistCallback",
    "ReplayBufferState",
    "VecNormalizeState",
]

log = package_logger("mlflow_persist.integrations.sb3")

# SB3 records these in `_dump_logs` right before `logger.dump()` clears them, so `_on_step` never sees them.
EPISODE_MEANS = {"rollout/ep_rew_mean": "r", "rollout/ep_len_mean": "l"}
SUCCESS_RATE = "rollout/success_rate"
EVAL_MONITOR = "eval/mean_reward"  # SB3's EvalCallback logs its evaluation under this key


class PersistCallback(BaseCallback):
    """Checkpoints `model.policy`, its optimizer(s) and the algorithm's counters (`AlgorithmState`) at every
    env step where the monitor improved or a periodic save is due; restores the newest checkpoint when
    `learn()` starts and takes `final` checkpoints when it ends.

    With `eval_env`, `best` follows an evaluation, as SB3's own `EvalCallback` does: every `eval_freq` env
    steps the policy plays `n_eval_episodes` episodes there (`evaluate_policy`, after syncing a `VecNormalize`'s
    statistics) and their mean reward is the monitor, which must then be `EVAL_MONITOR` with mode `max`.

    `replay_buffer_every_steps` (with `save_replay_buffer=True`): a checkpoint holds the replay buffer only
    when at least that many env steps passed since the last checkpoint that held it; `final` checkpoints
    always do. None or 0: every checkpoint holds it.

    `store` and `persistence_kwargs` go to the `Persistence` (a test's MemoryStore, alert sinks,
    `install_signal_handlers`). One callback may serve several `learn()` calls: each one resumes from the
    checkpoint the previous one closed with.
    """

    def __init__(
        self,
        name: str,
        config: PersistConfig | None = None,
        *,
        eval_env: Any = None,
        eval_freq: int = 10_000,
        n_eval_episodes: int = 5,
        deterministic: bool = True,
        save_replay_buffer: bool = False,
        replay_buffer_every_steps: int | None = None,
        store: CheckpointStore | None = None,
        persistence_kwargs: Mapping[str, Any] | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose=verbose)
        self.name = name
        self.config = config
        if replay_buffer_every_steps is not None and replay_buffer_every_steps < 0:
            raise ConfigError(
                f"{name}: replay_buffer_every_steps={replay_buffer_every_steps} must be 0 or more (None or 0: the "
                "replay buffer in every checkpoint)."
            )
        if replay_buffer_every_steps and not save_replay_buffer:
            raise ConfigError(
                f"{name}: replay_buffer_every_steps={replay_buffer_every_steps} paces the saved replay buffer; "
                "pass save_replay_buffer=True as well."
            )
        self.save_replay_buffer = save_replay_buffer
        self.replay_buffer_every_steps = replay_buffer_every_steps
        self.eval_env = eval_env
        self.eval_freq = eval_freq
        self.n_eval_episodes = n_eval_episodes
        self.deterministic = deterministic
        self.store = store
        self.persistence_kwargs = dict(persistence_kwargs or {})
        self.persistence: DistributedPersistence | None = None
        self.handle: DistributedHandle | None = None
        self.state: AlgorithmState | None = None
        self.restored: RestoreInfo | None = None
        self._reported: dict[str, Any] = {}  # the logger's value objects already reported
        self._newest_episode: Any = None  # the newest ep_info_buffer entry already in the episode means
        self._stop: GracefulExit | None = None
        self._monitor_check = MonitorCheck(None)
        # Env steps already counted in num_timesteps that SB3 has not recorded yet, at the current report:
        # n_envs inside on_step, 0 at the end of learn().
        self.counted_ahead = 0

    # ------------------------------------------------------------------------------------- SB3 hooks

    def _on_training_start(self) -> None:
        """Runs after `learn()`'s `_setup_learn` reset the counters: put the checkpoint's back."""
        self.close()  # a previous learn() with this callback: its final checkpoint is what resumes now
        self._stop = None
        self.state = AlgorithmState(self.model, self.save_replay_buffer, self.replay_buffer_every_steps)
        # SB3's own save() list: `policy.optimizer`, or the actor's and critic's (and SAC's entropy) optimizers.
        optimizer_names = [n for n in self.model._get_torch_save_params()[0] if n != "policy"]
        optimizers = [recursive_getattr(self.model, n) for n in optimizer_names]
        evaluation = self._evaluation()
        self.persistence = open_persistence(self.config, self.store, self.persistence_kwargs)
        self.handle = self.persistence.track(
            self.name, self.model.policy, one_or_list(optimizers), extra=self.state, **evaluation
        )
        self._keep_the_replay_buffer()
        try:
            self.state.restoring = True
            try:
                self.restored = self.handle.restore()
            finally:
                self.state.restoring = False
            self._restore_replay_buffer()
        except Exception:
            # A final checkpoint of this unrestored model would become the newest and lose the progress.
            self.close(final_checkpoints=False)
            raise
        if self.restored is not None:
            self.model._num_timesteps_at_start = self.model.num_timesteps  # SB3's fps counts from here
            self.num_timesteps = self.model.num_timesteps
            if self.verbose:
                print(
                    f"{self.name}: resumed at timestep {self.model.num_timesteps} from checkpoint "
                    f"v{self.restored.version} ({self.restored.category})"
                )
        self._reported = dict(self.logger.name_to_value)
        known = frozenset({*EPISODE_MEANS, SUCCESS_RATE, *([EVAL_MONITOR] if self.eval_env is not None else [])})
        self._monitor_check = MonitorCheck((self.config or PersistConfig()).for_model(self.name).monitor, known)
        self._monitor_check.seen.update(numeric_metrics(self._reported))
        episodes = self.model.ep_info_buffer
        self._newest_episode = episodes[-1] if episodes else None
        self.state.after_step()

    def _on_step(self) -> bool:
        self.counted_ahead = self.model.n_envs
        metrics = self.fresh_metrics()
        try:
            self.persist_step(**metrics)
        except GracefulExit as stop:  # a SIGTERM/SIGINT reached this step boundary: end learn() here
            self._stop = stop
            return False  # the final checkpoint holds the step before this one, as the kept state does
        if self._monitor_check.unknown_after(metrics):
            self._fail_unknown_monitor()
        if self.state is not None:
            self.state.after_step()
        return True

    def _on_training_end(self) -> None:
        if self._stop is None:  # learn() ran to its end: SB3 recorded the last step, which is reported now
            self.counted_ahead = 0
            if self.handle is not None and self.persistence is not None:
                try:
                    self.persist_step(**self.fresh_metrics())
                except GracefulExit as last_step_stop:
                    self._stop = last_step_stop
        # else on_step stopped learn(): SB3 never records the step it had counted, so the final checkpoint holds
        # the state after the one before, as that step
        self._close_at_the_reported_step()
        stop, self._stop = self._stop, None
        if stop is not None:
            raise stop

    def _close_at_the_reported_step(self) -> None:
        """`close()`, its final checkpoints holding the algorithm as the step last reported (`counted_ahead`)."""
        if self.state is not None:
            self.state.counted_ahead = self.counted_ahead
        try:
            self.close()
        finally:
            if self.state is not None:
                self.state.counted_ahead = 0

    def _fail_unknown_monitor(self) -> None:
        """A monitor SB3 has not recorded by its first training update fails `learn()` at once (sb3_monitor.py),
        after the final checkpoint of the step just reported, as a SIGTERM would take it."""
        self._close_at_the_reported_step()
        raise ConfigError(
            f"{self.name}: the monitor {self._monitor_check.monitor!r} is not among the metrics SB3 records "
            f"({', '.join(self._monitor_check.logged())}); set `monitor` in the PersistConfig to one of those, or "
            "to None for periodic and final checkpoints only."
        )

    def _evaluation(self) -> dict[str, Any]:
        """`track()`'s evaluation arguments for `eval_env` (none without it)."""
        if self.eval_env is None:
            return {}
        settings = (self.config or PersistConfig()).for_model(self.name)
        if settings.monitor != EVAL_MONITOR or settings.mode != "max":
            raise ConfigError(
                f"{self.name}: with eval_env the monitor is the evaluation's mean reward; set "
                f"monitor={EVAL_MONITOR!r} and mode='max' in the PersistConfig (it has {settings.monitor!r}, "
                f"{settings.mode!r})."
            )
        n_envs = self.model.n_envs
        if self.eval_freq <= 0 or self.eval_freq % n_envs:
            raise ConfigError(
                f"{self.name}: eval_freq={self.eval_freq} must be a positive multiple of the {n_envs} training envs "
                "(the step axis advances by that many)."
            )
        return {"evaluate": self._evaluate_policy, "evaluate_every_steps": self.eval_freq}

    def _evaluate_policy(self) -> float:
        """The mean reward of `n_eval_episodes` episodes on `eval_env` (SB3's `EvalCallback` evaluation); NaN
        (nothing evaluated) at step 0, before the first env step was recorded."""
        if self.model.num_timesteps - self.counted_ahead <= 0:
            return float("nan")
        if self.model.get_vec_normalize_env() is not None:
            sync_envs_normalization(self.training_env, self.eval_env)
        mean_reward, _ = evaluate_policy(
            self.model, self.eval_env, n_eval_episodes=self.n_eval_episodes, deterministic=self.deterministic
        )
        return float(np.mean(mean_reward))

    # ------------------------------------------------------------------------------------- API

    def persist_step(self, **metrics: float) -> SaveDecision:
        """One step of the handle (subclasses may look at the decision): at every `on_step`, and once more at
        the end of `learn()` for the last step.

        SB3 calls `on_step` once it has counted the env step in `num_timesteps` and before it records it (the
        replay buffer, `_last_obs`, the episode buffers, DQN's `_n_calls`, the schedules). So the algorithm
        holds the state after the previous env step, and is reported and saved as that step
        (`counted_ahead`): a checkpoint of step N holds the state after step N, with `num_timesteps` N."""
        assert self.handle is not None and self.state is not None, "persist_step() runs inside learn()"
        self.state.counted_ahead = self.counted_ahead
        self.state.interval_applies = True  # a save step() decides holds the replay buffer only when due
        try:
            return self.handle.step(step=self.model.num_timesteps - self.counted_ahead, **metrics)
        finally:
            self.state.counted_ahead = 0
            self.state.interval_applies = False

    def fresh_metrics(self) -> dict[str, float]:
        """The logger values recorded since the previous step, and the episode means when an episode ended.

        SB3 keeps a recorded value in `name_to_value` until the next dump; each record is a new object, so
        reporting only new objects logs every record once (not once per env step) and feeds the monitor's
        smoothing each value once."""
        fresh: dict[str, Any] = {}
        for key, value in self.logger.name_to_value.items():
            if self._reported.get(key) is not value:
                fresh[key] = self._reported[key] = value
        episodes = self.model.ep_info_buffer
        if episodes and len(episodes[0]) > 0 and episodes[-1] is not self._newest_episode:
            self._newest_episode = episodes[-1]
            for key, field in EPISODE_MEANS.items():
                fresh[key] = safe_mean([info[field] for info in episodes])
            if self.model.ep_success_buffer:
                fresh[SUCCESS_RATE] = safe_mean(self.model.ep_success_buffer)
        return numeric_metrics(fresh)

    # ------------------------------------------------------------------------------------- replay buffer

    def _keep_the_replay_buffer(self) -> None:
        """With `replay_buffer_every_steps`, retention keeps the newest registered checkpoint holding the replay
        buffer (the ones after it rely on it), through the pipeline's `cut_keep`: asked once per registration,
        right after `last_saved` names the version just registered."""
        schedule = self.state.buffer_schedule if self.state is not None else None
        handle = self.handle.handle if self.handle is not None else None
        if schedule is None or schedule.every is None or not isinstance(handle, ModelHandle):
            return
        pipeline = handle.pipeline
        keep_also = pipeline.cut_keep

        def keep(name: str) -> Collection[int]:
            registered = pipeline.last_saved
            if registered is not None:
                schedule.registered(*registered)
            return {*keep_also(name), *schedule.keep()}

        pipeline.cut_keep = keep

    def _restore_replay_buffer(self) -> None:
        """After the restore: a checkpoint without the replay buffer gets the one it goes with, from the newest
        older version that holds it (rank 0 loads it, every rank takes it), or an empty one when none does;
        either way with a warning, since the transitions after that buffer's step are missing."""
        state = self.state
        assert state is not None and self.handle is not None
        schedule, buffer, restored = state.buffer_schedule, state.replay_buffer, self.restored
        if schedule is None or buffer is None or restored is None:
            return
        rank_zero = self.handle.handle
        outcome: tuple[str, Any] = ("ok", None)
        found: tuple[VersionInfo, Mapping[str, Any]] | None = None
        if rank_zero is not None:  # the other ranks take rank 0's findings (they loaded what it broadcast)
            try:
                if not state.buffer_left_out:  # the checkpoint held the buffer (or was saved without any)
                    outcome = ("ok", ("held", state.loaded_mark, None))
                else:
                    mark = state.buffer_source
                    found = self._find_replay_buffer(rank_zero, mark, restored.version) if mark else None
                    outcome = ("ok", ("older", mark, found[0].version if found is not None else None))
            except Exception as exc:  # noqa: BLE001 - raised on every rank by agree()
                outcome = ("error", exc)
        kind, mark, version = agree(outcome, "load the replay buffer")
        if kind == "held":
            schedule.restored(mark, restored.version)
            return
        saved = broadcast_state(found[1] if found is not None else None) if version is not None else None
        which = f"v{restored.version}" if restored.version is not None else "from the outbox"
        where = f"{self.name}: the checkpoint {which} (step {restored.step}) holds no replay buffer"
        if saved is None or mark is None:
            buffer.clear()
            schedule.restored(None, None)
            log.warning(
                "%s, and no older version holds the one it goes with (%s): training resumes with an empty "
                "replay buffer",
                where,
                "none was saved yet" if mark is None else f"step {mark.step}'s was deleted or is damaged",
            )
            return
        buffer.load_state_dict(saved)
        schedule.restored(mark, version)
        log.warning(
            "%s: loaded the one of v%d (step %d), which lacks the transitions of the %d env steps in between",
            where,
            version,
            mark.step,
            restored.step - mark.step,
        )

    def _find_replay_buffer(
        self, handle: ModelHandle, mark: BufferMark, restored: int | None
    ) -> tuple[VersionInfo, Mapping[str, Any]] | None:
        """The newest version that holds the buffer `mark` names, and that buffer's state. Newest first: it lies
        a few versions below the restored one."""
        seen: set[int] = set()
        for info in handle.pipeline.store.newest_versions(handle.registered_name):
            if info.version in seen or info.version == restored or info.corrupt or info.step != mark.step:
                continue
            seen.add(info.version)
            try:
                extra = handle.load_version(info).extra_state
            except CheckpointCorruptError as exc:
                log.error("%s v%d is damaged (%s); looking further for its replay buffer", self.name, info.version, exc)
                continue
            held = extra.get("replay_buffer_mark") if isinstance(extra, Mapping) else None
            if (
                held is not None
                and extra.get("replay_buffer") is not None
                and mark.matches(BufferMark.from_state(held))
            ):
                return info, extra["replay_buffer"]
        return None

    def close(self, final_checkpoints: bool = True) -> None:
        """Take the final checkpoints and finish the run (idempotent). A checkpoint that could never be
        written is logged, not raised: training is over and the model in memory is intact."""
        persistence, self.persistence = self.persistence, None
        close_persistence(persistence, self.name, final_checkpoints)
