"""`scripts/bench_replay_buffer.py` starts and measures at its smoke size (seconds, so that it cannot rot): every
variant took its checkpoints, only those that should hold the replay buffer are its size larger, and every
figure and ratio is there. The figures themselves are not judged (no wall-clock asserts)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_support import run_bench_script

pytest.importorskip("stable_baselines3")
pytestmark = pytest.mark.slow  # three short DQN runs on sqlite stores: about 10 s


def test_the_replay_buffer_benchmark_measures_every_variant(tmp_path: Path) -> None:
    report = run_bench_script("bench_replay_buffer.py", "--smoke", "--dir", str(tmp_path / "stores"), cwd=tmp_path)
    checkpoints = report["checkpoints"] * report["rounds"]
    figures, ratios = report["figures"], report["ratios"]
    assert set(figures) == set(ratios) == {"none", "every", "interval"}
    # the smoke size: a checkpoint every `periodic` steps, the buffer every other one in the interval variant
    assert report["replay_buffer_every_steps"] == 2 * report["periodic"]
    expected = {"none": 0, "every": checkpoints, "interval": checkpoints // 2}
    for variant, figure in figures.items():
        assert figure["checkpoints"] == checkpoints, variant
        assert figure["with_buffer"] == expected[variant], variant
        assert all(figure[key] > 0 for key in ("bytes", "registered_ms", "blocked_ms", "kept_bytes")), variant
        assert set(ratios[variant]) == {"bytes", "registered", "blocked"}, variant
    assert ratios["none"] == {"bytes": 1.0, "registered": 1.0, "blocked": 1.0}
    # one buffer more per checkpoint that holds it
    assert figures["every"]["bytes"] - figures["none"]["bytes"] >= 0.9 * report["buffer_bytes"]
    assert ratios["none"]["bytes"] < ratios["interval"]["bytes"] < ratios["every"]["bytes"]
