"""The package's architecture, kept true: layers import downward only, private modules are marked, every
module names its public names, MLflow is imported only by the store layer, and nothing hides an import.

The layers, bottom up (docs/architecture.md draws the same picture):

    errors, config         leaves of the public face: errors imports nothing of ours, config only errors
    _policy                pure decisions: imports nothing of ours
    _format                the bytes: _policy
    _observe               logging, alerts, system metrics: _format, _policy
    _store                 the only layer that talks to MLflow: _observe, _format, _policy
    _runtime               the threads: _store and everything below, config
    __init__ loading testing   the rest of the public face: every private layer
    cli                    the command line: the public face and the layers
    integrations episodes legacy   the public face, the layers, cli (to register commands)
    trading                the reference application: the public face, cli, episodes, and _observe's logging

The graph is read from the source with `ast` (every import, also those inside functions), so a new upward
arrow fails here whatever the order in which modules happen to be imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mlflow_persist

PACKAGE = Path(mlflow_persist.__file__).resolve().parent
PUBLIC_FACE = {"__init__", "errors", "config", "testing", "loading"}
PUBLIC_SUBPACKAGES = {"cli", "integrations", "episodes", "legacy", "trading"}
PRIVATE_LAYERS = ("_policy", "_format", "_observe", "_store", "_runtime")
FACE_ABOVE_LAYERS = {"__init__", "loading", "testing"}

_BELOW_RUNTIME = {"_policy", "_format", "_observe", "_store", "errors", "config"}
_FACE_AND_LAYERS = {*PRIVATE_LAYERS, *PUBLIC_FACE}
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "config": {"errors"},
    "_policy": set(),
    "_format": {"_policy", "errors"},
    "_observe": {"_policy", "_format", "errors"},
    "_store": {"_policy", "_format", "_observe", "errors"},
    "_runtime": {*_BELOW_RUNTIME},
    "__init__": {*PRIVATE_LAYERS, "errors", "config", "loading"},
    "loading": {*PRIVATE_LAYERS, "errors", "config"},
    "testing": {*PRIVATE_LAYERS, "errors", "config"},
    "cli": {*_FACE_AND_LAYERS},
    "integrations": {*_FACE_AND_LAYERS},
    "episodes": {*_FACE_AND_LAYERS, "cli"},
    "legacy": {*_FACE_AND_LAYERS, "cli"},
    "trading": {*PUBLIC_FACE, "cli", "episodes", "_observe"},
}
FRAMEWORKS = ("lightning", "pytorch_lightning", "transformers", "accelerate", "stable_baselines3", "gymnasium")


def _modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(relative.parts).removesuffix(".__init__")
        found[name] = ast.parse(path.read_text(encoding="utf-8"))
    return found


MODULES = _modules()


def _room(module: str) -> str:
    """The layer or public part a module of ours belongs to (`mlflow_persist` itself is `__init__`)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _relative_imports_resolved(name: str, tree: ast.Module) -> list[str]:
    """Relative imports (used inside trading/) resolved to absolute module names."""
    package = name if (PACKAGE.parent / Path(*name.split(".")) / "__init__.py").exists() else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
            found.append(".".join([*base, *([node.module] if node.module else [])]))
    return found


def _our_imports(name: str, tree: ast.Module) -> set[str]:
    absolute = [m for m, _ in _absolute_imports(tree)] + _relative_imports_resolved(name, tree)
    return {m for m in absolute if m == "mlflow_persist" or m.startswith("mlflow_persist.")}


def _absolute_imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    result = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "mlflow_persist":
                result.extend(
                    (
                        f"mlflow_persist.{a.name}" if f"mlflow_persist.{a.name}" in MODULES else "mlflow_persist",
                        [a.name],
                    )
                    for a in node.names
                )
            else:
                result.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            result.extend((a.name, []) for a in node.names)
    return result


def test_every_module_belongs_to_a_known_layer_or_public_part() -> None:
    unknown = {name for name in MODULES if _room(name) not in ALLOWED}
    assert unknown == set(), "a module outside the layers; add it to a layer (and to docs/architecture.md)"


def test_imports_point_down_the_layers_only() -> None:
    upward = []
    for name, tree in MODULES.items():
        room = _room(name)
        for target in _our_imports(name, tree):
            other = _room(target)
            if other != room and other not in ALLOWED[room]:
                upward.append(f"{name} ({room}) imports {target} ({other})")
    assert upward == []


