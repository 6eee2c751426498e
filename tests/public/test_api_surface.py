"""The public surface is pinned (as httpx pins its `__all__`); test_layering.py keeps the imports one way."""

from __future__ import annotations

import pytest

import mlflow_persist
import mlflow_persist.errors
import mlflow_persist.testing


def test_public_api_is_pinned() -> None:
    assert sorted(mlflow_persist.__all__) == sorted(
        [
            "FORMAT_VERSION",
            "Alert",
            "AlertSink",
            "CheckpointCorruptError",
            "CheckpointMismatchError",
            "CheckpointState",
            "CheckpointUnavailableError",
            "CheckpointStore",
            "ConfigError",
            "DiskFullError",
            "GracefulExit",
            "MlflowStore",
            "ModelHandle",
            "ModelSettings",
            "NotFoundError",
            "PersistConfig",
            "PersistError",
            "Persistence",
            "ProcessEffects",
            "RestoreInfo",
            "SaveDecision",
            "StoreError",
            "StoreUnavailableError",
            "VersionInfo",
            "load_checkpoint",
            "resolve_tracking_uri",
        ]
    )
    for name in mlflow_persist.__all__:
        assert hasattr(mlflow_persist, name), name
    assert sorted(mlflow_persist.testing.__all__) == ["MemoryRun", "MemoryStore", "STAGES"]
    assert mlflow_persist.testing.STAGES == ("write", "register", "alias", "delete", "load", "metrics", "tag")


def test_every_error_is_a_persist_error() -> None:
    for name in mlflow_persist.errors.__all__:
        value = getattr(mlflow_persist.errors, name)
        if isinstance(value, type):
            assert issubclass(value, mlflow_persist.PersistError), name
    assert issubclass(mlflow_persist.DiskFullError, OSError)


@pytest.mark.slow  # seconds of work: in `make test`, not in `make test-fast`
def test_import_does_not_import_mlflow_until_the_store_is_used() -> None:
    import subprocess
    import sys

    code = (
        "import sys, mlflow_persist; assert 'mlflow' not in sys.modules, 'imported early'; "
        "store = mlflow_persist.MlflowStore; assert 'mlflow' in sys.modules; print(store.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "MlflowStore"


def test_the_examples_import_only_public_names() -> None:
    import ast
    from pathlib import Path

    examples = Path(__file__).resolve().parents[2] / "scripts" / "examples"
    private = []
    for path in sorted(examples.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            private += [f"{path.name}: {m}" for m in modules if any(p.startswith("_") for p in m.split(".")[1:])]
    assert private == []
