"""`scripts/bench_history.py` starts and measures (tiny sizes, so the script cannot rot): both stores hold the
versions asked for, and every restore found the newest one."""

from __future__ import annotations

from pathlib import Path

import pytest
from bench_support import run_bench_script

pytestmark = pytest.mark.slow  # two stores and four start-ups: about 15 s


def test_the_history_benchmark_runs_and_restores_the_newest_version(tmp_path: Path) -> None:
    report = run_bench_script(
        "bench_history.py", "--few", "3", "--many", "12", "--rounds", "2", "--saves", "2", cwd=tmp_path
    )
    assert (report["few"], report["many"], report["rounds"]) == (3, 12, 2)
    # round 1 restores the newest built version; round 2 the newest of what round 1 saved after it
    for label, size in (("few", 3), ("many", 12)):
        first, second = report["restored_versions"][label]
        assert first == size and second > size, report["restored_versions"]
    assert all(value > 0 for label in ("few", "many") for value in report["medians"][label].values())
    assert set(report["ratios"]) == {"startup_s", "first_save_s", "save_s"}