def test_the_layering_check_catches_an_upward_arrow() -> None:
    """The check above is not vacuous: a policy module importing the runtime is found."""
    tree = ast.parse("from mlflow_persist._runtime.handle import ModelHandle\n")
    targets = _our_imports("mlflow_persist._policy.policy", tree)
    assert targets == {"mlflow_persist._runtime.handle"}
    assert _room("mlflow_persist._runtime.handle") not in ALLOWED["_policy"]


def test_no_import_cycles_among_top_level_imports() -> None:
    graph = {
        name: {
            m for m, _ in _absolute_imports(ast.Module(body=tree.body, type_ignores=[])) if m in MODULES and m != name
        }
        for name, tree in MODULES.items()
    }
    # only statements at module level create import-time cycles
    graph = {
        name: {m for m in deps if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in MODULES[name].body)}
        for name, deps in graph.items()
    }
    state: dict[str, str] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if nxt.startswith(node + ".") or node.startswith(nxt + "."):
                continue  # a package and its own submodules
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join([*path, node, nxt]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_nothing_hides_an_import() -> None:
    hidden = []
    for name, tree in MODULES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called in ("import_module", "__import__"):
                    hidden.append(f"{name}:{node.lineno}")
    assert hidden == []


def test_private_modules_are_marked_and_the_public_face_is_small() -> None:
    top_level = {name.split(".")[1] for name in MODULES if name.count(".") >= 1}
    unmarked = top_level - PUBLIC_FACE - PUBLIC_SUBPACKAGES - set(PRIVATE_LAYERS)
    assert unmarked == set(), "a new top-level module: make it private (`_name`) or part of the public face"
    assert {
        p.name for p in PACKAGE.iterdir() if p.is_dir() and not p.name.startswith("__")
    } == PUBLIC_SUBPACKAGES | set(PRIVATE_LAYERS)


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.endswith("__main__")))
def test_every_module_names_its_public_names(name: str) -> None:
    tree = MODULES[name]
    declared = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            declared = ast.literal_eval(node.value)
    if declared is None:
        public = [
            n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")
        ]
        assert public == [], f"{name} defines {public} but no __all__"
        return
    defined = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)):
            defined.add(node.name)
        elif isinstance(node, ast.Assign):
            defined.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            defined.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            defined.update((a.asname or a.name).split(".")[0] for a in node.names)
    assert sorted(set(declared) - defined) == [], f"{name}.__all__ names what it does not define or import"


def test_mlflow_and_the_frameworks_stay_out_of_the_core() -> None:
    offenders = []
    for name, tree in MODULES.items():
        room = _room(name)
        if room in PUBLIC_SUBPACKAGES:
            continue
        for module, _ in _absolute_imports(tree):
            top = module.split(".")[0]
            if top == "mlflow" and room != "_store":
                offenders.append(f"{name} imports {module} (only _store talks to MLflow)")
            if top in FRAMEWORKS:
                offenders.append(f"{name} imports the framework {module}")
    assert offenders == []


def test_no_private_names_cross_modules_and_no_fixture_imports() -> None:
    offenders = []
    for name, tree in MODULES.items():
        for module, names in _absolute_imports(tree):
            if module.split(".")[0] == "mlruns_fixtures":
                offenders.append(f"{name} imports {module}")
            if module.startswith("mlflow_persist"):
                offenders += [f"{name} imports {module}.{n}" for n in names if n.startswith("_")]
    assert offenders == []


def test_long_modules_say_why() -> None:
    """One job per module: over 400 lines, a module's docstring says why it is kept whole."""
    unexplained = []
    for name, tree in MODULES.items():
        path = PACKAGE.parent / Path(*name.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > 410 and "Longer than 400 lines:" not in (ast.get_docstring(tree) or ""):
            unexplained.append(f"{name} ({lines} lines)")
    assert unexplained == []


def test_every_runtime_module_has_tests_that_import_it() -> None:
    """Each room of the runtime is tested on its own, not only through `Persistence`."""
    tests_dir = Path(__file__).resolve().parents[1]
    trees = [ast.parse(p.read_text(encoding="utf-8")) for p in tests_dir.rglob("test_*.py")]
    imported = set()
    for node in (n for tree in trees for n in ast.walk(tree)):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            imported.update(a.name for a in node.names)
    untested = [name for name in MODULES if name.startswith("mlflow_persist._runtime.") and name not in imported]
    assert untested == []
