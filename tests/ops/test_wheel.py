"""The package as a user gets it: `python -m build` makes a wheel, a fresh venv installs it (torch's CPU wheel
first, as the Makefile does), and outside the repository the CLI, the import and a 20-line training loop
work; the trading system asks for its extra in one line."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

EXAMPLE = textwrap.dedent("""
    import torch
    import mlflow_persist as mp

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 4), torch.randn(64, 1)
    config = mp.PersistConfig(periodic_every_steps=10, log_system_metrics=False)
    with mp.Persistence(config) as persist:
        handle = persist.track("example", model, optimizer)
        restored = handle.restore()
        for _ in range(30):
            loss = torch.nn.functional.mse_loss(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            handle.step(loss=loss.item())
    print("restored:", restored.step if restored else None, "step:", handle.current_step)
""")


def _run(args: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI")}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_the_built_wheel_installs_and_works_without_the_repository(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(ROOT)], cwd=tmp_path)
    wheel = next(dist.glob("mlflow_persist-*.whl"))
    import mlflow_persist

    assert wheel.name.startswith(f"mlflow_persist-{mlflow_persist.__version__}-")  # the version lives in one place
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "mlflow_persist/py.typed" in names
    assert not any(n.startswith(("tests/", "scripts/", "mlruns_fixtures/")) for n in names)
    assert "License-Expression: MIT" in metadata and "tenacity" not in metadata
    assert "Provides-Extra: trading" in metadata

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    _run([str(python), "-m", "pip", "install", "-q", "torch==2.13.0"], cwd=tmp_path)
    _run([str(python), "-m", "pip", "install", "-q", str(wheel)], cwd=tmp_path)

    work = tmp_path / "work"
    work.mkdir()
    help_text = _run([str(venv / "bin" / "mlflow-persist"), "--help"], cwd=work).stdout
    assert "status" in help_text and "run" in help_text
    located = _run(
        [
            str(python),
            "-c",
            "import mlflow_persist, sys; print(mlflow_persist.__file__); print('mlflow' in sys.modules)",
        ],
        cwd=work,
    ).stdout.split()
    assert located[0].startswith(str(venv)) and located[1] == "False"  # the installed copy, MLflow not imported
    (work / "example.py").write_text(EXAMPLE, encoding="utf-8")
    assert _run([str(python), "example.py"], cwd=work).stdout.strip() == "restored: None step: 30"
    assert _run([str(python), "example.py"], cwd=work).stdout.strip() == "restored: 30 step: 60"
    status = _run([str(venv / "bin" / "mlflow-persist"), "status", "--json"], cwd=work).stdout
    assert '"example"' in status

    trading = subprocess.run(
        [str(venv / "bin" / "mlflow-persist"), "run", "--steps", "1", "--no-progress"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    assert trading.returncode != 0 and "Traceback" not in trading.stderr
    assert "pip install 'mlflow-persist[trading]'" in trading.stderr
