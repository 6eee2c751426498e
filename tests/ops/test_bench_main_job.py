"""`scripts/bench_main_job.py` starts and measures (a smoke run with tiny sizes, so the script cannot rot): it
once imported a function the CLI no longer had and nothing noticed. The figures themselves are the benchmark's
business, not a test's; this checks that both variants ran the same work and the report is complete."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow  # two trading-system processes: about 20 s


def test_the_main_job_benchmark_runs_and_checks_equal_work(tmp_path: Path) -> None:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_PERSIST_WORKER_PROCESS", None)  # the default configuration, worker process included
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_main_job.py"), "--steps", "10", "--rounds", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(line for line in proc.stdout.splitlines() if line.startswith("BENCH_JSON "))
    report = json.loads(line.removeprefix("BENCH_JSON "))
    assert report["steps"] == 10 and len(report["runs"]) == 2
    assert {run["variant"] for run in report["runs"]} == {"on", "off"}
    assert all(run["work"]["steps_done"] == 10 for run in report["runs"])
    equal = report["equal_work"]
    assert equal["same_bars"] and equal["same_optimizer_steps"] and all(equal["weights_identical_on_vs_off"].values())
    assert report["medians"]["ratio"] > 0
    on = next(run for run in report["runs"] if run["variant"] == "on")
    assert on["cpu_worker_process_s"] > 0  # the worker process ran and its CPU is reported beside the job's
