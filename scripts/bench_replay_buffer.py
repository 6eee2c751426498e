"""What a Stable-Baselines3 replay buffer costs each checkpoint: in every checkpoint, every so many env steps
(`replay_buffer_every_steps`), and not at all, side by side in one run.

A DQN on a synthetic env (observations of ``--obs-dim`` float32 values, two actions) starts with its replay
buffer full at ``--buffer-size`` transitions of random contents, as after a long run, so that every checkpoint
that holds the buffer writes all of it. It then trains with a periodic checkpoint every ``--periodic`` env
steps, ``--checkpoints`` of them, three ways, each with a store of its own:

* ``none``: ``PersistCallback(save_replay_buffer=False)``, the baseline;
* ``every``: ``save_replay_buffer=True``, the buffer in every checkpoint;
* ``interval``: ``save_replay_buffer=True, replay_buffer_every_steps=--every-checkpoints x --periodic``.

Per checkpoint: the bytes registered (the version's ``size_bytes``), the wall time from the step that saves
until the version is registered (the callback's step, then a flush: snapshot, write, registration, retention),
and the part of it the step blocked training (the snapshot). Means over every periodic checkpoint of
``--rounds`` rounds, the variants in alternating order; each as a ratio against ``none`` of the same run. Also
what the store holds at the end under the default retention (keep_periodic=3; with the interval, retention keeps
the newest checkpoint holding the buffer as well). The final checkpoint, which always holds the buffer, is not
taken.

    MLFLOW_DISABLE_TELEMETRY=true .venv/bin/python scripts/bench_replay_buffer.py [--buffer-size 200000]
        [--obs-dim 64] [--periodic 200] [--checkpoints 20] [--every-checkpoints 10] [--rounds 2] [--smoke]

The last line is ``BENCH_JSON {...}`` with every figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import gymnasium  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_common import cpu_model  # noqa: E402
from stable_baselines3 import DQN  # noqa: E402

import mlflow_persist as mp  # noqa: E402
from mlflow_persist.integrations.sb3 import PersistCallback  # noqa: E402

NAME = "dqn"
VARIANTS = ("none", "every", "interval")
SIZE_TAG = "mlflow_persist.size_bytes"


class NoiseEnv(gymnasium.Env[np.ndarray, int]):
    """Observations of `obs_dim` random float32 values, two actions, episodes of 200 steps."""

    def __init__(self, obs_dim: int) -> None:
        self.observation_space = gymnasium.spaces.Box(-1.0, 1.0, (obs_dim,), np.float32)
        self.action_space = gymnasium.spaces.Discrete(2)
        self._random = np.random.default_rng(0)
        self._steps = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._steps = 0
        return self._observation(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self._steps += 1
        return self._observation(), float(action), False, self._steps >= 200, {}

    def _observation(self) -> np.ndarray:
        return self._random.uniform(-1.0, 1.0, self.observation_space.shape).astype(np.float32)


def filled_dqn(buffer_size: int, obs_dim: int) -> DQN:
    """A DQN whose replay buffer is full of random transitions."""
    model = DQN(
        "MlpPolicy",
        NoiseEnv(obs_dim),
        buffer_size=buffer_size,
        learning_starts=0,
        train_freq=4,
        batch_size=32,
        policy_kwargs={"net_arch": [64, 64]},
        seed=0,
        device="cpu",
    )
    buffer, random = model.replay_buffer, np.random.default_rng(1)
    for name in ("observations", "next_observations", "rewards"):
        array = getattr(buffer, name)
        array[:] = random.random(array.shape, dtype=np.float32)
    buffer.actions[:] = random.integers(0, 2, buffer.actions.shape)
    buffer.full, buffer.pos = True, 0
    return model


class MeasuredCallback(PersistCallback):
    """Times every periodic save from the step that takes it until its version is registered; no final save."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.saves: list[dict[str, float]] = []
        self.kept_bytes = 0

    def persist_step(self, **metrics: float) -> mp.SaveDecision:
        began = time.perf_counter()
        decision = super().persist_step(**metrics)
        if decision.save and self.counted_ahead and self.handle is not None:
            blocked = time.perf_counter() - began
            self.handle.flush()
            registered = time.perf_counter() - began
            handle = self.handle.handle
            assert handle is not None and handle.last_saved is not None
            version = handle.pipeline.store.get_version(handle.registered_name, handle.last_saved[0])
            self.saves.append(
                {"bytes": float(version.tags[SIZE_TAG]), "registered_s": registered, "blocked_s": blocked}
            )
        return decision

    def _on_training_end(self) -> None:
        if self.handle is not None and self.handle.handle is not None:
            self.kept_bytes = sum(int(v.tags[SIZE_TAG]) for v in self.handle.handle.history(limit=1_000_000))
        self.close(final_checkpoints=False)


