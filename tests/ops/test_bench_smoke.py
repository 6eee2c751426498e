"""The other benchmark scripts start and measure at smoke sizes (seconds each), so that none can rot: each one
`make bench` runs (checkpoint costs, the side-by-side training loss) and the two episode-recording benchmarks.
The figures are not judged here (no wall-clock asserts); what is checked is that each measured what it says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from bench_support import run_bench_script, run_script

pytestmark = pytest.mark.slow  # a subprocess each, 5-20 s


def test_the_checkpoint_benchmark_measures_every_figure(tmp_path: Path) -> None:
    report = run_bench_script(
        "benchmark_checkpoint.py", "--repeats", "1", "--size-mb", "1", "--step-seconds", "0.5", cwd=tmp_path
    )
    assert report["size_mb"] == 1.0
    for key in ("step_quiet_us", "step_default_us", "save_fsync_ms", "durable_ms", "torch_load_ms", "restore_ms"):
        assert report[key] > 0, key
    assert report["durable_safetensors_ms"] > 0 and report["restore_safetensors_ms"] > 0  # the weights-format rows
    assert report["small_ms"] > 0
    # every steady-state save creates a version; the rest are the alias move and retention's deletion
    assert report["round_trips"]["create_model_version"] == 1.0 and report["round_trips_per_save"] >= 2


def test_the_side_by_side_benchmark_saves_in_every_variant_that_should(tmp_path: Path) -> None:
    steps = 3
    report = run_bench_script(
        "bench_side_by_side.py",
        *("--model-mb", "1", "--steps", str(steps), "--warmup", "1", "--rounds", "1", "--batch", "4"),
        *("--variants", "plain,sync,persist", "--dir", str(tmp_path)),
        cwd=tmp_path,
    )
    medians = report["medians"]
    assert set(medians) == {"plain", "sync", "persist"}
    assert medians["plain"]["saves"] == 0 and medians["sync"]["saves"] == steps
    assert 1 <= medians["persist"]["saves"] <= steps  # every step an improvement; a newer one may replace a waiting one
    assert all(medians[v]["seconds_per_step"] > 0 for v in medians)


def test_the_episode_recording_benchmark_records_and_fetches_episodes(tmp_path: Path) -> None:
    output = run_script("benchmark_episodes.py", "--episodes", "2", cwd=tmp_path)
    assert re.search(r"episodes recorded\s+: 2 \(flush_rows=\d+, dropped 0\)", output), output
    assert re.search(r"bytes stored per episode\s+: [\d,]+", output) and "fetch one episode by id" in output


def test_the_trading_episode_benchmark_runs_with_and_without_recording(tmp_path: Path) -> None:
    output = run_script("benchmark_trading_episodes.py", "--steps", "30", "--compare", cwd=tmp_path)
    assert re.search(r"bars/s without recording\s+: [\d.]+ \(with: [\d.]+\)", output), output
    assert "writer time per episode" in output
