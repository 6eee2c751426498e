"""The `mlflow-persist` command line: status, history, verify, gc, plus the commands the integrations add
(run, replay, import-legacy, migrate, rollback)."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from mlflow_persist.config import PersistConfig, resolve_tracking_uri
from mlflow_persist.errors import CheckpointCorruptError, NotFoundError, PersistError

app = typer.Typer(name="mlflow-persist", no_args_is_help=True, add_completion=True,
                  help="Durable, observable, reversible checkpoints for continuously-trained PyTorch models.")
console = Console()

TrackingUri = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, "
                                                       "else sqlite:///mlflow.db in the current directory).")
ConfigFile = typer.Option(None, "--config", help="mlflow_persist TOML config file.")
JsonOutput = typer.Option(False, "--json", help="Print the result as JSON.")
SPARK = "▁▂▃▄▅▆▇█"


#: The global --log-level/--log-format as given (None: not given), for commands that read a config file.
LOG_OPTIONS: dict[str, str | None] = {"level": None, "format": None}


@app.callback()
def _global(log_level: Optional[str] = typer.Option(None, "--log-level",
                                                    help="DEBUG, INFO, WARNING or ERROR (default: WARNING; "
                                                         "`run` uses the config's log_level)."),
            log_format: Optional[str] = typer.Option(None, "--log-format", help="text or json (default: text).")
            ) -> None:
    LOG_OPTIONS.update(level=log_level, format=log_format)
    apply_logging(log_level or "WARNING", log_format or "text")


def apply_logging(level: str, fmt: str) -> None:
    from mlflow_persist.logging_setup import configure_logging

    try:
        configure_logging(level, fmt)  # type: ignore[arg-type]
    except ValueError as exc:
        raise PersistError(f"{exc}.") from None


def apply_config_logging(config: PersistConfig) -> None:
    """Log as the config says, unless --log-level/--log-format were given on the command line."""
    apply_logging(LOG_OPTIONS["level"] or config.log_level, LOG_OPTIONS["format"] or config.log_format)


def redact_credentials(text: str) -> str:
    from mlflow_persist.store import redact_credentials as redact

    return redact(text)


def load_config(tracking_uri: str | None, config_file: str | None) -> PersistConfig:
    overrides = {"tracking_uri": resolve_tracking_uri(tracking_uri)} if tracking_uri or not config_file else {}
    if config_file:
        return PersistConfig.load(config_file, **overrides)
    return PersistConfig(**overrides)


def open_store(config: PersistConfig):  # noqa: ANN201 - MlflowStore, imported lazily (mlflow is slow to import)
    from mlflow_persist.store import MlflowStore

    return MlflowStore(config.tracking_uri, config.experiment_name)


def managed_models(store: Any, prefix: str = "") -> list[str]:
    names = []
    for model in store.client.search_registered_models(max_results=1000):
        if model.name.startswith(prefix):
            names.append(model.name)
    return sorted(names)


def require_model(store: Any, name: str) -> list[Any]:
    versions = store.list_versions(name)
    if not versions:
        raise NotFoundError(f"Model {name!r} has no checkpoints in {redact_credentials(store.tracking_uri)}; "
                            "run `mlflow-persist status` to list the models there.")
    return versions


def sparkline(values: list[float]) -> str:
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - low) / span * (len(SPARK) - 1) + 0.5))] for v in values)


def emit(data: Any, as_json: bool, table: Table | None = None) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=1, default=str))
    elif table is not None:
        console.print(table)


def version_row(v: Any) -> dict[str, Any]:
    return {"version": v.version, "category": v.category, "step": v.step, "monitor": v.monitor, "value": v.value,
            "created_at": v.created_at, "sha256": v.sha256, "corrupt": v.corrupt, "aliases": v.aliases}


# ------------------------------------------------------------------------------------------------ status

@app.command()
def status(tracking_uri: Optional[str] = TrackingUri, config: Optional[str] = ConfigFile,
           as_json: bool = JsonOutput) -> None:
    """Per model: best and newest version (value, step, age), save counts, health, free disk."""
    from mlflow_persist.runtime import _age
    from mlflow_persist.store import HEALTH_TAG
    from mlflow_persist.sysmetrics import disk_space

    cfg = load_config(tracking_uri, config)
    store = open_store(cfg)
    rows = []
    for name in managed_models(store, cfg.registered_model_prefix):
        versions = store.list_versions(name)
        if not versions:
            continue
        best = store.alias_version(name)
        newest = versions[-1]
        counts: dict[str, int] = {}
        for v in versions:
            counts[v.category] = counts.get(v.category, 0) + 1
        run_id = newest.run_id
        health, saves, run_status = "unknown", None, None
        if run_id:
            try:
                run = store.client.get_run(run_id)
                health = run.data.tags.get(HEALTH_TAG, "ok")
                saves = run.data.metrics.get("checkpoint/saves")
                run_status = run.info.status
            except Exception:  # noqa: BLE001 - a deleted run leaves the versions readable
                pass
        rows.append({
            "model": name,
            "best": version_row(best) if best else None,
            "latest": version_row(newest),
            "versions": counts, "corrupt": sum(1 for v in versions if v.corrupt),
            "saves": saves, "health": health, "run_id": run_id, "run_status": run_status,
            "best_age": _age(best.created_at) if best else None, "latest_age": _age(newest.created_at),
        })
    disk = None
    try:
        disk_path = store.checkpoint_disk_path(rows[0]["run_id"] if rows and rows[0]["run_id"] else None)
        space = disk_space(disk_path)
        disk = {"path": str(disk_path), "free_mb": round(space.free_mb, 1), "free_percent": round(space.free_percent, 2)}
    except Exception:  # noqa: BLE001 - remote stores have no local disk to report
        pass
    if as_json:
        emit({"tracking_uri": redact_credentials(cfg.tracking_uri), "models": rows, "disk": disk}, True)
        return
    table = Table(title=f"mlflow-persist status — {redact_credentials(cfg.tracking_uri)}")
    for column in ("model", "best", "latest", "versions", "saves", "health"):
        table.add_column(column)
    for row in rows:
        best, latest = row["best"], row["latest"]
        table.add_row(
            row["model"],
            f"v{best['version']} {best['monitor']}={best['value']:.6g} step {best['step']} ({row['best_age']} ago)"
            if best and best["value"] is not None else "-",
            f"v{latest['version']} {latest['category']} step {latest['step']} ({row['latest_age']} ago)",
            " ".join(f"{k}:{n}" for k, n in sorted(row["versions"].items())) + (
                f" corrupt:{row['corrupt']}" if row["corrupt"] else ""),
            f"{row['saves']:.0f}" if row["saves"] is not None else "-",
            row["health"],
        )
    console.print(table)
    if disk:
        console.print(f"free disk: {disk['free_mb']:.0f} MB ({disk['free_percent']:.1f}%) at {disk['path']}")
    if not rows:
        console.print("no checkpoints yet: run `mlflow-persist run` to train with persistence")


# ------------------------------------------------------------------------------------------------ history

def alias_events(store: Any, name: str, versions: list[Any]) -> list[dict[str, Any]]:
    """Alias moves: operator moves recorded as registered-model tags, plus `best` moves seen at each save
    (the run metric checkpoint/best_version)."""
    events: list[dict[str, Any]] = []
    try:
        from mlflow_persist.legacy.alias_log import alias_moves

        for move in alias_moves(store.client, name):
            events.append({"at": move.at, "alias": move.alias, "from": move.from_version, "to": move.to_version,
                           "by": move.by, "reason": move.reason})
    except ImportError:
        pass
    run_ids = sorted({v.run_id for v in versions if v.run_id})
    for run_id in run_ids:
        try:
            history = store.client.get_metric_history(run_id, "checkpoint/best_version")
        except Exception:  # noqa: BLE001
            continue
        previous = None
        for metric in sorted(history, key=lambda m: (m.timestamp, m.step)):
            current = int(metric.value)
            if current != previous:
                from datetime import datetime, timezone

                at = datetime.fromtimestamp(metric.timestamp / 1000, timezone.utc).isoformat(timespec="seconds")
                events.append({"at": at, "alias": "best", "from": previous, "to": current, "by": "training",
                               "reason": f"better value at step {metric.step}"})
                previous = current
    return sorted(events, key=lambda e: str(e["at"]))


@app.command()
def history(model: str = typer.Argument(..., help="Registered model name."),
            tracking_uri: Optional[str] = TrackingUri, config: Optional[str] = ConfigFile,
            as_json: bool = JsonOutput) -> None:
    """Checkpoints and alias moves of MODEL over time, with a sparkline of the monitored value."""
    cfg = load_config(tracking_uri, config)
    store = open_store(cfg)
    versions = require_model(store, model)
    events = alias_events(store, model, versions)
    values = [v.value for v in versions if v.value is not None]
    if as_json:
        emit({"model": model, "versions": [version_row(v) for v in versions], "alias_moves": events,
              "sparkline": sparkline(values)}, True)
        return
    table = Table(title=f"{model}: {len(versions)} checkpoints")
    for column in ("version", "category", "step", "value", "created_at", "aliases", "state"):
        table.add_column(column)
    for v in versions:
        table.add_row(f"v{v.version}", v.category, str(v.step), f"{v.value:.6g}" if v.value is not None else "-",
                      v.created_at or "-", ",".join(v.aliases), "CORRUPT" if v.corrupt else "ok")
    console.print(table)
    if values:
        console.print(f"{versions[0].monitor or 'value'}: {sparkline(values)}  ({values[0]:.6g} -> {values[-1]:.6g})")
    if events:
        moves = Table(title="alias moves")
        for column in ("at", "alias", "from", "to", "by", "reason"):
            moves.add_column(column)
        for e in events:
            moves.add_row(str(e["at"]), e["alias"], f"v{e['from']}" if e["from"] else "-", f"v{e['to']}", e["by"],
                          e["reason"])
        console.print(moves)


# ------------------------------------------------------------------------------------------------ verify

@app.command()
def verify(model: Optional[str] = typer.Argument(None, help="Only this model (default: all)."),
           tracking_uri: Optional[str] = TrackingUri, config: Optional[str] = ConfigFile,
           as_json: bool = JsonOutput) -> None:
    """Check every version of every model (sha256, safe load); tag damaged ones corrupt=true; exit 1 if any."""
    cfg = load_config(tracking_uri, config)
    store = open_store(cfg)
    names = [model] if model else managed_models(store, cfg.registered_model_prefix)
    if model:
        require_model(store, model)
    results = []
    for name in names:
        for info in store.list_versions(name):
            try:
                store.load_version(info)
                results.append({"model": name, "version": info.version, "ok": True, "reason": None})
            except CheckpointCorruptError as exc:
                store.mark_corrupt(name, info.version, str(exc))
                results.append({"model": name, "version": info.version, "ok": False, "reason": str(exc)})
    bad = [r for r in results if not r["ok"]]
    if as_json:
        emit({"checked": len(results), "corrupt": bad}, True)
    else:
        for r in bad:
            typer.echo(f"CORRUPT {r['model']} v{r['version']}: {r['reason']}")
        typer.echo(f"checked {len(results)} versions of {len(names)} models: {len(bad)} corrupt")
    if bad:
        raise typer.Exit(1)


# ------------------------------------------------------------------------------------------------ gc

@app.command()
def gc(tracking_uri: Optional[str] = TrackingUri, config: Optional[str] = ConfigFile,
       dry_run: bool = typer.Option(False, "--dry-run", help="Only print what would be deleted."),
       as_json: bool = JsonOutput) -> None:
    """Apply the retention windows now (keep_best, keep_periodic, keep_final; never `best` or the newest)."""
    from mlflow_persist.policy import retention_deletions

    cfg = load_config(tracking_uri, config)
    store = open_store(cfg)
    prefix = cfg.registered_model_prefix
    plan = []
    for name in managed_models(store, prefix):
        settings = cfg.for_model(name[len(prefix):])
        with store.lock(f"model-{name}"):
            versions = store.list_versions(name)
            best = store.alias_version(name)
            doomed = retention_deletions([v.summary() for v in versions], settings.mode, settings.keep_best,
                                         settings.keep_periodic, settings.keep_final, best.version if best else None)
            by_number = {v.version: v for v in versions}
            for number in doomed:
                plan.append({"model": name, "version": number, "category": by_number[number].category})
                if not dry_run:
                    store.delete_version(by_number[number])
    if as_json:
        emit({"dry_run": dry_run, "deleted": plan}, True)
        return
    for item in plan:
        typer.echo(f"{'would delete' if dry_run else 'deleted'} {item['model']} v{item['version']} ({item['category']})")
    typer.echo(f"{len(plan)} versions {'would be ' if dry_run else ''}deleted")


# ------------------------------------------------------------------------------------------------ wiring

def _register_integrations() -> None:
    import importlib

    for module in ("mlflow_persist.trading.cli", "mlflow_persist.episodes.cli", "mlflow_persist.legacy.cli"):
        try:
            importlib.import_module(module).register(app)
        except ImportError as exc:
            if exc.name and exc.name.startswith("mlflow_persist."):
                raise
            # an optional dependency of that integration is missing; its commands are not offered


def _limit_http_retries() -> None:
    # MLflow's defaults retry an unreachable server for ~4 minutes; an operator's command should answer sooner.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    _limit_http_retries()
    _register_integrations()
    try:
        result = app(args=argv, standalone_mode=False)
    except PersistError as exc:
        typer.echo(f"mlflow-persist: {redact_credentials(str(exc))}", err=True)
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - one line for the operator; details with --log-level DEBUG
        kinds = {cls.__name__ for cls in type(exc).__mro__}  # typer vendors its own click: match by name
        if "Abort" in kinds:
            typer.echo("mlflow-persist: aborted.", err=True)
            sys.exit(130)
        if "ClickException" in kinds:
            exc.show()  # type: ignore[attr-defined]
            sys.exit(exc.exit_code)  # type: ignore[attr-defined]
        from mlflow_persist.store import _first_line

        typer.echo(f"mlflow-persist: {type(exc).__name__}: {_first_line(exc)}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("mlflow-persist: interrupted.", err=True)
        sys.exit(130)
    sys.exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    main()
