"""Evidence that the trading models learn, and that their smoothed monitor continues across a restart.

Trains the reference trading system for `--bars` bars on the embedded store in a temporary directory,
stopping and restarting it half-way (a new process state: new Persistence, new models, restored from the
system checkpoint). Then it scores the trained models on the `--holdout` bars that follow, which no model
has seen, against trivial baselines computed on the same bars:

- CNN (next-bar direction) and Extrema (top/bottom/none): accuracy and cross-entropy vs the majority class
  of the training bars (its accuracy, and the cross-entropy of the training class frequencies);
- DQN and COB RL: mean reward in basis points per decision of the greedy policy vs always-hold (0) and a
  uniformly random policy (seeded).

It also prints each model's smoothed monitor just before and after the restart: the curve must continue.

Usage: python scripts/learning_evidence.py [--bars 3000] [--holdout 1000] [--seed 0] [--write]
(`--write` rewrites the table in docs/trading.md between the learning-evidence markers).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import mlflow_persist as mp  # noqa: E402
from mlflow_persist.trading.app import with_trading_defaults  # noqa: E402
from mlflow_persist.trading.features import features_from_frames  # noqa: E402
from mlflow_persist.trading.market import HORIZON, Draws  # noqa: E402
from mlflow_persist.trading.replay import decide  # noqa: E402
from mlflow_persist.trading.rewards import trade_reward  # noqa: E402
from mlflow_persist.trading.system import EnhancedRealtimeTrainingSystem  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "trading.md"  # the page whose learning-evidence table `--write` rewrites
START, END = "<!-- learning-evidence:start -->", "<!-- learning-evidence:end -->"


def train(uri: str, seed: int, bars: int) -> tuple[EnhancedRealtimeTrainingSystem, int]:
    """Train `bars` bars in two sessions; returns the second session's system and the restart's bar."""
    config = with_trading_defaults(mp.PersistConfig(tracking_uri=uri, log_system_metrics=False))
    first = bars // 2
    for session, count in enumerate((first, bars - first)):
        with mp.Persistence(config, install_signal_handlers=False) as persistence:
            system = EnhancedRealtimeTrainingSystem(persistence, seed=seed)
            system.start()
            if session == 1:
                assert system.steps_done == first, "the second session did not resume the system checkpoint"
            system.run(steps=count)
    return system, first


def holdout_scores(system: EnhancedRealtimeTrainingSystem, seed: int, holdout: int) -> dict[str, dict[str, float]]:
    market = system.market
    assert system.orchestrator is not None
    models = {name: trainer.model.eval() for name, trainer in system.trainers.items()}
    trained_until = market.first + system.steps_done
    train_positions = range(market.first, trained_until - HORIZON)
    labels = {"cnn": Counter(), "extrema": Counter()}
    for position in train_positions:
        outcome = market.outcome(position, market.book(position))
        labels["cnn"][outcome.direction] += 1
        labels["extrema"][outcome.extrema] += 1
    rng = np.random.default_rng(seed + 1)
    hits = {"cnn": 0, "extrema": 0}
    ce = {"cnn": 0.0, "extrema": 0.0}
    majority_hits = {"cnn": 0, "extrema": 0}
    prior_ce = {"cnn": 0.0, "extrema": 0.0}
    rewards = {"dqn": 0.0, "cob_rl": 0.0, "hold": 0.0, "random": 0.0}
    positions = range(trained_until + HORIZON, min(trained_until + HORIZON + holdout, market.end))
    for step, position in enumerate(positions, start=10**9):
        frames = market.frames(position, Draws.generate(seed, step, 0.0))  # epsilon 0: the greedy policy
        tensors = features_from_frames(frames)
        outcome = market.outcome(position, frames["cob"])
        action, outputs = decide(models, tensors)
        rewards["dqn"] += trade_reward(action, outcome)
        rewards["cob_rl"] += trade_reward(int(torch.argmax(outputs["cob_rl.probs"][0]).item()), outcome)
        rewards["hold"] += trade_reward(0, outcome)
        rewards["random"] += trade_reward(int(rng.integers(0, 3)), outcome)
        for name, label in (("cnn", outcome.direction), ("extrema", outcome.extrema)):
            logits = outputs[f"{name}.logits"]
            hits[name] += int(int(torch.argmax(logits[0]).item()) == label)
            ce[name] += float(F.cross_entropy(logits, torch.tensor([label])).item())
            counts = labels[name]
            majority_hits[name] += int(counts.most_common(1)[0][0] == label)
            prior_ce[name] += -math.log(max(counts[label], 1) / sum(counts.values()))
    n = len(positions)
    scores = {
        name: {
            "accuracy": hits[name] / n,
            "cross_entropy": ce[name] / n,
            "baseline_accuracy": majority_hits[name] / n,
            "baseline_cross_entropy": prior_ce[name] / n,
        }
        for name in ("cnn", "extrema")
    }
    scores.update(
        {
            name: {"mean_reward": rewards[name] / n, "hold": rewards["hold"] / n, "random": rewards["random"] / n}
            for name in ("dqn", "cob_rl")
        }
    )
    scores["_bars"] = {"trained": float(system.steps_done), "holdout": float(n)}
    return scores


def smoothed_curve(uri: str, restart_bar: int) -> dict[str, tuple[list[float], list[float]]]:
    """Each model's smoothed monitor: the last 3 values before the restart and the first 3 after."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("mlflow-persist")
    curves = {}
    for run in client.search_runs([experiment.experiment_id]):
        name = run.data.tags.get("mlflow_persist.run_key")
        monitor = {"dqn": "mean_reward", "cob_rl": "mean_reward", "cnn": "heldout_loss", "extrema": "heldout_loss"}.get(
            name or ""
        )
        if monitor is None:
            continue
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, f"{monitor}_smoothed"))
        boundary = restart_bar - HORIZON  # a model's step counts its trained decisions
        before = [v for s, v in history if s <= boundary][-3:]
        after = [v for s, v in history if s > boundary][:3]
        curves[name] = (before, after)
    return curves


