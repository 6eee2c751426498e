"""Running a benchmark script the way `make bench` does, at smoke sizes, and reading its BENCH_JSON report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def run_script(script: str, *args: str, cwd: Path) -> str:
    """Run `scripts/<script>` with `args` in `cwd` (the default configuration: no worker-process override);
    its exit status must be 0; returns what it printed."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONPATH": str(ROOT)}
    env.pop("MLFLOW_PERSIST_WORKER_PROCESS", None)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def run_bench_script(script: str, *args: str, cwd: Path) -> dict[str, Any]:
    """`run_script`, returning the report of its last BENCH_JSON line."""
    output = run_script(script, *args, cwd=cwd)
    line = next(line for line in reversed(output.splitlines()) if line.startswith("BENCH_JSON "))
    report: dict[str, Any] = json.loads(line.removeprefix("BENCH_JSON "))
    return report
