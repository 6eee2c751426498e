"""Run every benchmark and regenerate the performance table of docs/benchmarks.md from what they printed.

The four benchmarks run one after another, each in its own processes, on whatever machine this is (run it
on a quiet one: every figure is a ratio against a baseline measured in the same run, but two cores shared
with another job still skew them):

- scripts/benchmark_checkpoint.py: step() cost, 100 MB durable and restore, 100 KB saves and round trips;
- scripts/bench_side_by_side.py: training time lost per 300 MB checkpoint against torch.save + fsync and
  Lightning ModelCheckpoint + MLFlowLogger, and peak RSS;
- scripts/bench_main_job.py: the trading job's steps/s with persistence on against off;
- scripts/bench_history.py: start-up restore and one save's work with 5,000 registered versions against 10.

The table sits between the `<!-- bench-table:start -->` and `<!-- bench-table:end -->` markers of
docs/benchmarks.md; only what lies between them is rewritten.

Usage: python scripts/bench_report.py [--from results.json] [--out bench-results.json] [--no-write]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- bench-table:start -->", "<!-- bench-table:end -->"
BENCHMARKS = {
    "checkpoint": ["scripts/benchmark_checkpoint.py"],
    "side_by_side": ["scripts/bench_side_by_side.py"],
    "main_job": ["scripts/bench_main_job.py"],
    "history": ["scripts/bench_history.py"],
}


def run_benchmark(name: str) -> dict[str, Any]:
    command = [sys.executable, *BENCHMARKS[name]]
    print(f"== {' '.join(command)}", flush=True)
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    process = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    for line in process.stdout.splitlines():
        if not line.startswith("BENCH_JSON "):
            print(line)
    if process.returncode != 0:
        raise SystemExit(
            f"{BENCHMARKS[name][0]} failed (exit {process.returncode}); its last output:\n" + process.stderr[-3000:]
        )
    lines = [line for line in process.stdout.splitlines() if line.startswith("BENCH_JSON ")]
    if not lines:
        raise SystemExit(f"{BENCHMARKS[name][0]} printed no BENCH_JSON line; run it by hand to see why.")
    return json.loads(lines[-1][len("BENCH_JSON ") :])


Row = tuple[str, str, str, str, bool | None]  # figure, measured, baseline, target, met


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def checkpoint_rows(c: dict[str, Any]) -> list[Row]:
    size = f"{c['size_mb']:.0f} MB"
    return [
        (
            "`step()` with nothing to save, default config",
            f"{c['step_default_us']:.1f} µs",
            f"{c['step_quiet_us']:.1f} µs with the flush deferred and the scheduler idle",
            "≤ 3 µs",
            c["step_default_us"] <= 3,
        ),
        (
            f"{size}: `step()` until durable and registered",
            _ratio(c["durable_ratio"]),
            f"torch.save + fsync {c['save_fsync_ms']:.0f} ms (ours {c['durable_ms']:.0f} ms; step() blocked "
            f"{c['blocked_ms']:.1f} ms)",
            "≤ 1.2x",
            c["durable_ratio"] <= 1.2,
        ),
        (
            f"{size}: verified `restore()` into a fresh model",
            _ratio(c["restore_ratio"]),
            f"torch.load(weights_only=True) {c['torch_load_ms']:.0f} ms (ours {c['restore_ms']:.0f} ms)",
            "≤ 1x",
            c["restore_ratio"] <= 1,
        ),
        (
            f"{size}: `load_checkpoint()`",
            _ratio(c["load_checkpoint_ratio"]),
            f"the same torch.load (ours {c['load_checkpoint_ms']:.0f} ms; tensors memory-mapped)",
            "≤ 1.5x",
            c["load_checkpoint_ratio"] <= 1.5,
        ),
        (
            f'{size} with `weights_format="safetensors"`: until registered / restore, against the torch format',
            f"**{c['safetensors_durable_ratio']:.2f}x / {c['safetensors_restore_ratio']:.2f}x**",
            f"torch format {c['durable_ms']:.0f} ms / {c['restore_ms']:.0f} ms (safetensors "
            f"{c['durable_safetensors_ms']:.0f} ms / {c['restore_safetensors_ms']:.0f} ms)",
            "-",
            None,
        ),
        (
            "100 KB checkpoint: `step()` until registered, alone (a save on every step; `max_overhead=1`)",
            f"{c['small_ms']:.1f} ms",
            "-",
            "≤ 15 ms",
            c["small_ms"] <= 15,
        ),
        (
            "registry round trips per save, steady state",
            f"{c['round_trips_per_save']:.1f}",
            ", ".join(f"{k} {v:g}" for k, v in c["round_trips"].items()),
            "≤ 3",
            c["round_trips_per_save"] <= 3,
        ),
    ]


def side_by_side_rows(s: dict[str, Any]) -> list[Row]:
    lost = {v: s["medians"][v]["lost_per_checkpoint_seconds"] for v in s["medians"] if v != "plain"}
    ratios, bound = s["ratios"], s.get("memory_bound") or {}
    rows: list[Row] = [
        (
            "training time lost per persisted 300 MB checkpoint (100 MB model + Adam), against torch.save + fsync",
            _ratio(ratios.get("persist_vs_sync")),
            f"sync {lost.get('sync', 0) * 1000:.0f} ms, ours {lost.get('persist', 0) * 1000:.0f} ms",
            "≤ 0.35x",
            None if ratios.get("persist_vs_sync") is None else ratios["persist_vs_sync"] <= 0.35,
        ),
    ]
    if ratios.get("persist_vs_lightning") is not None:
        rows.append(
            (
                'the same, against Lightning ModelCheckpoint + MLFlowLogger(log_model="all")',
                _ratio(ratios["persist_vs_lightning"]),
                f"Lightning {lost['lightning'] * 1000:.0f} ms",
                "≤ 0.15x",
                ratios["persist_vs_lightning"] <= 0.15,
            )
        )
    if bound:
        rows.append(
            (
                "peak RSS while saving 300 MB checkpoints",
                f"{bound['persist_peak_rss_kb'] / 1024:.0f} MB",
                f"model + optimizer + 2 snapshots + 10% + the plain run's own memory + MLflow's import: "
                f"{(bound['bound_kb'] + (bound.get('persist_import_overhead_kb') or 0)) / 1024:.0f} MB",
                "≤ 1.0x of that",
                (bound.get("persist_vs_bound_plus_imports") or 9) <= 1.0,
            )
        )
    return rows


def main_job_rows(m: dict[str, Any]) -> list[Row]:
    medians, saves = m["medians"], m["saves"]
    return [
        (
            "main job steps/s with persistence (default config, episodes on)",
            f"{medians['ratio'] * 100:.0f}%",
            f"persistence off {medians['off_steps_per_s']:.0f} steps/s, on {medians['on_steps_per_s']:.0f}",
            "≥ 95%",
            medians["ratio"] >= 0.95,
        ),
        (
            "100 KB checkpoints in the main job: save time (step() to registered), p90",
            f"{saves['save_duration_p90_s'] * 1000:.0f} ms",
            f"median {saves['save_duration_median_s'] * 1000:.0f} ms over {saves['save_duration_n']} saves",
            "≤ 30 ms",
            saves["save_duration_p90_s"] <= 0.030,
        ),
    ]


def history_rows(h: dict[str, Any]) -> list[Row]:
    few, many, medians, ratios = h["few"], h["many"], h["medians"], h["ratios"]
    return [
        (
            f"start-up restore with {many:,} registered versions / with {few}",
            _ratio(ratios[key]),
            f"{medians['few'][key] * 1000:.0f} ms with {few}, {medians['many'][key] * 1000:.0f} ms with {many:,}",
            f"≤ {h['target_ratio']}x",
            ratios[key] <= h["target_ratio"],
        )
        if key == "startup_s"
        else (
            f"one save's work (to registered) with {many:,} versions / with {few}",
            _ratio(ratios[key]),
            f"{medians['few'][key] * 1000:.0f} ms with {few}, {medians['many'][key] * 1000:.0f} ms with {many:,} "
            f"(the first save after start-up: {medians['few']['first_save_s'] * 1000:.0f} ms and "
            f"{medians['many']['first_save_s'] * 1000:.0f} ms)",
            f"≤ {h['target_ratio']}x",
            ratios[key] <= h["target_ratio"],
        )
        for key in ("startup_s", "save_s")
    ]


def table(results: dict[str, Any]) -> str:
    makers: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
        "side_by_side": side_by_side_rows,
        "checkpoint": checkpoint_rows,
        "main_job": main_job_rows,
        "history": history_rows,
    }
    rows = [row for name, make in makers.items() if name in results for row in make(results[name])]
    checkpoint = results.get("checkpoint", {})
    lines = [
        f"Measured {results['date']} on {checkpoint.get('machine', 'this machine')}, torch "
        f"{checkpoint.get('torch', '?')}, sqlite store; regenerated by `make bench` "
        "(scripts/bench_report.py) from the benchmarks' own output.",
        "",
        "| figure | measured | baseline (same run) | target | met |",
        "|---|---|---|---|---|",
    ]
    for figure, measured, baseline, target, met in rows:
        lines.append(
            f"| {figure} | **{measured}** | {baseline} | {target} | "
            f"{'yes' if met else 'no' if met is not None else 'n/a'} |"
        )
    return "\n".join(lines)


def write_page(text: str, page: Path = PAGE) -> None:
    """Replace what lies between the bench-table markers of `page` with `text`."""
    content = page.read_text(encoding="utf-8")
    if START not in content or END not in content:
        raise SystemExit(f"{page} has no {START} ... {END} section to regenerate.")
    head, rest = content.split(START, 1)
    _, tail = rest.split(END, 1)
    page.write_text(f"{head}{START}\n{text}\n{END}{tail}", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="source", help="regenerate from a results file instead of running")
    parser.add_argument("--out", default="bench-results.json", help="where the raw results go")
    parser.add_argument(
        "--only",
        default=",".join(BENCHMARKS),
        help="comma list of " + ", ".join(BENCHMARKS) + "; the others keep their figures from --out",
    )
    parser.add_argument("--no-write", "--no-readme", dest="no_write", action="store_true", help="print the table only")
    args = parser.parse_args()
    if args.source:
        results = json.loads(Path(args.source).read_text(encoding="utf-8"))
    else:
        out = Path(args.out)
        previous = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}
        results = {**previous, "date": time.strftime("%Y-%m-%d")}  # with --only, the other figures stay
        for name in args.only.split(","):
            results[name] = run_benchmark(name)
        Path(args.out).write_text(json.dumps(results, indent=1), encoding="utf-8")
        print(f"raw results: {args.out}")
    text = table(results)
    print(text)
    if not args.no_write:
        write_page(text)
        print(f"{PAGE.relative_to(ROOT)} performance table regenerated")


if __name__ == "__main__":
    main()
