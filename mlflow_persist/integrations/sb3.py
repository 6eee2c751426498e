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
- A `VecNormalize` wrapper's running statistics (observations, returns) are kept with every checkpoint, as
  SB3's own `VecNormalize.save` keeps them, so a resumed agent scales its inputs as before.
- `save_replay_buffer=True` (off-policy algorithms) also keeps the filled part of the replay buffer (copied
  at every save); without it a restart resumes with an empty buffer.
- A SIGTERM/SIGINT stops `learn()` at the next env step (SB3's own stop: `_on_step` returns False), takes
  the final checkpoints and then exits (`GracefulExit`).
- Under `torch.distributed` only rank 0 touches the store (`mlflow_persist.integrations.distributed`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import DictReplayBuffer, ReplayBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.save_util import recursive_getattr
from stable_baselines3.common.utils import safe_mean
from stable_baselines3.her.her_replay_buffer import HerReplayBuffer

from mlflow_persist._observe.logs import package_logger
from mlflow_persist._policy.policy import SaveDecision
from mlflow_persist._runtime.handle import RestoreInfo
from mlflow_persist._runtime.process_effects import GracefulExit
from mlflow_persist._store.protocol import CheckpointStore
from mlflow_persist.config import PersistConfig
from mlflow_persist.errors import PersistError
from mlflow_persist.integrations.common import close_persistence, numeric_metrics, one_or_list, open_persistence
from mlflow_persist.integrations.distributed import DistributedHandle, DistributedPersistence

__all__ = [
    "COUNTERS",
    "EPISODE_MEANS",
    "REPLAY_ARRAYS",
    "SUCCESS_RATE",
    "AlgorithmState",
    "PersistCallback",
    "ReplayBufferState",
    "VecNormalizeState",
]

log = package_logger("mlflow_persist.integrations.sb3")

# What the algorithm needs to continue its schedules after a restart (those it has; DQN's `_n_calls` paces
# its target-network updates, `_current_progress_remaining` the learning-rate and exploration schedules).
COUNTERS = (
    "num_timesteps",
    "_n_updates",
    "_episode_num",
    "_current_progress_remaining",
    "exploration_rate",
    "_n_calls",
)
# SB3 records these in `_dump_logs` right before `logger.dump()` clears them, so `_on_step` never sees them.
EPISODE_MEANS = {"rollout/ep_rew_mean": "r", "rollout/ep_len_mean": "l"}
SUCCESS_RATE = "rollout/success_rate"
REPLAY_ARRAYS = ("observations", "actions", "rewards", "next_observations", "dones", "timeouts")


class ReplayBufferState:
    """The filled part of an off-policy replay buffer, plus `pos` and `full`. Its arrays travel as tensors
    sharing their memory: the snapshot then copies them once, and the state broadcast to other ranks at a
    restore needs no decoding."""

    def __init__(self, buffer: ReplayBuffer | DictReplayBuffer) -> None:
        self.buffer = buffer

    def state_dict(self) -> dict[str, Any]:
        filled = self.buffer.buffer_size if self.buffer.full else self.buffer.pos
        state: dict[str, Any] = {"pos": int(self.buffer.pos), "full": bool(self.buffer.full)}
        for name in REPLAY_ARRAYS:
            state[name] = _map_arrays(getattr(self.buffer, name, None), lambda array: _as_tensor(array[:filled]))
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["full"] and len(state["rewards"]) != self.buffer.buffer_size:
            raise ValueError(
                f"the checkpoint's replay buffer is full at {len(state['rewards'])} transitions, the "
                f"live one holds {self.buffer.buffer_size}; create the algorithm with the same "
                "buffer_size, or pass save_replay_buffer=False"
            )
        for name in REPLAY_ARRAYS:
            live, saved = getattr(self.buffer, name, None), state.get(name)
            if (live is None) != (saved is None):
                raise ValueError(
                    f"the checkpoint's replay buffer {'lacks' if saved is None else 'has'} {name}; "
                    "create the algorithm with the same optimize_memory_usage setting"
                )
            _copy_arrays(name, saved, live)
        self.buffer.pos = int(state["pos"])
        self.buffer.full = bool(state["full"])


def _as_tensor(array: np.ndarray) -> torch.Tensor | np.ndarray:
    """The array as a tensor sharing its memory, or as itself for a dtype torch lacks (stored as raw bytes)."""
    try:
        return torch.from_numpy(array)
    except TypeError:
        return array


def _map_arrays(value: Any, change: Any) -> Any:
    if isinstance(value, dict):  # DictReplayBuffer: one array per observation key
        return {key: change(array) for key, array in value.items()}
    return None if value is None else change(value)


def _copy_arrays(name: str, saved: Any, live: Any) -> None:
    if isinstance(live, dict):
        if not isinstance(saved, dict) or set(saved) != set(live):
            raise ValueError(
                f"the checkpoint's replay buffer {name} has other keys than the live one; "
                "resume with the same observation space"
            )
        for key in live:
            _copy_arrays(f"{name}[{key!r}]", saved[key], live[key])
        return
    if saved is None:
        return
    saved = saved.numpy() if isinstance(saved, torch.Tensor) else np.asarray(saved)
    if saved.shape[1:] != live.shape[1:] or len(saved) > len(live) or saved.dtype != live.dtype:
        raise ValueError(
            f"the checkpoint's replay buffer {name} is {saved.dtype}{list(saved.shape)}, the live one "
            f"{live.dtype}{list(live.shape)}; create the algorithm with the same buffer_size, env count "
            "and spaces, or pass save_replay_buffer=False"
        )
    live[: len(saved)] = saved
    live[len(saved) :] = 0


def _rms_state(rms: Any) -> Any:
    """A RunningMeanStd (or a dict of them, for Dict observations) as tensors and a float."""
    if isinstance(rms, dict):
        return {key: _rms_state(value) for key, value in rms.items()}
    return {
        "mean": torch.from_numpy(np.array(rms.mean)),
        "var": torch.from_numpy(np.array(rms.var)),
        "count": float(rms.count),
    }


def _load_rms(rms: Any, saved: Any, what: str) -> None:
    if isinstance(rms, dict):
        if not isinstance(saved, dict) or set(saved) != set(rms):
            raise ValueError(f"the checkpoint's VecNormalize {what} has other keys; resume with the same spaces")
        for key, value in rms.items():
            _load_rms(value, saved[key], f"{what}[{key!r}]")
        return
    mean, var = saved["mean"].numpy(), saved["var"].numpy()
    if mean.shape != np.shape(rms.mean):
        raise ValueError(
            f"the checkpoint's VecNormalize {what} has shape {list(mean.shape)}, the live one "
            f"{list(np.shape(rms.mean))}; resume with the same observation space"
        )
    rms.mean, rms.var, rms.count = mean.copy(), var.copy(), float(saved["count"])


class VecNormalizeState:
    """The running statistics a `VecNormalize` wrapper scales observations and rewards with (what SB3's own
    `VecNormalize.save` keeps for them), so that a resumed agent sees its inputs scaled as before."""

    def __init__(self, env: Any) -> None:
        self.env = env

    def state_dict(self) -> dict[str, Any]:
        return {
            "obs_rms": _rms_state(self.env.obs_rms),
            "ret_rms": _rms_state(self.env.ret_rms),
            "returns": torch.from_numpy(np.array(self.env.returns)),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _load_rms(self.env.obs_rms, state["obs_rms"], "obs_rms")
        _load_rms(self.env.ret_rms, state["ret_rms"], "ret_rms")
        returns = state["returns"].numpy()
        if returns.shape == np.shape(self.env.returns):  # per env: another env count starts fresh returns
            self.env.returns = returns.copy()


class AlgorithmState:
    """The `extra` of a checkpoint: the algorithm's counters, its recent episodes (the `rollout/*` means),
    its torch variables outside the policy (SAC's entropy coefficient), its `VecNormalize` statistics and,
    optionally, its replay buffer."""

    def __init__(self, algorithm: BaseAlgorithm, save_replay_buffer: bool) -> None:
        self.algorithm = algorithm
        self.counted_ahead = 0  # env steps already in num_timesteps whose bookkeeping SB3 has not done yet
        self.tensor_names: list[str] = list(algorithm._get_torch_save_params()[1])
        self.replay_buffer: ReplayBufferState | None = None
        if save_replay_buffer:
            buffer = getattr(algorithm, "replay_buffer", None)
            if not isinstance(buffer, (ReplayBuffer, DictReplayBuffer)) or isinstance(buffer, HerReplayBuffer):
                raise PersistError(
                    f"save_replay_buffer=True needs an off-policy algorithm with a ReplayBuffer or DictReplayBuffer; "
                    f"{type(algorithm).__name__} has {type(buffer).__name__}, so pass save_replay_buffer=False."
                )
            self.replay_buffer = ReplayBufferState(buffer)
        normalizer = algorithm.get_vec_normalize_env()
        self.vec_normalize = VecNormalizeState(normalizer) if normalizer is not None else None

    def counters(self) -> dict[str, Any]:
        counters = {name: getattr(self.algorithm, name) for name in COUNTERS if hasattr(self.algorithm, name)}
        counters["num_timesteps"] -= self.counted_ahead
        return counters

    def state_dict(self) -> dict[str, Any]:
        algorithm = self.algorithm
        state: dict[str, Any] = {
            "counters": self.counters(),
            "episodes": [dict(info) for info in algorithm.ep_info_buffer or ()],
            "successes": list(algorithm.ep_success_buffer or ()),
            "tensors": {name: recursive_getattr(algorithm, name) for name in self.tensor_names},
        }
        if self.replay_buffer is not None:
            state["replay_buffer"] = self.replay_buffer.state_dict()
        if self.vec_normalize is not None:
            state["vec_normalize"] = self.vec_normalize.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        algorithm = self.algorithm
        if self.replay_buffer is not None:
            if state.get("replay_buffer") is None:
                log.warning(
                    "the checkpoint holds no replay buffer (it was saved with save_replay_buffer=False); "
                    "training resumes with an empty one"
                )
            else:
                self.replay_buffer.load_state_dict(state["replay_buffer"])
        saved_normalizer = state.get("vec_normalize")
        if self.vec_normalize is not None and saved_normalizer is not None:
            self.vec_normalize.load_state_dict(saved_normalizer)
        elif (self.vec_normalize is None) != (saved_normalizer is None):
            log.warning(
                "the checkpoint was saved %s a VecNormalize wrapper and the environment now runs %s one; "
                "observations are scaled differently than when it was trained",
                "without" if saved_normalizer is None else "with",
                "with" if saved_normalizer is None else "without",
            )
        with torch.no_grad():
            for name, saved in state.get("tensors", {}).items():
                recursive_getattr(algorithm, name).copy_(saved)
        for name, value in state["counters"].items():
            setattr(algorithm, name, value)
        for buffer, saved in (
            (algorithm.ep_info_buffer, state.get("episodes")),
            (algorithm.ep_success_buffer, state.get("successes")),
        ):
            if buffer is not None and saved is not None:
                buffer.clear()
                buffer.extend(saved)


class PersistCallback(BaseCallback):
    """Checkpoints `model.policy`, its optimizer(s) and the algorithm's counters (`AlgorithmState`) at every
    env step where the monitor improved or a periodic save is due; restores the newest checkpoint when
    `learn()` starts and takes `final` checkpoints when it ends.

    `store` and `persistence_kwargs` go to the `Persistence` (a test's MemoryStore, alert sinks,
    `install_signal_handlers`). One callback may serve several `learn()` calls: each one resumes from the
    checkpoint the previous one closed with.
    """

    def __init__(
        self,
        name: str,
        config: PersistConfig | None = None,
        *,
        save_replay_buffer: bool = False,
        store: CheckpointStore | None = None,
        persistence_kwargs: Mapping[str, Any] | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose=verbose)
        self.name = name
        self.config = config
        self.save_replay_buffer = save_replay_buffer
        self.store = store
        self.persistence_kwargs = dict(persistence_kwargs or {})
        self.persistence: DistributedPersistence | None = None
        self.handle: DistributedHandle | None = None
        self.state: AlgorithmState | None = None
        self.restored: RestoreInfo | None = None
        self._reported: dict[str, Any] = {}  # the logger's value objects already reported
        self._newest_episode: Any = None  # the newest ep_info_buffer entry already in the episode means
        self._stop: GracefulExit | None = None
        # Env steps already counted in num_timesteps that SB3 has not recorded yet, at the current report:
        # n_envs inside on_step, 0 at the end of learn().
        self.counted_ahead = 0

    # ------------------------------------------------------------------------------------- SB3 hooks

    def _on_training_start(self) -> None:
        """Runs after `learn()`'s `_setup_learn` reset the counters: put the checkpoint's back."""
        self.close()  # a previous learn() with this callback: its final checkpoint is what resumes now
        self._stop = None
        self.state = AlgorithmState(self.model, self.save_replay_buffer)
        # SB3's own save() list: `policy.optimizer`, or the actor's and critic's (and SAC's entropy) optimizers.
        optimizer_names = [n for n in self.model._get_torch_save_params()[0] if n != "policy"]
        optimizers = [recursive_getattr(self.model, n) for n in optimizer_names]
        self.persistence = open_persistence(self.config, self.store, self.persistence_kwargs)
        self.handle = self.persistence.track(self.name, self.model.policy, one_or_list(optimizers), extra=self.state)
        try:
            self.restored = self.handle.restore()
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
        episodes = self.model.ep_info_buffer
        self._newest_episode = episodes[-1] if episodes else None

    def _on_step(self) -> bool:
        self.counted_ahead = self.model.n_envs
        try:
            self.persist_step(**self.fresh_metrics())
        except GracefulExit as stop:  # a SIGTERM/SIGINT reached this step boundary: end learn() here
            self._stop = stop
            return False
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
        if self.state is not None:
            self.state.counted_ahead = self.counted_ahead
        try:
            self.close()
        finally:
            if self.state is not None:
                self.state.counted_ahead = 0
        stop, self._stop = self._stop, None
        if stop is not None:
            raise stop

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
        try:
            return self.handle.step(step=self.model.num_timesteps - self.counted_ahead, **metrics)
        finally:
            self.state.counted_ahead = 0

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

    def close(self, final_checkpoints: bool = True) -> None:
        """Take the final checkpoints and finish the run (idempotent). A checkpoint that could never be
        written is logged, not raised: training is over and the model in memory is intact."""
        persistence, self.persistence = self.persistence, None
        close_persistence(persistence, self.name, final_checkpoints)
