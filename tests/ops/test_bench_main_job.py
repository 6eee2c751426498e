"""`scripts/bench_main_job.py` starts and measures (a smoke run with tiny sizes, so the script cannot rot): it
once imported a function the CLI no longer had and nothing noticed. The figures themselves are the benchmark's
business, not a test's; this checks that both variants ran the same work and the report is complete."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_support import run_bench_script

pytestmark = pytest.mark.slow  # two trading-system processes: about 20 s


def test_the_main_job_benchmark_runs_and_checks_equal_work(tmp_path: Path) -> None:
    report = run_bench_script("bench_main_job.py", "--steps", "10", "--rounds", "1", cwd=tmp_path)
    assert report["steps"] == 10 and len(report["runs"]) == 2
    assert {run["variant"] for run in report["runs"]} == {"on", "off"}
    assert all(run["work"]["steps_done"] == 10 for run in report["runs"])
    equal = report["equal_work"]
    assert equal["same_bars"] and equal["same_optimizer_steps"] and all(equal["weights_identical_on_vs_off"].values())
    assert report["medians"]["ratio"] > 0
    on = next(run for run in report["runs"] if run["variant"] == "on")
    assert on["cpu_worker_process_s"] > 0  # the worker process ran and its CPU is reported beside the job's
