"""Stable-Baselines3 DQN on CartPole with durable MLflow checkpoints; run it twice to see it resume.

    python scripts/examples/sb3_example.py --timesteps 5000
    python scripts/examples/sb3_example.py --timesteps 8000   # resumes at the last checkpoint, ends at 8000

Kill it at any moment (even `kill -9`): the next run continues from the newest checkpoint, in the same
MLflow run, up to the same total. `best` (highest mean episode reward) is an alias in the model registry.
"""

from __future__ import annotations

import argparse

import gymnasium
from stable_baselines3 import DQN

import mlflow_persist as mp
from mlflow_persist.cli.inspection import history
from mlflow_persist.integrations.sb3 import PersistCallback


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite:///mlflow.db here)")
    parser.add_argument("--timesteps", type=int, default=5000, help="total env steps, across restarts")
    parser.add_argument("--name", default="cartpole_dqn", help="registered model name")
    args = parser.parse_args()

    config = mp.PersistConfig(
        tracking_uri=mp.resolve_tracking_uri(args.tracking_uri),
        monitor="rollout/ep_rew_mean",
        mode="max",
        periodic_every_steps=1000,
        log_system_metrics=False,
    )
    model = DQN(
        "MlpPolicy",
        gymnasium.make("CartPole-v1"),
        learning_starts=500,
        train_freq=4,
        buffer_size=20_000,
        seed=0,
        device="cpu",
    )
    callback = PersistCallback(args.name, config, save_replay_buffer=True)
    model.learn(total_timesteps=args.timesteps, callback=callback)

    restored = callback.restored
    print(
        f"resumed from v{restored.version} ({restored.category}) at timestep {restored.step}; "
        if restored
        else "started fresh; ",
        end="",
    )
    print(f"trained to timestep {model.num_timesteps}")

    store = mp.MlflowStore(config.tracking_uri, config.experiment_name)
    best = store.alias_version(args.name)
    print(f"best: v{best.version} at timestep {best.step}, rollout/ep_rew_mean={best.value:.2f}; checkpoints kept:")
    for row in history(store, args.name).versions:  # what `mlflow-persist history` prints
        print(f"  v{row.version:<3} {row.category:<11} timestep {row.step}")
    print(f"see them with: mlflow ui --backend-store-uri {config.tracking_uri}")


if __name__ == "__main__":
    main()
