"""MkDocs hooks (registered under `hooks:` in mkdocs.yml): the reference pages are generated from the code at
build time, so they cannot drift from it.

- docs/configuration.md: its `<!-- config-reference -->` marker becomes the table that
  scripts/config_reference.py generates from `PersistConfig` (the build fails while a field lacks a
  description or a default).
- docs/cli.md: its `<!-- cli-reference -->` marker becomes a reference of every subcommand and option, read
  from the typer app `mlflow_persist.cli.app` (with the commands that other packages register through the
  `mlflow_persist.commands` entry points, as the `mlflow-persist` console script has them).

tests/public/test_docs.py imports this file to check what it generates.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONFIG_MARKER = "<!-- config-reference -->"
CLI_MARKER = "<!-- cli-reference -->"
#: Which page must hold which marker.
MARKERS = {"configuration.md": CONFIG_MARKER, "cli.md": CLI_MARKER}
#: The order the CLI reference lists the commands in; commands not named here follow in registration order.
COMMAND_ORDER = ("run", "status", "history", "verify", "gc", "rollback", "import-legacy", "migrate", "replay")

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def config_reference() -> str:
    """The configuration table (scripts/config_reference.py); ValueError while a field is undocumented."""
    return _script("config_reference").reference_markdown()


def _cell(text: str) -> str:
    """Help text as one Markdown table cell: pipes escaped, `<` escaped outside code spans, one line."""
    parts = re.split(r"(`[^`]*`)", " ".join(text.split()))
    return "".join(part if part.startswith("`") else part.replace("<", "&lt;") for part in parts).replace("|", "\\|")


def _params_table(command: Any, ctx: Any) -> list[str]:
    rows = []
    for param in command.params:
        if getattr(param, "hidden", False):
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        kind = "argument" if param.param_type_name == "argument" else "option"
        rows.append(f"| `{names}` | {kind} | {_cell(help_text)} |")
    if not rows:
        return []
    return ["| name | kind | description |", "|---|---|---|", *rows]


def cli_commands() -> tuple[Any, Any, dict[str, Any]]:
    """The click group behind `mlflow-persist`, its context, and its subcommands in reference order."""
    import importlib
    from importlib.metadata import entry_points

    import typer

    from mlflow_persist.cli import app

    cli_main = importlib.import_module("mlflow_persist.cli.main")
    register = getattr(cli_main, "_register_integrations", None)
    if register is not None:
        register()  # what main() does before it runs: the entry-point commands (run, replay, import-legacy, ...)
    else:
        for entry in entry_points(group="mlflow_persist.commands"):
            entry.load()(app)
    group = typer.main.get_command(app)
    ctx = group.context_class(group, info_name="mlflow-persist")
    commands = {name: cmd for name, cmd in group.commands.items() if not getattr(cmd, "hidden", False)}
    ordered = [name for name in COMMAND_ORDER if name in commands]
    ordered += [name for name in commands if name not in ordered]
    return group, ctx, {name: commands[name] for name in ordered}


def cli_reference() -> str:
    """Every subcommand with its usage, help and options, as the installed `mlflow-persist --help` has them."""
    group, ctx, commands = cli_commands()
    lines = [
        "### Global options",
        "",
        "They go before the subcommand.",
        "",
        "```",
        group.get_usage(ctx),
        "```",
        "",
        *_params_table(group, ctx),
    ]
    for name, command in commands.items():
        sub_ctx = command.context_class(command, info_name=name, parent=ctx)
        lines += ["", f"### `{name}`", "", "```", command.get_usage(sub_ctx), "```", ""]
        if command.help:
            lines += [" ".join(command.help.split()), ""]
        lines += _params_table(command, sub_ctx)
    return "\n".join(lines)


GENERATORS = {CONFIG_MARKER: config_reference, CLI_MARKER: cli_reference}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any, **kwargs: Any) -> str:
    from mkdocs.exceptions import PluginError

    path = Path(page.file.src_uri).as_posix()
    marker = MARKERS.get(path)
    if marker is not None and marker not in markdown:
        raise PluginError(f"docs/{path} lost its {marker} marker: the generated reference has nowhere to go")
    for each, generate in GENERATORS.items():
        if each in markdown:
            try:
                markdown = markdown.replace(each, generate())
            except ValueError as exc:
                raise PluginError(f"docs/{path}: {exc}") from exc
    return markdown