def run_variant(variant: str, args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    model = filled_dqn(args.buffer_size, args.obs_dim)
    config = mp.PersistConfig(
        tracking_uri=f"sqlite:///{directory / 'mlflow.db'}",
        monitor=None,  # periodic checkpoints only
        periodic_every_steps=args.periodic,
        log_system_metrics=False,
        min_free_disk_mb=0,
        min_free_disk_percent=0,
        worker_process="off",
    )
    callback = MeasuredCallback(
        NAME,
        config,
        save_replay_buffer=variant != "none",
        replay_buffer_every_steps=args.every_checkpoints * args.periodic if variant == "interval" else None,
        persistence_kwargs={"install_signal_handlers": False},
    )
    # on_step reports the step before, so the last checkpoint's step is reported one rollout (train_freq) later
    model.learn(total_timesteps=args.periodic * args.checkpoints + 4, callback=callback)
    buffer_bytes = sum(
        getattr(model.replay_buffer, name).nbytes
        for name in ("observations", "actions", "rewards", "next_observations", "dones", "timeouts")
    )
    del model
    gc.collect()
    return {"saves": callback.saves, "kept_bytes": callback.kept_bytes, "buffer_bytes": buffer_bytes}


def summary(runs: list[dict[str, Any]], without_buffer: float) -> dict[str, float]:
    """`without_buffer`: the largest checkpoint of the `none` variant; one with the buffer is the buffer's size
    larger."""
    saves = [save for run in runs for save in run["saves"]]
    return {
        "checkpoints": float(len(saves)),
        "with_buffer": float(sum(save["bytes"] > without_buffer + runs[0]["buffer_bytes"] / 2 for save in saves)),
        "bytes": statistics.mean(save["bytes"] for save in saves),
        "registered_ms": statistics.mean(save["registered_s"] for save in saves) * 1000,
        "blocked_ms": statistics.mean(save["blocked_s"] for save in saves) * 1000,
        "kept_bytes": statistics.mean(run["kept_bytes"] for run in runs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--buffer-size", type=int, default=200_000, help="replay buffer transitions (200000)")
    parser.add_argument("--obs-dim", type=int, default=64, help="float32 values per observation (64)")
    parser.add_argument("--periodic", type=int, default=200, help="env steps between checkpoints (200)")
    parser.add_argument("--checkpoints", type=int, default=20, help="checkpoints per variant and round (20)")
    parser.add_argument(
        "--every-checkpoints", type=int, default=10, help="the interval variant: buffer every N checkpoints (10)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds, the variants in alternating order (2)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: that it runs, in seconds")
    parser.add_argument("--dir", type=Path, help="where the stores go (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.buffer_size, args.obs_dim, args.periodic, args.checkpoints = 2000, 8, 40, 4
        args.every_checkpoints, args.rounds = 2, 1
    torch.set_num_threads(1)
    root = args.dir or Path(tempfile.mkdtemp(prefix="bench-replay-buffer-"))
    runs: dict[str, list[dict[str, Any]]] = {variant: [] for variant in VARIANTS}
    for index in range(args.rounds):
        for variant in VARIANTS if index % 2 == 0 else VARIANTS[::-1]:
            directory = root / f"{variant}-{index}"
            directory.mkdir(parents=True)
            runs[variant].append(run_variant(variant, args, directory))
            print(f"round {index + 1}, {variant}: {len(runs[variant][-1]['saves'])} checkpoints", flush=True)
    without_buffer = max(save["bytes"] for run in runs["none"] for save in run["saves"])
    figures = {variant: summary(runs[variant], without_buffer) for variant in VARIANTS}
    base = figures["none"]
    ratios = {
        variant: {
            "bytes": figures[variant]["bytes"] / base["bytes"],
            "registered": figures[variant]["registered_ms"] / base["registered_ms"],
            "blocked": figures[variant]["blocked_ms"] / base["blocked_ms"],
        }
        for variant in VARIANTS
    }
    buffer_mb = runs["none"][0]["buffer_bytes"] / 2**20
    machine = f"{cpu_model()}, {os.cpu_count()} cores"
    print(
        f"\nReplay buffer checkpoints: DQN, {args.buffer_size:,} transitions of {args.obs_dim} float32 values "
        f"({buffer_mb:.0f} MB full), a checkpoint every {args.periodic} env steps, {args.checkpoints} per variant "
        f"and round, {args.rounds} round(s), sqlite store; {machine}; ratios against `none` of this run"
    )
    print(
        f"  {'variant':9} {'checkpoints':>11} {'with buffer':>11} {'MB each':>9} {'vs none':>8} "
        f"{'ms to registered':>16} {'vs none':>8} {'ms blocked':>10} {'vs none':>8} {'MB kept':>8}"
    )
    for variant in VARIANTS:
        f, r = figures[variant], ratios[variant]
        print(
            f"  {variant:9} {f['checkpoints']:11.0f} {f['with_buffer']:11.0f} {f['bytes'] / 2**20:9.2f} "
            f"{r['bytes']:7.1f}x {f['registered_ms']:16.1f} {r['registered']:7.1f}x {f['blocked_ms']:10.1f} "
            f"{r['blocked']:7.1f}x {f['kept_bytes'] / 2**20:8.1f}"
        )
    report = {
        "benchmark": "replay_buffer",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine,
        "torch": torch.__version__,
        "buffer_size": args.buffer_size,
        "obs_dim": args.obs_dim,
        "buffer_bytes": runs["none"][0]["buffer_bytes"],
        "periodic": args.periodic,
        "checkpoints": args.checkpoints,
        "replay_buffer_every_steps": args.every_checkpoints * args.periodic,
        "rounds": args.rounds,
        "figures": figures,
        "ratios": ratios,
    }
    print("BENCH_JSON " + json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
