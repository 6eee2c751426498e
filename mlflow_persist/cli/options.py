"""The options and helpers every `mlflow-persist` command shares: --tracking-uri, --config, --json, the global
logging options, loading the configuration of one command, opening its store, and the one JSON style."""

from __future__ import annotations

import json
import os
from typing import Any, Optional

import typer

from mlflow_persist.cli.schema import with_schema
from mlflow_persist.config import PersistConfig, resolve_tracking_uri
from mlflow_persist.errors import PersistError

__all__ = [
    "CONFIG_HELP",
    "LOG_OPTIONS",
    "TRACKING_URI_ENV",
    "TRACKING_URI_HELP",
    "apply_logging",
    "config_option",
    "emit_json",
    "json_option",
    "load_config",
    "log_options",
    "open_store",
    "tracking_uri_option",
]

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
TRACKING_URI_HELP = (
    "MLflow tracking URI. Precedence: this option, then MLFLOW_PERSIST_TRACKING_URI, then "
    "tracking_uri in the --config file, then MLFLOW_TRACKING_URI, then sqlite:///mlflow.db in the "
    "current directory."
)
CONFIG_HELP = "mlflow_persist TOML config file (tracking_uri, experiment_name, registered_model_prefix, ...)."


def _only_from_command_line(ctx: typer.Context, param: typer.CallbackParam, value: Optional[str]) -> Optional[str]:
    """--tracking-uri as typed on the command line, else None.

    The option declares MLFLOW_TRACKING_URI (so --help shows it), but a value that came from that variable
    must not outrank a --config file or MLFLOW_PERSIST_TRACKING_URI: the config resolves it at its own,
    lower level (`PersistConfig.tracking_uri` defaults to MLFLOW_TRACKING_URI)."""
    source = ctx.get_parameter_source(param.name or "tracking_uri")
    return value if source is not None and source.name == "COMMANDLINE" else None


def tracking_uri_option() -> Any:
    """The --tracking-uri option every subcommand declares."""
    return typer.Option(
        None,
        "--tracking-uri",
        envvar=TRACKING_URI_ENV,
        show_envvar=True,
        callback=_only_from_command_line,
        help=TRACKING_URI_HELP,
    )


def config_option() -> Any:
    """The --config option every subcommand declares."""
    return typer.Option(None, "--config", help=CONFIG_HELP)


def json_option() -> Any:
    """The --json option of every command that prints data."""
    return typer.Option(False, "--json", help="Print the result as one JSON object (with schema_version).")


#: The global --log-level/--log-format as given (None: not given), for commands that read a config file.
LOG_OPTIONS: dict[str, str | None] = {"level": None, "format": None}


def apply_logging(level: str, fmt: str) -> None:
    from mlflow_persist._observe.logs import configure_logging

    try:
        configure_logging(level, fmt)  # type: ignore[arg-type]
    except ValueError as exc:
        raise PersistError(f"{exc}.") from None


def log_options(config: PersistConfig) -> tuple[str, str]:
    """(level, format) for a command that logs as its config says, unless --log-level/--log-format were given."""
    return LOG_OPTIONS["level"] or config.log_level, LOG_OPTIONS["format"] or config.log_format


def load_config(tracking_uri: str | None, config_file: str | os.PathLike[str] | None) -> PersistConfig:
    """The configuration of one command. The tracking URI: `tracking_uri` (the --tracking-uri given on the
    command line) > MLFLOW_PERSIST_TRACKING_URI > the config file's tracking_uri > MLFLOW_TRACKING_URI >
    sqlite:///mlflow.db in the current directory."""
    overrides = {"tracking_uri": resolve_tracking_uri(tracking_uri)} if tracking_uri else {}
    if config_file:
        return PersistConfig.load(config_file, **overrides)
    return PersistConfig(**overrides)


def open_store(config: PersistConfig):  # noqa: ANN201 - MlflowStore, imported lazily (mlflow is slow to import)
    from mlflow_persist._store.mlflow_store import MlflowStore

    return MlflowStore(config.tracking_uri, config.experiment_name)


def emit_json(command: str, data: dict[str, Any]) -> None:
    """Print `command`'s result in the one JSON style of the CLI: `schema_version` first, indented by one."""
    typer.echo(json.dumps(with_schema(command, data), indent=1, default=str))
