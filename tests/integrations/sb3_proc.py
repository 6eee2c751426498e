"""A Stable-Baselines3 trainer on CartPole with PersistCallback (DQN, or with --algo ppo a PPO on a
VecNormalize-wrapped env); the test's own record of what happened.

Usage: sb3_proc.py URI DIGEST_LOG TOTAL_TIMESTEPS [--algo dqn|ppo] [--monitor KEY|none] [--mode min|max]
                   [--periodic N] [--replay-buffer] [--replay-buffer-every N] [--wait-for-saves]
                   [--slow-after N] [--progress-every N] [--seed S] [--carry DIR] [--sb3-own STEP,...]

TOTAL_TIMESTEPS is the total across restarts: every run calls `learn(TOTAL_TIMESTEPS)`, which the callback
continues from the restored timestep (SB3's own resume reaches the same total with
`learn(TOTAL_TIMESTEPS - model.num_timesteps, reset_num_timesteps=False)`, see --sb3-own).

Writes to DIGEST_LOG, after every save decision, `{"event": "saved", "step", "category", "pid", "digest"}` (policy
weights, optimizer state and counters, read from the model itself), with a VecNormalize the digest of its
statistics after that step (`normalizer`, `normalizer_count`) and, with --replay-buffer, the buffer's `pos`,
`full` and contents digest (--replay-buffer-every N: `PersistCallback(replay_buffer_every_steps=N)`;
--wait-for-saves: each save is registered before training goes on, so none replaces another); `{"event": "final", ...}` for the state `learn()` ends with (what the final
checkpoint holds); `{"event": "mean", "step", "value"}` for its own mean of the last 100 episode returns,
computed from the Monitor's episode infos. Prints `RESTORED {...}` right after the restore, `PROGRESS N` every
--progress-every (250) timesteps and `DONE {...}` when `learn()` returned.

--carry DIR: the harness carries across a kill what neither a checkpoint nor SB3's own `save` holds: the env
(CartPole's physics state and its RNG, the TimeLimit and Monitor episode counters), the observation and
episode starts SB3 acts on next, and the global RNGs (torch, numpy, random) and the action space's. It writes
them to DIR/STEP.pkl at the start of every rollout (the rollout grid, where the tests' checkpoints lie) and,
after a restore of step S, puts DIR/S.pkl back, so that the run goes on as if it had never been killed.

--sb3-own S1,S2,...: no callback, SB3's own resume: learn(S1), then at every Si `model.save` (with
`save_replay_buffer` and `VecNormalize.save`), `load` into a fresh env and
`learn(Si+1 - model.num_timesteps, reset_num_timesteps=False)`, up to TOTAL_TIMESTEPS.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import sys
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch
from stable_baselines3 import DQN, PPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnvWrapper, VecNormalize

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mlflow_persist as mp  # noqa: E402
from integrations.support import DigestLog, state_digest  # noqa: E402
from mlflow_persist._policy.policy import SaveDecision  # noqa: E402
from mlflow_persist.integrations.sb3 import PersistCallback  # noqa: E402

COUNTER_NAMES = (
    "num_timesteps",
    "_n_updates",
    "_episode_num",
    "_current_progress_remaining",
    "exploration_rate",
    "_n_calls",
)
BUFFER_ARRAYS = ("observations", "actions", "rewards", "next_observations", "dones", "timeouts")


def counters(model: BaseAlgorithm, counted_ahead: int = 0) -> dict[str, Any]:
    values = {name: getattr(model, name) for name in COUNTER_NAMES if hasattr(model, name)}  # PPO: no _n_calls
    values["num_timesteps"] -= counted_ahead
    return values


def live_digest(model: BaseAlgorithm, counted_ahead: int = 0) -> str:
    """The policy, optimizer and counters. Inside on_step SB3 has counted the current env step in
    num_timesteps and recorded nothing else of it yet (its own order in collect_rollouts), so the state after
    the previous step is the live state with `counted_ahead=n_envs`."""
    return state_digest(model.policy.state_dict(), model.policy.optimizer.state_dict(), counters(model, counted_ahead))


def normalizer_record(model: BaseAlgorithm) -> dict[str, Any]:
    """What a VecNormalize wrapper scales with, read from the live wrapper ({} without one): the digest of its
    running statistics and how many observations they counted. VecNormalize updates them inside `env.step`,
    before SB3 calls on_step, so inside on_step they already include the step being counted, one past the step
    that on_step reports."""
    env = model.get_vec_normalize_env()
    if env is None:
        return {}
    statistics = [
        (torch.from_numpy(np.array(rms.mean)), torch.from_numpy(np.array(rms.var)), float(rms.count))
        for rms in (env.obs_rms, env.ret_rms)
    ]
    digest = state_digest(statistics, torch.from_numpy(np.array(env.returns)))
    return {"normalizer": digest, "normalizer_count": float(env.obs_rms.count)}


def done_record(model: BaseAlgorithm) -> dict[str, Any]:
    optimizer = model.policy.optimizer
    return {
        "num_timesteps": model.num_timesteps,
        "counters": counters(model),
        "digest": live_digest(model),
        "weights": state_digest(model.policy.state_dict()),
        "optimizer": state_digest(optimizer.state_dict()),
        "optimizer_steps": sorted({float(state["step"]) for state in optimizer.state.values()}),
        **normalizer_record(model),
    }


def innermost(model: BaseAlgorithm) -> DummyVecEnv:
    env = model.get_env()
    while isinstance(env, VecEnvWrapper):
        env = env.venv
    assert isinstance(env, DummyVecEnv)
    return env


def carry_out(model: BaseAlgorithm, directory: Path) -> None:
    """What --carry keeps at the start of a rollout (see the module's docstring), as DIRECTORY/STEP.pkl."""
    state = {
        "envs": innermost(model).envs,
        "last_obs": model._last_obs,
        "last_episode_starts": model._last_episode_starts,
        "last_original_obs": getattr(model, "_last_original_obs", None),
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "random": random.getstate(),
        "action_space": model.action_space.np_random.bit_generator.state,
    }
    path = directory / f"{model.num_timesteps}.pkl"
    partial = path.with_suffix(".partial")
    partial.write_bytes(pickle.dumps(state))
    os.replace(partial, path)  # a kill mid-write leaves no half file under the step's name


def carry_in(model: BaseAlgorithm, directory: Path, step: int) -> None:
    path = directory / f"{step}.pkl"
    assert path.exists(), f"nothing carried for step {step}: a checkpoint off the rollout grid"
    state = pickle.loads(path.read_bytes())
    innermost(model).envs[:] = state["envs"]
    model._last_obs = state["last_obs"]
    model._last_episode_starts = state["last_episode_starts"]
    if state["last_original_obs"] is not None:
        model._last_original_obs = state["last_original_obs"]
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["random"])
    model.action_space.np_random.bit_generator.state = state["action_space"]