def table(scores: dict[str, dict[str, float]], curves: dict[str, tuple[list[float], list[float]]], restart: int) -> str:
    bars = scores["_bars"]
    lines = [
        f"Trained {bars['trained']:.0f} bars (restarted at bar {restart}), scored on the next "
        f"{bars['holdout']:.0f} bars, which no model trained on.",
        "",
        "| model | held-out score | trivial baseline | smoothed monitor before / after the restart |",
        "|---|---|---|---|",
    ]

    def curve(name: str) -> str:
        before, after = curves.get(name, ([], []))
        return f"{', '.join(f'{v:.4g}' for v in before)} / {', '.join(f'{v:.4g}' for v in after)}"

    for name in ("cnn", "extrema"):
        s = scores[name]
        lines.append(
            f"| {name} | accuracy {s['accuracy']:.3f}, cross-entropy {s['cross_entropy']:.3f} | majority class: "
            f"accuracy {s['baseline_accuracy']:.3f}, cross-entropy {s['baseline_cross_entropy']:.3f} | "
            f"{curve(name)} |"
        )
    for name in ("dqn", "cob_rl"):
        s = scores[name]
        lines.append(
            f"| {name} | mean reward {s['mean_reward']:+.3f} bp/decision (greedy) | always hold "
            f"{s['hold']:+.3f}, random {s['random']:+.3f} | {curve(name)} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bars", type=int, default=3000)
    parser.add_argument("--holdout", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--write", "--readme", dest="write", action="store_true", help="rewrite the table in docs/trading.md"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="mlflow-persist-learning-") as tmp:
        uri = f"sqlite:///{tmp}/mlflow.db"
        system, restart = train(uri, args.seed, args.bars)
        scores = holdout_scores(system, args.seed, args.holdout)
        curves = smoothed_curve(uri, restart)
    text = table(scores, curves, restart)
    print(text)
    if args.write:
        content = PAGE.read_text(encoding="utf-8")
        block = (
            f"{START}\n{text}\n\nMade by `python scripts/learning_evidence.py --bars {args.bars} --holdout "
            f"{args.holdout} --seed {args.seed} --write`.\n{END}"
        )
        if START not in content or END not in content:
            print("docs/trading.md has no learning-evidence markers", file=sys.stderr)
            return 1
        PAGE.write_text(
            re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, content, flags=re.S), encoding="utf-8"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
