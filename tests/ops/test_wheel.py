"""The package as a user gets it: `python -m build` makes a wheel, a fresh venv installs it, and outside the
repository the CLI, the import and a 20-line training loop work; the trading system asks for its extra in one
line.

The fresh venv does not download and install torch, MLflow and the rest again (two minutes here): it sees the
dependencies already installed in this venv through a site directory of links to them (a `.pth` file), which
leaves out this checkout's editable `mlflow_persist` and the trading extra's package, and the wheel is installed
with `pip install --no-deps`. What that skips, resolving the wheel's dependencies, is checked on its own: the
wheel's `Requires-Dist` are exactly pyproject.toml's dependencies and extras, and `pip check` in the fresh
venv finds every one of them satisfied by what it sees."""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
import sysconfig
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

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

# Distributions the fresh venv must not see from this venv: this checkout (installed editable here) and the
# trading extra, whose absence the last check needs.
HIDDEN_DISTRIBUTIONS = ("mlflow-persist", "gym-anytrading")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "MLFLOW_TRACKING_URI")}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    return env


def _run(args: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def _hidden_entries(site_packages: Path) -> set[str]:
    """The top-level names in `site_packages` that belong to HIDDEN_DISTRIBUTIONS (packages, modules,
    dist-info, .pth files and the editable finder)."""
    hidden: set[str] = set()
    for dist in importlib.metadata.distributions(path=[str(site_packages)]):
        if dist.metadata["Name"] and dist.metadata["Name"].lower().replace("_", "-") in HIDDEN_DISTRIBUTIONS:
            hidden |= {Path(str(f)).parts[0] for f in dist.files or ()}
    return hidden


def _dependencies_view(view: Path) -> None:
    """A directory of symlinks to this venv's site-packages, without HIDDEN_DISTRIBUTIONS."""
    site_packages = Path(sysconfig.get_paths()["purelib"])
    hidden = _hidden_entries(site_packages)
    assert any(h.startswith("mlflow_persist-") and h.endswith(".dist-info") for h in hidden), hidden
    view.mkdir()
    for entry in site_packages.iterdir():
        if entry.name not in hidden and entry.name != "__pycache__":
            (view / entry.name).symlink_to(entry)


def _requirements(lines: list[str]) -> set[str]:
    return {str(Requirement(line)) for line in lines}


def _check_dependency_metadata(metadata: str) -> None:
    """The check the --no-deps install skips: what pip would resolve is exactly what pyproject.toml declares."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = _requirements(project["dependencies"])
    for extra, requirements in project["optional-dependencies"].items():
        declared |= {f'{Requirement(r)}; extra == "{extra}"' for r in requirements}
    requires = _requirements(re.findall(r"^Requires-Dist: (.+)$", metadata, flags=re.MULTILINE))
    assert requires == _requirements(sorted(declared))
    extras = set(re.findall(r"^Provides-Extra: (.+)$", metadata, flags=re.MULTILINE))
    assert extras == set(project["optional-dependencies"])


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
    assert "License-Expression: MIT" in metadata and "Requires-Dist: tenacity" in metadata  # retries (restore, create)
    assert "Provides-Extra: trading" in metadata
    _check_dependency_metadata(metadata)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    python = venv / "bin" / "python"
    view = tmp_path / "dependencies"
    _dependencies_view(view)
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path)
    # A site directory (its own .pth files run too), after the venv's own: what pip installs there wins.
    (Path(purelib.stdout.strip()) / "zz_dependencies.pth").write_text(f"import site; site.addsitedir({str(view)!r})\n")
    hidden = _run([str(python), "-c", "import importlib.util as u; print(u.find_spec('mlflow_persist'))"], cwd=tmp_path)
    assert hidden.stdout.strip() == "None", hidden.stdout  # the fresh venv does not see this checkout
    _run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], cwd=tmp_path)
    # Every dependency the wheel declares is satisfied by what the fresh venv sees.
    assert "No broken requirements found" in _run([str(python), "-m", "pip", "check"], cwd=tmp_path).stdout

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
