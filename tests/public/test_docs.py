"""The documentation is generated from the code where it can be, and the README leads to all of it.

- docs/configuration.md's reference table is what scripts/config_reference.py generates from `PersistConfig`
  at build time (docs/hooks.py puts it where the page's marker is), and a field without a documented default
  fails it;
- docs/cli.md's reference of every command and option is generated from the typer app the same way;
- the README stays short and links every page of docs/, and every page is in mkdocs.yml's nav;
- scripts/bench_report.py rewrites only the table between the markers of docs/benchmarks.md.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

from mlflow_persist.config import PersistConfig

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
README_MAX_LINES = 200


def load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"docs_test_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def hooks() -> ModuleType:
    return load(DOCS / "hooks.py")


@pytest.fixture(scope="module")
def config_reference() -> ModuleType:
    return load(ROOT / "scripts" / "config_reference.py")


class FakeFile:
    def __init__(self, src_uri: str) -> None:
        self.src_uri = src_uri


class FakePage:
    def __init__(self, src_uri: str) -> None:
        self.file = FakeFile(src_uri)


def render(hooks: ModuleType, page: str) -> str:
    """What the build makes of a docs page's Markdown (the hook's part of it)."""
    markdown = (DOCS / page).read_text(encoding="utf-8")
    return hooks.on_page_markdown(markdown, page=FakePage(page), config=None, files=None)


# ------------------------------------------------------------------------------------------------ configuration


def test_the_configuration_page_documents_every_config_field_with_its_default(
    hooks: ModuleType, config_reference: ModuleType
) -> None:
    assert config_reference.undocumented() == [], "every config field needs a description and a default"
    page = (DOCS / "configuration.md").read_text(encoding="utf-8")
    assert page.count(hooks.CONFIG_MARKER) == 1, "docs/configuration.md lost the marker the table goes to"
    built = render(hooks, "configuration.md")
    assert hooks.CONFIG_MARKER not in built
    for row in config_reference.reference_rows():
        assert row in built, f"the built configuration page misses {row}"
    for name in PersistConfig.model_fields:
        row = next(line for line in built.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"| {config_reference.default_text(name)} |" in row, row


def test_a_config_field_without_a_documented_default_fails_the_reference(
    config_reference: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Undocumented(PersistConfig):
        new_knob: int  # no default, no description

    monkeypatch.setattr(config_reference, "PersistConfig", Undocumented)
    assert config_reference.undocumented() == ["new_knob: no description", "new_knob: no default"]
    with pytest.raises(ValueError, match="new_knob"):
        config_reference.reference_markdown()


def test_the_build_fails_when_a_generated_page_loses_its_marker(hooks: ModuleType) -> None:
    from mkdocs.exceptions import PluginError

    with pytest.raises(PluginError, match="config-reference"):
        hooks.on_page_markdown("# Configuration\n", page=FakePage("configuration.md"), config=None, files=None)


# ------------------------------------------------------------------------------------------------ command line


def test_the_cli_page_documents_every_command_and_option_of_the_app(hooks: ModuleType) -> None:
    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    assert page.count(hooks.CLI_MARKER) == 1, "docs/cli.md lost the marker the CLI reference goes to"
    built = render(hooks, "cli.md")
    group, ctx, commands = hooks.cli_commands()
    assert set(hooks.COMMAND_ORDER) <= set(commands), "a documented command is gone from the app"
    for name, command in commands.items():
        section = built.split(f"### `{name}`\n", 1)[1].split("\n### ", 1)[0]
        assert f"mlflow-persist {name}" in section
        for param in command.params:
            if not getattr(param, "hidden", False):
                assert any(f"`{opt}" in section for opt in param.opts), f"{name}: {param.opts} undocumented"
    for param in group.params:
        assert f"`{param.opts[0]}" in built


# ------------------------------------------------------------------------------------------------ README and nav


def docs_pages() -> list[str]:
    return sorted(path.relative_to(DOCS).as_posix() for path in DOCS.rglob("*.md"))


def nav_pages(nav: Any) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [page for item in nav for page in nav_pages(item)]
    if isinstance(nav, dict):
        return [page for value in nav.values() for page in nav_pages(value)]
    return []


def test_the_readme_is_short_and_links_every_docs_page() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= README_MAX_LINES, "the README is an entrance; the detail goes to docs/"
    linked = set(re.findall(r"\]\((docs/[^)#\s]+)(?:#[^)]*)?\)", readme))
    for target in linked:
        assert (ROOT / target).exists(), f"README links {target}, which does not exist"
    missing = [page for page in docs_pages() if f"docs/{page}" not in linked]
    assert missing == [], f"README does not link {missing}"
    screenshot = ROOT / "docs" / "img" / "mlflow-ui.png"
    assert "(docs/img/mlflow-ui.png)" in readme and screenshot.stat().st_size < 300_000


def test_every_docs_page_is_in_the_nav() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    nav = nav_pages(config["nav"])
    assert sorted(nav) == docs_pages()
    assert len(nav) == len(set(nav))


def test_the_architecture_page_names_every_module_of_the_core() -> None:
    import mlflow_persist

    package = Path(mlflow_persist.__file__).resolve().parent
    page = (DOCS / "architecture.md").read_text(encoding="utf-8")
    core = [*package.glob("*.py"), *(p for p in package.glob("_*/*.py") if p.name != "__init__.py")]
    missing = sorted(p.relative_to(package).as_posix() for p in core if f"`{p.name}`" not in page)
    assert missing == [], f"docs/architecture.md's module table misses {missing}"
    subpackages = [p.name for p in package.iterdir() if p.is_dir() and not p.name.startswith("_")]
    assert all(f"`{name}/`" in page for name in subpackages)


# ------------------------------------------------------------------------------------------------ benchmarks


def test_bench_report_rewrites_only_the_table_between_the_markers(tmp_path: Path) -> None:
    bench_report = load(ROOT / "scripts" / "bench_report.py")
    assert bench_report.PAGE == DOCS / "benchmarks.md"
    original = bench_report.PAGE.read_text(encoding="utf-8")
    assert original.count(bench_report.START) == 1 and original.count(bench_report.END) == 1
    copy = tmp_path / "benchmarks.md"
    copy.write_text(original, encoding="utf-8")
    bench_report.write_page("| new table |", copy)
    head, rest = original.split(bench_report.START, 1)
    tail = rest.split(bench_report.END, 1)[1]
    assert copy.read_text(encoding="utf-8") == f"{head}{bench_report.START}\n| new table |\n{bench_report.END}{tail}"
