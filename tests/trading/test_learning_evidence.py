"""scripts/learning_evidence.py runs, resumes its system checkpoint half-way, and prints every model against
its baseline; docs/trading.md holds a table the script made (`--write` rewrites it)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from zygote import Zygote

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_learning_evidence_script_prints_each_model_against_its_baseline(zygote: Zygote) -> None:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    result = zygote.run(  # a child of a pre-imported Python (tests/zygote.py)
        [sys.executable, str(ROOT / "scripts" / "learning_evidence.py"), "--bars", "240", "--holdout", "60"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Trained 240 bars (restarted at bar 120), scored on the next 60 bars" in result.stdout
    for name in ("cnn", "extrema", "dqn", "cob_rl"):
        row = next(line for line in result.stdout.splitlines() if line.startswith(f"| {name} |"))
        before, after = row.rsplit("|", 2)[1].split(" / ")
        assert before.strip() and after.strip(), row  # the smoothed monitor exists on both sides of the restart


def test_the_trading_page_holds_the_learning_evidence_the_script_writes() -> None:
    page = (ROOT / "docs" / "trading.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- learning-evidence:start -->(.*?)<!-- learning-evidence:end -->", page, re.S)
    assert block is not None
    text = block.group(1)
    assert "| model | held-out score | trivial baseline |" in text
    assert all(f"| {name} |" in text for name in ("cnn", "extrema", "dqn", "cob_rl"))
    assert "Made by `python scripts/learning_evidence.py" in text
