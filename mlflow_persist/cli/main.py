"""The `mlflow-persist` command line: status, history, verify, gc, plus the commands the integrations add
(run, replay, import-legacy, migrate, rollback).

The contract every command keeps (see `mlflow_persist.cli.schema` and docs/cli.md):
`--tracking-uri` (env var MLFLOW_TRACKING_URI) and `--config` on every subcommand, one JSON style with a
`schema_version`, and the exit codes 0 ok, 1 error, 2 usage, 3 corrupt versions found, 4 store unreachable.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import asdict
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from mlflow_persist._runtime.process_effects import apply_http_retry_defaults
from mlflow_persist.cli import inspection
from mlflow_persist.cli.export_command import export
from mlflow_persist.cli.options import (
    CONFIG_HELP,
    LOG_OPTIONS,
    TRACKING_URI_ENV,
    TRACKING_URI_HELP,
    apply_logging,
    config_option,
    emit_json,
    json_option,
    load_config,
    log_options,
    open_store,
    tracking_uri_option,
)
from mlflow_persist.cli.schema import (
    EXIT_CORRUPT,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    EXIT_NO_FINAL_CHECKPOINT,
    EXIT_OK,
    EXIT_UNREACHABLE,
)
from mlflow_persist.errors import (
    FinalCheckpointError,
    PersistError,
    StoreUnavailableError,
    describe_store_error,
    is_unreachable,
    redact_credentials,
)

__all__ = [
    "COMMANDS_ENTRY_POINTS",
    "CONFIG_HELP",
    "LOG_OPTIONS",
    "SPARK",
    "TRACKING_URI_ENV",
    "TRACKING_URI_HELP",
    "ConfigFile",
    "JsonOutput",
    "TrackingUri",
    "app",
    "apply_logging",
    "config_option",
    "console",
    "emit_json",
    "export",
    "gc",
    "history",
    "json_option",
    "load_config",
    "log_options",
    "main",
    "open_store",
    "run_app",
    "sparkline",
    "status",
    "tracking_uri_option",
    "verify",
]

app = typer.Typer(
    name="mlflow-persist",
    no_args_is_help=True,
    add_completion=True,
    help="Durable, observable, reversible checkpoints for continuously-trained PyTorch models.",
)
console = Console()

TrackingUri = tracking_uri_option()
ConfigFile = config_option()
JsonOutput = json_option()
SPARK = "▁▂▃▄▅▆▇█"


@app.callback()
def _global(
    log_level: Optional[str] = typer.Option(
        None, "--log-level", help="DEBUG, INFO, WARNING or ERROR (default: WARNING; `run` uses the config's log_level)."
    ),
    log_format: Optional[str] = typer.Option(None, "--log-format", help="text or json (default: text)."),
) -> None:
    LOG_OPTIONS.update(level=log_level, format=log_format)
    apply_logging(log_level or "WARNING", log_format or "text")


def sparkline(values: list[float]) -> str:
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - low) / span * (len(SPARK) - 1) + 0.5))] for v in values)


# ------------------------------------------------------------------------------------------------ status


@app.command()
def status(
    tracking_uri: Optional[str] = TrackingUri, config: Optional[str] = ConfigFile, as_json: bool = JsonOutput
) -> None:
    """Per model: best and newest version (value, step, age), save counts, health, free disk."""
    cfg = load_config(tracking_uri, config)
    report = inspection.status(open_store(cfg), cfg.registered_model_prefix)
    if as_json:
        emit_json("status", report.to_dict())
        return
    table = Table(title=f"mlflow-persist status — {report.tracking_uri}")
    for column in ("model", "best", "latest", "versions", "saves", "overhead", "health"):
        table.add_column(column)
    for row in report.models:
        best, latest = row.best, row.latest
        table.add_row(
            row.model,
            f"v{best.version} {best.monitor}={best.value:.6g} step {best.step} ({row.best_age} ago)"
            if best and best.value is not None
            else "-",
            f"v{latest.version} {latest.category} step {latest.step} ({row.latest_age} ago)",
            " ".join(f"{k}:{n}" for k, n in sorted(row.versions.items()))
            + (f" corrupt:{row.corrupt}" if row.corrupt else ""),
            f"{row.saves:.0f}" if row.saves is not None else "-",
            _overhead_cell(row.overhead, row.held_back),
            row.health,
        )
    console.print(table)
    if report.disk:
        console.print(
            f"free disk: {report.disk.free_mb:.0f} MB ({report.disk.free_percent:.1f}%) at {report.disk.path}"
        )
    if not report.models:
        console.print("no checkpoints yet: run `mlflow-persist run` to train with persistence")


def _overhead_cell(overhead: float | None, held_back: float | None) -> str:
    """What checkpoint writing cost training, as the run last logged it, and the saves the budget held back."""
    if overhead is None:
        return "-"
    held = f", {held_back:.0f} held back" if held_back else ""
    return f"{100 * overhead:.1f}%{held}"


# ------------------------------------------------------------------------------------------------ history


@app.command()
def history(
    model: str = typer.Argument(..., help="Registered model name."),
    tracking_uri: Optional[str] = TrackingUri,
    config: Optional[str] = ConfigFile,
    as_json: bool = JsonOutput,
) -> None:
    """Checkpoints and alias moves of MODEL over time, with a sparkline of the monitored value."""
    cfg = load_config(tracking_uri, config)
    report = inspection.history(open_store(cfg), model)
    events = [
        {"at": e.at, "alias": e.alias, "from": e.from_version, "to": e.to_version, "by": e.by, "reason": e.reason}
        for e in report.alias_moves
    ]
    values = report.values
    if as_json:
        emit_json(
            "history",
            {
                "model": model,
                "versions": [asdict(v) for v in report.versions],
                "alias_moves": events,
                "sparkline": sparkline(values),
            },
        )
        return
    table = Table(title=f"{model}: {len(report.versions)} checkpoints")
    for column in ("version", "category", "step", "value", "created_at", "aliases", "state"):
        table.add_column(column)
    for v in report.versions:
        table.add_row(
            f"v{v.version}",
            v.category,
            str(v.step),
            f"{v.value:.6g}" if v.value is not None else "-",
            v.created_at or "-",
            ",".join(v.aliases),
            "CORRUPT" if v.corrupt else "ok",
        )
    console.print(table)
    if values:
        console.print(
            f"{report.versions[0].monitor or 'value'}: {sparkline(values)}  ({values[0]:.6g} -> {values[-1]:.6g})"
        )
    if events:
        moves = Table(title="alias moves")
        for column in ("at", "alias", "from", "to", "by", "reason"):
            moves.add_column(column)
        for e in events:
            moves.add_row(
                str(e["at"]),
                e["alias"],  # type: ignore[arg-type]
                f"v{e['from']}" if e["from"] else "-",
                f"v{e['to']}",
                e["by"],  # type: ignore[arg-type]
                e["reason"],  # type: ignore[arg-type]
            )
        console.print(moves)


# ------------------------------------------------------------------------------------------------ verify


@app.command()
def verify(
    model: Optional[str] = typer.Argument(None, help="Only this model (default: all)."),
    tracking_uri: Optional[str] = TrackingUri,
    config: Optional[str] = ConfigFile,
    clear_false_corrupt: bool = typer.Option(
        False,
        "--clear-false-corrupt",
        help="Re-check versions tagged corrupt and clear the tag where the bytes verify.",
    ),
    as_json: bool = JsonOutput,
) -> None:
    """Check every version of every model (checksum, safe load); tag damaged ones corrupt=true; exit 3 if any."""
    cfg = load_config(tracking_uri, config)
    report = inspection.verify(
        open_store(cfg),
        model,
        cfg.registered_model_prefix,
        clear_false_corrupt=clear_false_corrupt,
        fallback_mode=cfg.mode,
    )
    bad, false_alarms = report.corrupt, report.false_corrupt
    if as_json:
        emit_json(
            "verify",
            {
                "checked": len(report.results),
                "corrupt": [asdict(r) for r in bad],
                "false_corrupt": [asdict(r) for r in false_alarms],
            },
        )
    else:
        for r in bad:
            typer.echo(f"CORRUPT {r.model} v{r.version}: {r.reason}")
        for r in false_alarms:
            typer.echo(f"{'CLEARED' if r.cleared else 'TAGGED CORRUPT BUT VERIFIES'} {r.model} v{r.version}")
        typer.echo(f"checked {len(report.results)} versions of {report.models} models: {len(bad)} corrupt")
        if false_alarms and not clear_false_corrupt:
            typer.echo(
                f"{len(false_alarms)} versions are tagged corrupt but verify; clear the tags with "
                "`mlflow-persist verify --clear-false-corrupt`"
            )
    if bad:
        raise typer.Exit(EXIT_CORRUPT)


# ------------------------------------------------------------------------------------------------ gc


@app.command()
def gc(
    tracking_uri: Optional[str] = TrackingUri,
    config: Optional[str] = ConfigFile,
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print what would be deleted."),
    as_json: bool = JsonOutput,
) -> None:
    """Apply the retention windows now (keep_best, keep_periodic, keep_final; never `best` or the newest)."""
    cfg = load_config(tracking_uri, config)
    report = inspection.gc(open_store(cfg), cfg, dry_run=dry_run)
    if as_json:
        emit_json("gc", {"dry_run": dry_run, "deleted": [asdict(item) for item in report.deleted]})
        return
    for item in report.deleted:
        typer.echo(f"{'would delete' if dry_run else 'deleted'} {item.model} v{item.version} ({item.category})")
    typer.echo(f"{len(report.deleted)} versions {'would be ' if dry_run else ''}deleted")


app.command()(export)

# ------------------------------------------------------------------------------------------------ wiring

COMMANDS_ENTRY_POINTS = "mlflow_persist.commands"


@functools.cache
def _register_integrations() -> None:
    """Add the commands that other packages declare under the `mlflow_persist.commands` entry points (the trading
    system's `run` and `replay`, the legacy importer's commands) to `app`, once per process."""
    from importlib.metadata import entry_points

    for entry in entry_points(group=COMMANDS_ENTRY_POINTS):
        try:
            register = entry.load()
        except ImportError as exc:
            if exc.name and exc.name.startswith("mlflow_persist."):
                raise
            continue  # an optional dependency of that integration is missing; its commands are not offered
        register(app)


def _one_line(text: str) -> str:
    return " ".join(redact_credentials(text).split())


def run_app(app_: typer.Typer, argv: list[str] | None = None, prefix: str = "mlflow-persist") -> int:
    """Run a typer app and turn every outcome into an exit code (see `mlflow_persist.cli.schema`), with failures
    as one line on stderr: 1 error, 2 usage, 4 store unreachable, 130 interrupted; a command's own
    `typer.Exit(code)` (verify: 3) passes through."""
    try:
        result = app_(args=argv, standalone_mode=False)
    except PersistError as exc:
        typer.echo(f"{prefix}: {_one_line(str(exc))}", err=True)
        if isinstance(exc, FinalCheckpointError):
            return EXIT_NO_FINAL_CHECKPOINT
        return EXIT_UNREACHABLE if isinstance(exc, StoreUnavailableError) else EXIT_ERROR
    except SystemExit as exc:
        if isinstance(exc.code, int) or exc.code is None:
            return exc.code or EXIT_OK
        typer.echo(f"{prefix}: {_one_line(str(exc.code))}", err=True)
        return EXIT_ERROR
    except KeyboardInterrupt:
        typer.echo(f"{prefix}: interrupted.", err=True)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - one line for the operator; details with --log-level DEBUG
        # typer >= 0.2x vendors its own click (typer._click): match click's exceptions by name, whichever
        # click raised them.
        kinds = {cls.__name__ for cls in type(exc).__mro__}
        if "Exit" in kinds and isinstance(getattr(exc, "exit_code", None), int):  # a typer/click Exit let through
            return int(exc.exit_code)  # type: ignore[attr-defined]
        if "Abort" in kinds:
            typer.echo(f"{prefix}: aborted.", err=True)
            return EXIT_INTERRUPTED
        if "ClickException" in kinds:
            message = _one_line(exc.format_message())  # type: ignore[attr-defined]
            ctx = getattr(exc, "ctx", None)
            if "UsageError" in kinds and ctx is not None:
                message = f"{message.rstrip('.')}; see '{ctx.command_path} --help'."
            typer.echo(f"{prefix}: {message}", err=True)
            return int(exc.exit_code)  # type: ignore[attr-defined]
        typer.echo(f"{prefix}: {type(exc).__name__}: {describe_store_error(exc)}", err=True)
        return EXIT_UNREACHABLE if is_unreachable(exc) else EXIT_ERROR
    return result if isinstance(result, int) else EXIT_OK


def main(argv: list[str] | None = None) -> None:
    apply_http_retry_defaults()
    _register_integrations()
    sys.exit(run_app(app, argv))


if __name__ == "__main__":
    main()
