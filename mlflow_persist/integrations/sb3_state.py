"""What a Stable-Baselines3 checkpoint holds besides the policy and its optimizers (`AlgorithmState`): the
algorithm's counters, its recent episodes, its torch variables outside the policy, a `VecNormalize` wrapper's
running statistics (`VecNormalizeState`) and, optionally, the filled part of its replay buffer
(`ReplayBufferState`), in every checkpoint or every so many env steps (`ReplayBufferSchedule`).

Longer than 400 lines: `AlgorithmState` is the one `extra` of an SB3 checkpoint and decides, at each snapshot,
what of the buffer goes in; the parts it writes and reads back are kept beside it."""

from __future__ import annotations

import threading
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import DictReplayBuffer, ReplayBuffer
from stable_baselines3.common.save_util import recursive_getattr
from stable_baselines3.her.her_replay_buffer import HerReplayBuffer

from mlflow_persist._format.payload import copy_to_cpu
from mlflow_persist._observe.logs import package_logger
from mlflow_persist.errors import PersistError

__all__ = [
    "COUNTERS",
    "REPLAY_ARRAYS",
    "AlgorithmState",
    "BufferMark",
    "ReplayBufferSchedule",
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

    def clear(self) -> None:
        """Empty, as a new buffer is (only the filled part is zeroed: the rest was never written)."""
        filled = self.buffer.buffer_size if self.buffer.full else self.buffer.pos
        for name in REPLAY_ARRAYS:
            _map_arrays(getattr(self.buffer, name, None), lambda array: array[:filled].fill(0))
        self.buffer.pos, self.buffer.full = 0, False


@dataclass(frozen=True)
class BufferMark:
    """One saved replay buffer: the step whose transitions it holds (all up to that step) and a random id, so
    that a checkpoint without the buffer names the one it goes with, never another timeline's at that step."""

    step: int
    id: str | None  # None: saved before buffers had ids; any buffer of that step matches

    def as_state(self) -> dict[str, Any]:
        return {"step": self.step, "id": self.id}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> BufferMark:
        return cls(int(state["step"]), state.get("id"))

    def matches(self, other: BufferMark) -> bool:
        return self.step == other.step and (self.id is None or other.id is None or self.id == other.id)


class ReplayBufferSchedule:
    """Which checkpoints hold the replay buffer: with `every`, those taken at least `every` env steps after the
    last one that did, and every one taken while that one is not registered yet (the writer may replace a
    waiting snapshot by a newer one, or fail to save it); without `every`, all of them.

    A checkpoint without the buffer therefore always goes with a registered one (`source`), whose version(s)
    the retention keeps (`keep`). The training thread snapshots; the writer thread reports registrations."""

    def __init__(self, every: int | None) -> None:
        self.every = every or None
        self.last_step = 0  # the step of the newest buffer snapshotted or restored; 0: none (an empty buffer)
        self._lock = threading.Lock()
        self._pending: deque[BufferMark] = deque(maxlen=64)  # snapshotted, not seen registered yet
        self._registered: BufferMark | None = None
        self._versions: set[int] = set()  # the versions that hold `_registered` (two at a shared step)

    def due(self, step: int) -> bool:
        if self.every is None or step - self.last_step >= self.every:
            return True
        with self._lock:
            return bool(self._pending)

    def carried(self, step: int) -> BufferMark:
        """A snapshot of `step` holds the buffer: its mark."""
        mark = BufferMark(step, uuid.uuid4().hex)
        self.last_step = step
        with self._lock:
            self._pending.append(mark)
        return mark

    def source(self) -> BufferMark | None:
        """The registered buffer a checkpoint without one goes with (None: none yet, the buffer was empty)."""
        with self._lock:
            return self._registered

    def registered(self, version: int, step: int) -> None:
        """The writer registered `version` of `step` (once per registration). It registers a model's snapshots
        in the order they were taken, so pending ones older than a registered one never will be. A version of
        a pending buffer's step without it (a periodic save at the step of a final one) is kept as well: one
        version more, never one less."""
        with self._lock:
            index = next((i for i, mark in enumerate(self._pending) if mark.step == step), None)
            if index is None:
                if self._registered is not None and self._registered.step == step:
                    self._versions.add(version)
                return
            for _ in range(index):
                self._pending.popleft()
            self._registered, self._versions = self._pending.popleft(), {version}

    def restored(self, mark: BufferMark | None, version: int | None) -> None:
        """After a restore: the live buffer is `mark`'s (held by `version`), or empty (None)."""
        self.last_step = mark.step if mark is not None else 0
        with self._lock:
            self._pending.clear()
            self._registered = mark
            self._versions = {version} if mark is not None and version is not None else set()

    def keep(self) -> set[int]:
        with self._lock:
            return set(self._versions)


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
    """A RunningMeanStd (or a dict of them, for Dict observations) as tensors sharing its arrays, and a float."""
    if isinstance(rms, dict):
        return {key: _rms_state(value) for key, value in rms.items()}
    return {
        "mean": torch.from_numpy(np.asarray(rms.mean)),
        "var": torch.from_numpy(np.asarray(rms.var)),
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
    `VecNormalize.save` keeps for them), so that a resumed agent sees its inputs scaled as before.

    The wrapper updates them inside `env.step`, before SB3 calls `on_step`: a save there (`counted_ahead`)
    must hold the statistics as they were after the step before, which `keep()`, called at the end of every
    `on_step` and after a restore, copies aside."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self._kept: dict[str, Any] | None = None  # the statistics at the last keep(): after the previous step

    def keep(self) -> None:
        self._kept = copy_to_cpu(self._live(), reuse=self._kept)  # into the kept tensors: no allocation per step

    def state_dict(self, before_this_step: bool = False) -> dict[str, Any]:
        """The statistics now (a copy), or (`before_this_step`, inside on_step) those kept after the previous
        step (shared with the kept tensors: the snapshot copies them before the next keep())."""
        if before_this_step and self._kept is not None:
            return self._kept
        return dict(copy_to_cpu(self._live()))

    def _live(self) -> dict[str, Any]:
        """The wrapper's statistics as tensors sharing its arrays."""
        return {
            "obs_rms": _rms_state(self.env.obs_rms),
            "ret_rms": _rms_state(self.env.ret_rms),
            "returns": torch.from_numpy(np.asarray(self.env.returns)),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        _load_rms(self.env.obs_rms, state["obs_rms"], "obs_rms")
        _load_rms(self.env.ret_rms, state["ret_rms"], "ret_rms")
        returns = state["returns"].numpy()
        if returns.shape == np.shape(self.env.returns):  # per env: another env count starts fresh returns
            self.env.returns = returns.copy()
        self.keep()


class AlgorithmState:
    """The `extra` of a checkpoint: the algorithm's counters, its recent episodes (the `rollout/*` means),
    its torch variables outside the policy (SAC's entropy coefficient), its `VecNormalize` statistics and,
    optionally, its replay buffer.

    With `replay_buffer_every_steps`, a save the callback's step decided (`interval_applies`) holds the buffer
    only when `ReplayBufferSchedule.due`, and otherwise `replay_buffer_source`: the mark of the registered
    buffer it goes with. Every other save (final, forced) holds the buffer."""

    def __init__(
        self, algorithm: BaseAlgorithm, save_replay_buffer: bool, replay_buffer_every_steps: int | None = None
    ) -> None:
        self.algorithm = algorithm
        self.counted_ahead = 0  # env steps already in num_timesteps whose bookkeeping SB3 has not done yet
        self.tensor_names: list[str] = list(algorithm._get_torch_save_params()[1])
        self.replay_buffer: ReplayBufferState | None = None
        self.buffer_schedule: ReplayBufferSchedule | None = None
        self.interval_applies = False  # inside the callback's step(): a save there follows the schedule
        self.restoring = False  # state_dict() is a restore's backup or broadcast, not a checkpoint
        # What the last load_state_dict() found: the buffer it loaded (its mark), or that the checkpoint left it
        # out and the mark of the one it goes with (None: none), which the callback then loads
        self.loaded_mark: BufferMark | None = None
        self.buffer_left_out = False
        self.buffer_source: BufferMark | None = None
        if save_replay_buffer:
            buffer = getattr(algorithm, "replay_buffer", None)
            if not isinstance(buffer, (ReplayBuffer, DictReplayBuffer)) or isinstance(buffer, HerReplayBuffer):
                raise PersistError(
                    f"save_replay_buffer=True needs an off-policy algorithm with a ReplayBuffer or DictReplayBuffer; "
                    f"{type(algorithm).__name__} has {type(buffer).__name__}, so pass save_replay_buffer=False."
                )
            self.replay_buffer = ReplayBufferState(buffer)
            self.buffer_schedule = ReplayBufferSchedule(replay_buffer_every_steps)
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
            self._add_replay_buffer(state, state["counters"]["num_timesteps"])
        if self.vec_normalize is not None:
            state["vec_normalize"] = self.vec_normalize.state_dict(before_this_step=self.counted_ahead > 0)
        return state

    def _add_replay_buffer(self, state: dict[str, Any], step: int) -> None:
        assert self.replay_buffer is not None and self.buffer_schedule is not None
        schedule = self.buffer_schedule
        if self.restoring or not self.interval_applies or schedule.due(step):
            state["replay_buffer"] = self.replay_buffer.state_dict()
            if not self.restoring:
                state["replay_buffer_mark"] = schedule.carried(step).as_state()
        else:
            source = schedule.source()
            state["replay_buffer_source"] = source.as_state() if source is not None else None

    def after_step(self) -> None:
        """At the end of every `on_step`, and once learn() starts: what the next save inside on_step needs of
        this step (the VecNormalize statistics after it)."""
        if self.vec_normalize is not None:
            self.vec_normalize.keep()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        algorithm = self.algorithm
        if self.replay_buffer is not None:
            self.loaded_mark, self.buffer_source, self.buffer_left_out = None, None, False
            if state.get("replay_buffer") is not None:
                self.replay_buffer.load_state_dict(state["replay_buffer"])
                mark = state.get("replay_buffer_mark")
                self.loaded_mark = (
                    BufferMark.from_state(mark)
                    if mark is not None
                    else BufferMark(int(state["counters"]["num_timesteps"]), None)
                )
            elif "replay_buffer_source" in state:  # the callback loads that one (the live buffer waits)
                source = state["replay_buffer_source"]
                self.buffer_source = BufferMark.from_state(source) if source is not None else None
                self.buffer_left_out = True
            else:
                log.warning(
                    "the checkpoint holds no replay buffer (it was saved with save_replay_buffer=False); "
                    "training resumes with an empty one"
                )
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
