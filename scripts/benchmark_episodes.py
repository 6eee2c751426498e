"""Benchmark the episode recorder: cost of `record()` on the decision path and bytes per episode.

A representative decision (the size of the reference trading system's: a 64-bar window with 20
indicator columns, a 2x10-level order book, four small networks - DQN MLP, 1-D CNN, COB
actor-critic, extrema MLP - run on CPU from tensors built from the frames) is timed alone, then
`EpisodeRecorder.record()` of its complete episode. The recorder writes to a fresh sqlite MLflow
store in a temp dir with its background thread, so the decision timings also show any slowdown
from the background serialization.

    MLFLOW_DISABLE_TELEMETRY=true .venv/bin/python scripts/benchmark_episodes.py [--episodes 1024]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from mlflow_persist.episodes import Episode, EpisodeRecorder, EpisodeStore  # noqa: E402

WINDOW, N_IND, LEVELS = 64, 20, 10


def market(n_bars: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    idx = pd.date_range("2017-01-02", periods=n_bars, freq="h", tz="UTC", name="bar_time")
    close = 1.05 + rng.normal(0, 5e-4, n_bars).cumsum()
    data = {
        "open": close + rng.normal(0, 1e-4, n_bars),
        "high": close + 3e-4,
        "low": close - 3e-4,
        "close": close,
        "volume": rng.integers(100, 1000, n_bars).astype(np.float64),
    }
    for k in range(N_IND - 5):
        data[f"ind_{k}"] = pd.Series(close).rolling(3 + k).mean().to_numpy()
    frame = pd.DataFrame(data, index=idx)
    frame["regime"] = pd.Categorical(
        np.where(rng.random(n_bars) > 0.5, "calm", "volatile"), categories=["calm", "volatile"]
    )
    return frame


def cob(bar: pd.Series, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    levels = np.arange(LEVELS)
    idx = pd.MultiIndex.from_product([["bid", "ask"], levels], names=["side", "level"])
    price = np.concatenate([bar["close"] - 1e-5 * (levels + 1), bar["close"] + 1e-5 * (levels + 1)])
    return pd.DataFrame({"price": price, "size": rng.uniform(1, 10, 2 * LEVELS)}, index=idx)


class Models(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.dqn = nn.Sequential(nn.Linear(N_IND * 8, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
        self.cnn = nn.Sequential(
            nn.Conv1d(N_IND, 16, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(16, 16, 5, padding=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
            nn.Linear(16, 3),
        )
        self.cob = nn.Sequential(nn.Linear(4 * LEVELS + 6, 64), nn.Tanh(), nn.Linear(64, 4))
        self.ext = nn.Sequential(nn.Linear(WINDOW * 2, 64), nn.ReLU(), nn.Linear(64, 3))


def features(frames: dict[str, pd.DataFrame]) -> dict[str, torch.Tensor]:
    bars = frames["bars"].drop(columns="regime").to_numpy(np.float32)
    bars = np.nan_to_num((bars - bars.mean(0)) / (bars.std(0) + 1e-8))
    book = frames["cob"].to_numpy(np.float32).reshape(-1)
    return {
        "dqn.state": torch.from_numpy(bars[-8:].reshape(1, -1).copy()),
        "cnn.window": torch.from_numpy(bars.T[None].copy()),
        "cob_rl.state": torch.from_numpy(np.concatenate([book, bars[-1, :6]])[None].copy()),
        "extrema.window": torch.from_numpy(bars[:, [3, 4]].reshape(1, -1).copy()),
    }


@torch.no_grad()
def decide(m: Models, t: dict[str, torch.Tensor]) -> tuple[int, dict[str, torch.Tensor]]:
    q = m.dqn(t["dqn.state"])
    out = {
        "dqn.q": q,
        "cnn.logits": m.cnn(t["cnn.window"]),
        "cob_rl.logits": m.cob(t["cob_rl.state"]),
        "extrema.logits": m.ext(t["extrema.window"]),
    }
    return int(q.argmax()), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--episodes", type=int, default=1024)
    ap.add_argument("--flush-rows", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from mlflow import MlflowClient

    tmp = Path(tempfile.mkdtemp(prefix="episode-bench-"))
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}")
    exp = client.create_experiment("bench", artifact_location=(tmp / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    data = market(args.episodes + WINDOW + 1, seed=1)
    models = Models().eval()
    recorder = EpisodeRecorder(client, run_id, flush_rows=args.flush_rows)

    decision_s, record_s = [], []
    for i in range(args.episodes):
        t0 = time.perf_counter()
        window = data.iloc[i : i + WINDOW]
        frames = {
            "bars": window,
            "cob": cob(window.iloc[-1], i),
            "draws": pd.DataFrame({"u": [float(np.random.default_rng(i).random())]}),
        }
        tensors = features(frames)
        action, outputs = decide(models, tensors)
        t1 = time.perf_counter()
        episode = Episode(
            episode_id=f"bench-{i:06d}",
            bar_time=window.index[-1],
            wall_time=time.time(),
            frames=frames,
            tensors=tensors,
            outputs=outputs,
            action=action,
            reward=0.0,
            checkpoint_versions={"dqn": 1, "cnn": 1, "cob_rl": 1, "extrema": 1},
            market={"volatility_regime": "calm", "spread": 1e-4, "trend": 0.1},
            rng={"seed": i},
        )
        t2 = time.perf_counter()
        recorder.record(episode)
        t3 = time.perf_counter()
        decision_s.append(t1 - t0)
        record_s.append(t3 - t1)  # building the Episode + record(): everything recording adds
        _ = t2
    t_flush = time.perf_counter()
    assert recorder.close(timeout=600), recorder.stats().last_error
    flush_wall = time.perf_counter() - t_flush
    stats = recorder.stats()
    store = EpisodeStore(client, run_id)
    t_get = time.perf_counter()
    store.get(f"bench-{args.episodes // 2:06d}")
    get_s = time.perf_counter() - t_get

    dec = statistics.median(decision_s)
    rec = statistics.median(record_s)
    print(f"episodes recorded            : {stats.stored} (flush_rows={args.flush_rows}, dropped {stats.dropped})")
    print(f"decision time (median)       : {dec * 1e3:.3f} ms")
    print(
        f"record cost on decision path : {rec * 1e3:.3f} ms median, "
        f"{statistics.quantiles(record_s, n=100)[98] * 1e3:.3f} ms p99"
    )
    print(f"recording cost / decision    : {rec / dec * 100:.2f} % (target <= 5 %)")
    print(
        f"bytes stored per episode     : {stats.bytes_written / max(stats.stored, 1):,.0f} "
        f"(parts + index, zstd; {stats.bytes_written:,} bytes total)"
    )
    print(f"final flush after the loop   : {flush_wall:.2f} s; fetch one episode by id: {get_s * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
