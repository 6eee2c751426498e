"""CLI commands of the legacy package: `import-legacy`, `migrate`, `rollback`.

The project's `mlflow-persist` app adds them with `register(app)`; `main()` runs them on their own
(used by scripts/import_legacy_checkpoints.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from mlflow_persist._runtime.process_effects import apply_http_retry_defaults
from mlflow_persist.cli.main import run_app
from mlflow_persist.cli.options import config_option, emit_json, json_option, load_config, tracking_uri_option
from mlflow_persist.errors import ConfigError, NotFoundError

__all__ = [
    "CONFIG",
    "JSON",
    "TRACKING_URI",
    "build_app",
    "build_single_command_app",
    "import_legacy_command",
    "main",
    "migrate_command",
    "register",
    "rollback_command",
]

TRACKING_URI = tracking_uri_option()
CONFIG = config_option()
JSON = json_option()


def _open(tracking_uri: str | None, config_file: Path | None = None):  # -> tuple[PersistConfig, MlflowStore]
    from mlflow_persist._store.mlflow_store import MlflowStore

    config = load_config(tracking_uri, config_file)
    return config, MlflowStore(config.tracking_uri, config.experiment_name)


def _read_trust_list(path: Path) -> list[str]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"Trust list {path} cannot be read ({exc.strerror}); pass an existing file.") from None
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def import_legacy_command(
    directory: Path = typer.Argument(..., help="The legacy base_dir (for example NN/models/saved)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; write nothing."),
    trust: list[Path] = typer.Option(
        [], "--trust", help="Trust this whole-module pickle (loading it runs its code); repeatable."
    ),
    trust_list: Optional[Path] = typer.Option(None, "--trust-list", help="File listing trusted files, one a line."),
    metric: str = typer.Option("performance_score", "--metric", help="Legacy metric that picks each model's best."),
    mode: str = typer.Option("max", "--mode", help="max or min: whether a higher or lower --metric is better."),
    rename: list[str] = typer.Option([], "--rename", help="OLD=NEW: register legacy model OLD as NEW; repeatable."),
    strict: bool = typer.Option(False, "--strict", help="Exit non-zero when any file was refused too."),
    as_json: bool = JSON,
    tracking_uri: Optional[str] = TRACKING_URI,
    config_file: Optional[Path] = CONFIG,
) -> None:
    """Import a legacy CheckpointManager directory as registered `legacy` versions (idempotent)."""
    from mlflow_persist.legacy.importer import execute_plan, plan_import
    from mlflow_persist.legacy.plan import parse_renames
    from mlflow_persist.legacy.report import RichProgress, import_summary, import_totals

    if not directory.is_dir():
        raise NotFoundError(
            f"Legacy checkpoint directory {directory} does not exist; pass the old base_dir "
            "(for example NN/models/saved)."
        )
    trusted = [str(t) for t in trust] + (_read_trust_list(trust_list) if trust_list else [])
    renames = parse_renames(rename)
    config, store = _open(tracking_uri, config_file)
    err = Console(stderr=True)
    with RichProgress(err) as progress:
        plan = plan_import(
            store,
            directory,
            trusted=trusted,
            metric=metric,
            mode=mode,
            renames=renames,
            prefix=config.registered_model_prefix,
            progress=progress,
        )
        report = execute_plan(store, plan, dry_run=dry_run, progress=progress)
    if as_json:
        emit_json("import-legacy", report.to_json())
    else:
        out = Console(width=max(Console().width, 140))
        out.print(import_summary(report))
        out.print(import_totals(report))
    if report.failed:
        err.print(
            f"[bold red]{report.count('failed')} file(s) failed to import; see the table above and run "
            "the import again (it is idempotent).[/]"
        )
        raise typer.Exit(1)
    if strict and report.count("refused"):
        err.print(f"[red]{report.count('refused')} file(s) were refused (--strict).[/]")
        raise typer.Exit(1)


def migrate_command(
    dry_run: bool = typer.Option(False, "--dry-run", help="List the versions that would be migrated."),
    as_json: bool = JSON,
    tracking_uri: Optional[str] = TRACKING_URI,
    config_file: Optional[Path] = CONFIG,
) -> None:
    """Rewrite versions stored in an older checkpoint format as new versions; move aliases; keep the old ones."""
    from mlflow_persist.legacy.migrate import migrate
    from mlflow_persist.legacy.report import migration_summary

    _, store = _open(tracking_uri, config_file)
    report = migrate(store, dry_run=dry_run)
    if as_json:
        emit_json("migrate", report.to_json())
    elif not report.steps:
        typer.echo(f"Nothing to migrate: every version is in checkpoint format {report.target_format}.")
    else:
        Console(width=max(Console().width, 120)).print(migration_summary(report))
    if report.failed:
        Console(stderr=True).print("[bold red]Some versions could not be migrated; see the error column.[/]")
        raise typer.Exit(1)


def rollback_command(
    model: str = typer.Argument(..., help="Model name (as in the registry, without the prefix)."),
    to: Optional[int] = typer.Option(None, "--to", help="The version to roll back to."),
    back: Optional[int] = typer.Option(None, "--back", help="Roll back N versions from the newest."),
    best: bool = typer.Option(False, "--best", help="Also point the `best` alias at the rollback version."),
    reason: Optional[str] = typer.Option(None, "--reason", help="Why (kept as a tag)."),
    as_json: bool = JSON,
    tracking_uri: Optional[str] = TRACKING_URI,
    config_file: Optional[Path] = CONFIG,
) -> None:
    """Register an earlier version again as the newest one (category rollback); training resumes from it."""
    from mlflow_persist.legacy.rollback import rollback

    config, store = _open(tracking_uri, config_file)
    result = rollback(store, config.registered_name(model), to=to, back=back, move_best=best, reason=reason)
    if as_json:
        emit_json("rollback", result.to_json())
        return
    moved = f"; best -> v{result.new_version}" if result.best_move else ""
    typer.echo(
        f"{result.name}: v{result.new_version} registered as a rollback to v{result.target}{moved}; "
        "the next start resumes from it."
    )


def register(app: typer.Typer) -> None:
    """Add `import-legacy`, `migrate` and `rollback` to the project's typer app."""
    app.command("import-legacy")(import_legacy_command)
    app.command("migrate")(migrate_command)
    app.command("rollback")(rollback_command)


def build_app() -> typer.Typer:
    app = typer.Typer(
        add_completion=False,
        no_args_is_help=True,
        help="mlflow-persist legacy tools: import-legacy, migrate, rollback.",
    )
    register(app)
    return app


def build_single_command_app(name: str) -> typer.Typer:
    """A typer app of one command, run without its name (`python scripts/import_legacy_checkpoints.py DIR`)."""
    commands = {"import-legacy": import_legacy_command, "migrate": migrate_command, "rollback": rollback_command}
    app = typer.Typer(add_completion=False)
    app.command(name)(commands[name])  # type: ignore[type-var]
    return app


def main(argv: list[str] | None = None, *, command: str | None = None) -> int:
    """Run the legacy commands standalone (or only `command`, without its name), with the exit codes of
    `mlflow-persist` (1 error, 2 usage, 4 store unreachable): every failure is one line on stderr, never a
    traceback."""
    apply_http_retry_defaults()
    app = build_single_command_app(command) if command else build_app()
    return run_app(app, argv, prefix="error")


if __name__ == "__main__":
    raise SystemExit(main())
