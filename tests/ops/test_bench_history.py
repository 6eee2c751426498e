"""`scripts/bench_history.py` starts and measures (tiny sizes, so the script cannot rot): both stores hold the
versions asked for, and every restore found the newest one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # two stores and four start-ups: about 15 s


def test_the_history_benchmark_runs_and_restores_the_newest_version(tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench_history.py"),
            "--few",
            "3",
            "--many",
            "12",
            "--rounds",
            "2",
            "--saves",
            "2",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("BENCH_JSON "))
    report = json.loads(line.removeprefix("BENCH_JSON "))
    assert (report["few"], report["many"], report["rounds"]) == (3, 12, 2)
    # round 1 restores the newest built version; round 2 the newest of what round 1 saved after it
    for label, size in (("few", 3), ("many", 12)):
        first, second = report["restored_versions"][label]
        assert first == size and second > size, report["restored_versions"]
    assert all(value > 0 for label in ("few", "many") for value in report["medians"][label].values())
    assert set(report["ratios"]) == {"startup_s", "first_save_s", "save_s"}
