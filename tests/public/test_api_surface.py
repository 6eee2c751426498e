"""The public surface is pinned (as httpx pins its `__all__`), and imports inside the package run one way:
no cycles among the core modules, no private names imported across modules, nothing from `mlruns_fixtures`,
and the core never imports the integrations or MLflow outside the MLflow store."""

from __future__ import annotations

import ast
from pathlib import Path

import mlflow_persist
import mlflow_persist.errors
import mlflow_persist.testing

PACKAGE = Path(mlflow_persist.__file__).resolve().parent
INTEGRATIONS = ("trading", "episodes", "legacy", "integrations")
FRAMEWORKS = ("lightning", "pytorch_lightning", "transformers", "accelerate", "stable_baselines3", "gymnasium")
# Core modules allowed to import mlflow: the MLflow adapter itself.
MLFLOW_ADAPTERS = {"mlflow_persist.store", "mlflow_persist.version_create"}  # the adapter and its REST create


def test_public_api_is_pinned() -> None:
    assert sorted(mlflow_persist.__all__) == sorted(
        [
            "FORMAT_VERSION",
            "Alert",
            "AlertSink",
            "CheckpointCorruptError",
            "CheckpointMismatchError",
            "CheckpointState",
            "CheckpointStore",
            "ConfigError",
            "DiskFullError",
            "GracefulExit",
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


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(relative.parts).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text(encoding="utf-8"))
    return found


def _imports(tree: ast.Module, top_level_only: bool) -> list[tuple[str, list[str]]]:
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    result = []
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            result.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            result.extend((a.name, []) for a in node.names)
    return result


def _is_core(name: str) -> bool:
    parts = name.split(".")
    return len(parts) == 2 and parts[0] == "mlflow_persist" and parts[1] not in ("cli", *INTEGRATIONS)


def test_core_modules_import_without_cycles() -> None:
    modules = _modules()
    graph = {
        name: {m for m, _ in _imports(tree, top_level_only=True) if _is_core(m) and m != name}
        for name, tree in modules.items()
        if _is_core(name)
    }
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in graph.get(node, ()):
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join([*path, node, nxt]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = "done"

    for name in graph:
        if name not in state:
            visit(name, [])


def test_no_private_names_cross_modules_and_no_fixture_imports() -> None:
    offenders = []
    for name, tree in _modules().items():
        for module, names in _imports(tree, top_level_only=False):
            if module.split(".")[0] == "mlruns_fixtures":
                offenders.append(f"{name} imports {module}")
            if module.startswith("mlflow_persist"):
                offenders += [f"{name} imports {module}.{n}" for n in names if n.startswith("_")]
    assert offenders == []


def test_the_core_imports_no_integration_and_mlflow_only_in_its_adapter() -> None:
    offenders = []
    for name, tree in _modules().items():
        if not _is_core(name):
            continue
        for module, _ in _imports(tree, top_level_only=False):
            parts = module.split(".")
            if (
                parts[0] == "mlflow_persist"
                and len(parts) > 1
                and parts[1] in INTEGRATIONS
                and name not in MLFLOW_ADAPTERS
            ):
                offenders.append(f"{name} imports {module}")
            if parts[0] == "mlflow" and name not in MLFLOW_ADAPTERS:
                offenders.append(f"{name} imports {module}")
            if parts[0] in FRAMEWORKS:
                offenders.append(f"{name} imports the framework {module}")
    assert offenders == []
