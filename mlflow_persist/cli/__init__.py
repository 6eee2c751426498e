"""The `mlflow-persist` command line: the typer app, its shared options and the exit-code contract."""

from __future__ import annotations

from mlflow_persist.cli.main import app, main, run_app

__all__ = ["app", "main", "run_app"]
