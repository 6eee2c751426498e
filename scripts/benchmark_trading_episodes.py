"""Benchmark episode recording inside the real trading run (the `mlflow-persist run` wiring).

Runs the reference trading system in-process on a fresh sqlite store in a temp dir with the same
recorder `run` uses (`mlflow_persist.trading.recording.open_recorder`), and times:
- the decision (`TradingOrchestrator._decide`: frames, features, the four models) and the whole bar;
- `record()` as the orchestrator calls it (everything recording adds to the decision path);
- each background flush (encode + Parquet + upload + index + lineage), to see whether the writer keeps
  up with the bars, and the largest backlog it left;
- the bytes stored per episode.
With --compare it first runs the same bars without recording, for the end-to-end steps/s cost.

    MLFLOW_DISABLE_TELEMETRY=true .venv/bin/python scripts/benchmark_trading_episodes.py [--steps 600]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import torch  # noqa: E402

from mlflow_persist import PersistConfig, Persistence  # noqa: E402
from mlflow_persist.trading.app import with_trading_defaults  # noqa: E402
from mlflow_persist.trading.recording import open_recorder  # noqa: E402
from mlflow_persist.trading.system import EnhancedRealtimeTrainingSystem  # noqa: E402


def timed(store: list[float], fn: Any) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            store.append(time.perf_counter() - t0)

    return wrapper


def run(steps: int, seed: int, record: bool, flush_rows: int) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="trading-episode-bench-"))
    config = with_trading_defaults(PersistConfig(tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}"))
    out: dict[str, Any] = {
        "decide": [],
        "bar": [],
        "record": [],
        "flush": [],
        "flush_cpu": [],
        "flush_rows": [],
        "backlog": 0,
    }
    with Persistence(config, install_signal_handlers=False) as persistence:
        recorder = open_recorder(persistence, flush_rows=flush_rows) if record else None
        system = EnhancedRealtimeTrainingSystem(persistence, seed=seed, recorder=recorder)
        system.start()
        orch = system.orchestrator
        assert orch is not None
        orch._decide = timed(out["decide"], orch._decide)  # type: ignore[method-assign]
        orch.on_bar = timed(out["bar"], orch.on_bar)  # type: ignore[method-assign]
        on_step = None
        if recorder is not None:
            recorder.attach(orch.serving)
            recorder.record = timed(out["record"], recorder.record)  # type: ignore[method-assign]
            inner = recorder.recorder
            write = inner._write

            def timed_write(batch: list[Any]) -> None:
                t0, c0 = time.perf_counter(), time.thread_time()
                write(batch)
                out["flush"].append(time.perf_counter() - t0)
                out["flush_cpu"].append(time.thread_time() - c0)
                out["flush_rows"].append(len(batch))

            inner._write = timed_write  # type: ignore[method-assign]

            def on_step(decision: Any) -> None:
                recorder.after_bar()
                out["backlog"] = max(out["backlog"], inner.stats().buffered)

        t0, c0 = time.perf_counter(), time.process_time()
        system.run(steps=steps, on_step=on_step)
        out["run_s"] = time.perf_counter() - t0
        out["run_cpu"] = time.process_time() - c0
        if recorder is not None:
            t1 = time.perf_counter()
            assert recorder.close(timeout=600), recorder.stats().last_error
            out["close_s"] = time.perf_counter() - t1
            out["stats"] = recorder.stats()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--flush-rows", type=int, default=256)
    ap.add_argument("--compare", action="store_true", help="Also run without recording (steps/s cost).")
    args = ap.parse_args()
    torch.set_num_threads(1)
    base = run(args.steps, args.seed, record=False, flush_rows=args.flush_rows) if args.compare else None
    res = run(args.steps, args.seed, record=True, flush_rows=args.flush_rows)
    med = statistics.median
    dec, bar, rec = med(res["decide"]), med(res["bar"]), med(res["record"])
    stats = res["stats"]
    per_ep_write = sum(res["flush"]) / max(sum(res["flush_rows"]), 1)
    per_ep_cpu = sum(res["flush_cpu"]) / max(sum(res["flush_rows"]), 1)
    print(
        f"bars                          : {args.steps} in {res['run_s']:.1f} s ({args.steps / res['run_s']:.1f} bars/s)"
    )
    print(f"decision time (median)        : {dec * 1e3:.2f} ms; whole bar with training {bar * 1e3:.2f} ms")
    print(
        f"record() on the decision path : {rec * 1e3:.3f} ms median, "
        f"{statistics.quantiles(res['record'], n=100)[98] * 1e3:.3f} ms p99"
    )
    print(
        f"recording cost / decision     : {rec / dec * 100:.2f} % (target <= 5 %); / whole bar {rec / bar * 100:.2f} %"
    )
    print(
        f"bytes stored per episode      : {stats.bytes_written / max(stats.stored, 1):,.0f} "
        f"({stats.stored} episodes, {stats.bytes_written:,} bytes, dropped {stats.dropped}); plus "
        f"{stats.weights_stored} kept model weights, {stats.weights_bytes:,} bytes"
    )
    print(
        f"background flushes            : {len(res['flush'])} ({', '.join(f'{n} in {s:.2f}s' for n, s in zip(res['flush_rows'], res['flush']))})"
    )
    print(
        f"writer time per episode       : {per_ep_cpu * 1e3:.1f} ms CPU, {per_ep_write * 1e3:.1f} ms wall vs "
        f"{bar * 1e3:.1f} ms per bar "
        f"({'keeps up' if per_ep_write < bar else 'FALLS BEHIND'}); largest backlog {res['backlog']} episodes; "
        f"close() {res['close_s']:.2f} s"
    )
    if base is not None:
        print(
            f"bars/s without recording      : {args.steps / base['run_s']:.1f} (with: {args.steps / res['run_s']:.1f}); "
            f"bar median {med(base['bar']) * 1e3:.2f} ms vs {bar * 1e3:.2f} ms; process CPU per bar "
            f"{base['run_cpu'] / args.steps * 1e3:.1f} ms vs {res['run_cpu'] / args.steps * 1e3:.1f} ms"
        )


if __name__ == "__main__":
    main()