def buffer_record(model: DQN) -> dict[str, Any]:
    buffer = model.replay_buffer
    filled = buffer.buffer_size if buffer.full else buffer.pos
    arrays = [torch.from_numpy(np.ascontiguousarray(getattr(buffer, name)[:filled])) for name in BUFFER_ARRAYS]
    return {
        "buffer_pos": int(buffer.pos),
        "buffer_full": bool(buffer.full),
        "buffer_size": filled,
        "buffer_digest": state_digest(arrays),
    }


class RecordingCallback(PersistCallback):
    def __init__(
        self,
        *args: Any,
        log: DigestLog,
        record_buffer: bool,
        slow_after: int | None,
        progress_every: int = 250,
        carry: Path | None = None,
        wait_for_saves: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.wait_for_saves = wait_for_saves
        self.log = log
        self.record_buffer = record_buffer
        self.slow_after = slow_after
        self.progress_every = progress_every
        self.carry = carry
        self.returns: deque[float] = deque(maxlen=100)
        self.new_episode = False
        self.normalizer_before: dict[str, Any] = {}  # normalizer_record() after the previous env step

    def _on_training_start(self) -> None:
        super()._on_training_start()
        info = self.restored
        if self.carry is not None and info is not None:
            carry_in(self.model, self.carry, info.step)
        self.normalizer_before = normalizer_record(self.model)
        print(
            "RESTORED "
            + json.dumps(
                {
                    "version": info.version if info else None,
                    "category": info.category if info else None,
                    "step": info.step if info else None,
                    "value": info.value if info else None,
                    "run_id": info.run_id if info else None,
                    "digest": live_digest(self.model),
                    "counters": counters(self.model),
                    "time_ms": int(time.time() * 1000),
                    "carried": self.carry is not None and info is not None,
                    "pid": os.getpid(),
                    **normalizer_record(self.model),
                    **(buffer_record(self.model) if self.record_buffer else {}),
                }
            ),
            flush=True,
        )

    def persist_step(self, **metrics: float) -> SaveDecision:
        # SB3 adds this step's finished episodes to ep_info_buffer after on_step, so the callback sees them
        # one step later: the trainer's own mean follows the same timing, from the Monitor's infos.
        step = self.model.num_timesteps
        if self.new_episode:  # the mean the callback sees, of the episodes up to the step it reports
            self.log.append(event="mean", step=step - self.counted_ahead, value=float(np.mean(self.returns)))
            self.new_episode = False
        for info in self.locals.get("infos", ()) if self.counted_ahead else ():  # not again at learn's end
            if "episode" in info:
                self.returns.append(float(info["episode"]["r"]))
                self.new_episode = True
        decision = super().persist_step(**metrics)
        if decision.save and self.wait_for_saves and self.handle is not None:
            self.handle.flush()
        if decision.save:
            self.log.append(
                event="saved",
                step=step - self.counted_ahead,  # inside on_step: the state after the previous step
                category=decision.category,
                pid=os.getpid(),
                digest=live_digest(self.model, self.counted_ahead),
                **(buffer_record(self.model) if self.record_buffer else {}),
                # the statistics after the step it reports, as the trainer recorded them one step ago
                **(self.normalizer_before if self.counted_ahead else normalizer_record(self.model)),
            )
        if self.counted_ahead:
            self.normalizer_before = normalizer_record(self.model)
        if step % self.progress_every == 0:
            print(f"PROGRESS {step}", flush=True)
        if self.slow_after is not None and step > self.slow_after:
            time.sleep(0.002)  # leaves the test time to SIGKILL it mid-training, saves in flight
        return decision

    def _on_rollout_start(self) -> None:
        if self.carry is not None:
            carry_out(self.model, self.carry)

    def _on_training_end(self) -> None:
        try:
            super()._on_training_end()
        finally:  # after it: a learn() stopped inside on_step ends with its counted step never recorded
            self.log.append(
                event="final",
                step=self.model.num_timesteps - self.counted_ahead,
                digest=live_digest(self.model, self.counted_ahead),
                **(buffer_record(self.model) if self.record_buffer else {}),
            )


def make_model(algo: str, seed: int) -> BaseAlgorithm:
    if algo == "ppo":
        env = VecNormalize(DummyVecEnv([lambda: Monitor(gymnasium.make("CartPole-v1"))]), gamma=0.99)
        return PPO("MlpPolicy", env, n_steps=64, batch_size=64, seed=seed, device="cpu")  # n_steps = test's
    return DQN(
        "MlpPolicy",
        gymnasium.make("CartPole-v1"),
        learning_starts=200,
        train_freq=4,  # = test's TRAIN_FREQ
        buffer_size=10_000,
        target_update_interval=200,
        exploration_fraction=0.5,
        seed=seed,
        device="cpu",
    )


def sb3_own_resume(algo: str, seed: int, stops: list[int], total: int) -> BaseAlgorithm:
    """SB3's own resume at every step of `stops` (see the module's docstring)."""
    model = make_model(algo, seed)
    model.learn(total_timesteps=stops[0])
    with tempfile.TemporaryDirectory() as directory:
        saved = Path(directory)
        for stop in [*stops[1:], total]:
            model.save(saved / "model.zip")
            if isinstance(model, DQN):
                model.save_replay_buffer(saved / "buffer.pkl")
                model = DQN.load(saved / "model.zip", env=gymnasium.make("CartPole-v1"), device="cpu")
                model.load_replay_buffer(saved / "buffer.pkl")
            else:
                normalizer = model.get_vec_normalize_env()
                assert normalizer is not None
                normalizer.save(str(saved / "normalizer.pkl"))
                venv = DummyVecEnv([lambda: Monitor(gymnasium.make("CartPole-v1"))])
                env = VecNormalize.load(str(saved / "normalizer.pkl"), venv)
                model = PPO.load(saved / "model.zip", env=env, device="cpu")
            model.learn(total_timesteps=stop - model.num_timesteps, reset_num_timesteps=False)
    return model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("uri")
    parser.add_argument("log")
    parser.add_argument("total", type=int)
    parser.add_argument("--algo", choices=("dqn", "ppo"), default="dqn")
    parser.add_argument("--monitor", default="rollout/ep_rew_mean", help="none: periodic and final checkpoints only")
    parser.add_argument("--mode", default="max")
    parser.add_argument("--periodic", type=int, default=250)
    parser.add_argument("--replay-buffer", action="store_true")
    parser.add_argument("--replay-buffer-every", type=int)
    parser.add_argument("--wait-for-saves", action="store_true")
    parser.add_argument("--slow-after", type=int)
    parser.add_argument("--progress-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--carry", type=Path)
    parser.add_argument("--sb3-own")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.sb3_own:
        stops = [int(step) for step in args.sb3_own.split(",")]
        print("DONE " + json.dumps(done_record(sb3_own_resume(args.algo, args.seed, stops, args.total))), flush=True)
        return
    config = mp.PersistConfig(
        tracking_uri=args.uri,
        monitor=None if args.monitor == "none" else args.monitor,
        mode=args.mode,
        periodic_every_steps=args.periodic,
        keep_best=1000,
        keep_periodic=1000,
        log_system_metrics=False,
        min_free_disk_mb=0,
        min_free_disk_percent=0,
        scheduler_interval_seconds=0.5,
    )
    model = make_model(args.algo, args.seed)
    if args.carry is not None:
        args.carry.mkdir(parents=True, exist_ok=True)
    callback = RecordingCallback(
        f"cartpole_{args.algo}",
        config,
        save_replay_buffer=args.replay_buffer,
        replay_buffer_every_steps=args.replay_buffer_every,
        log=DigestLog(Path(args.log)),
        record_buffer=args.replay_buffer,
        slow_after=args.slow_after,
        progress_every=args.progress_every,
        carry=args.carry,
        wait_for_saves=args.wait_for_saves,
    )
    model.learn(total_timesteps=args.total, callback=callback)
    print("DONE " + json.dumps(done_record(model)), flush=True)


if __name__ == "__main__":
    main()
