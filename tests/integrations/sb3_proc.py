"""A Stable-Baselines3 DQN trainer on CartPole with PersistCallback; the test's own record of what happened.

Usage: sb3_proc.py URI DIGEST_LOG TOTAL_TIMESTEPS [--monitor KEY] [--mode min|max] [--periodic N]
                   [--replay-buffer] [--slow-after N] [--seed S]

Writes to DIGEST_LOG, after every save decision, `{"event": "saved", "step", "category", "digest"}` (policy
weights, optimizer state and counters, read from the model itself) and, with --replay-buffer, the buffer's
`pos`, `full` and contents digest; `{"event": "final", ...}` for the state `learn()` ends with (what the final
checkpoint holds); `{"event": "mean", "step", "value"}` for its own mean of the last 100 episode returns,
computed from the Monitor's episode infos. Prints `RESTORED {...}` right after the restore, `PROGRESS N`
every 250 timesteps and `DONE {...}` when `learn()` returned.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch
from stable_baselines3 import DQN

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


def counters(model: DQN, counted_ahead: int = 0) -> dict[str, Any]:
    values = {name: getattr(model, name) for name in COUNTER_NAMES}
    values["num_timesteps"] -= counted_ahead
    return values


def live_digest(model: DQN, counted_ahead: int = 0) -> str:
    """The policy, optimizer and counters. Inside on_step SB3 has counted the current env step in
    num_timesteps and recorded nothing else of it yet (its own order in collect_rollouts), so the state after
    the previous step is the live state with `counted_ahead=n_envs`."""
    return state_digest(model.policy.state_dict(), model.policy.optimizer.state_dict(), counters(model, counted_ahead))


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
    def __init__(self, *args: Any, log: DigestLog, record_buffer: bool, slow_after: int | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.log = log
        self.record_buffer = record_buffer
        self.slow_after = slow_after
        self.returns: deque[float] = deque(maxlen=100)
        self.new_episode = False

    def _on_training_start(self) -> None:
        super()._on_training_start()
        info = self.restored
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
        if decision.save:
            self.log.append(
                event="saved",
                step=step - self.counted_ahead,  # inside on_step: the state after the previous step
                category=decision.category,
                digest=live_digest(self.model, self.counted_ahead),
                **(buffer_record(self.model) if self.record_buffer else {}),
            )
        if step % 250 == 0:
            print(f"PROGRESS {step}", flush=True)
        if self.slow_after is not None and step > self.slow_after:
            time.sleep(0.002)  # leaves the test time to SIGKILL it mid-training, saves in flight
        return decision

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("uri")
    parser.add_argument("log")
    parser.add_argument("total", type=int)
    parser.add_argument("--monitor", default="rollout/ep_rew_mean")
    parser.add_argument("--mode", default="max")
    parser.add_argument("--periodic", type=int, default=250)
    parser.add_argument("--replay-buffer", action="store_true")
    parser.add_argument("--slow-after", type=int)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = mp.PersistConfig(
        tracking_uri=args.uri,
        monitor=args.monitor,
        mode=args.mode,
        periodic_every_steps=args.periodic,
        keep_best=1000,
        keep_periodic=1000,
        log_system_metrics=False,
        min_free_disk_mb=0,
        min_free_disk_percent=0,
        scheduler_interval_seconds=0.5,
    )
    model = DQN(
        "MlpPolicy",
        gymnasium.make("CartPole-v1"),
        learning_starts=200,
        train_freq=4,  # = test's TRAIN_FREQ
        buffer_size=10_000,
        target_update_interval=200,
        exploration_fraction=0.5,
        seed=args.seed,
        device="cpu",
    )
    callback = RecordingCallback(
        "cartpole_dqn",
        config,
        save_replay_buffer=args.replay_buffer,
        log=DigestLog(Path(args.log)),
        record_buffer=args.replay_buffer,
        slow_after=args.slow_after,
    )
    model.learn(total_timesteps=args.total, callback=callback)
    print("DONE " + json.dumps({"num_timesteps": model.num_timesteps, "counters": counters(model)}), flush=True)


if __name__ == "__main__":
    main()
