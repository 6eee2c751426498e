"""The `run` command: `mlflow-persist run [--steps N] [--minutes M] [--until-step N] [--tracking-uri URI]
[--config FILE] [--seed S] [--no-episodes]`. Every decision is recorded as an episode in the `trading-system` run unless --no-episodes."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Optional

import typer

from mlflow_persist.cli.options import config_option, load_config, log_options, tracking_uri_option

__all__ = ["register", "replay_target"]


def replay_target() -> ModuleType:
    """The module `mlflow-persist replay` replays recorded episodes against."""
    from mlflow_persist.trading import replay

    return replay


def register(app: typer.Typer) -> None:
    """Add `run` and `replay` (the trading system's episodes) to the mlflow-persist CLI."""
    from mlflow_persist.episodes.cli import register as register_replay

    register_replay(app, target=lambda: replay_target())

    @app.command("run")
    def run_command(
        steps: Optional[int] = typer.Option(None, "--steps", help="Stop after this many bars (default: no limit)."),
        minutes: Optional[float] = typer.Option(None, "--minutes", help="Stop after this many minutes."),
        until_step: Optional[int] = typer.Option(
            None,
            "--until-step",
            help="Stop once the system has processed this many bars in all, counted across restarts.",
        ),
        tracking_uri: Optional[str] = tracking_uri_option(),
        config: Optional[Path] = config_option(),
        seed: int = typer.Option(0, "--seed", help="Seed of the models, the simulated order book and the draws."),
        speed: float = typer.Option(0.0, "--speed", help="Bars per second to replay (0: as fast as possible)."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the live progress display."),
        episodes: bool = typer.Option(
            True,
            "--episodes/--no-episodes",
            help="Record every decision as a replayable episode in the `trading-system` run (default: on).",
        ),
        log_file: Path = typer.Option(
            Path("mlflow-persist.log"),
            "--log-file",
            help="Where the detailed log goes (appended; its path is printed at start). The console shows one "
            "short line per save and every warning; --log-level DEBUG puts the detail there too.",
        ),
    ) -> None:
        """Train the reference trading system (DQN, CNN, COB RL, Extrema) continuously with persistence."""
        from mlflow_persist.cli.console import configure_run_logging
        from mlflow_persist.errors import ConfigError

        from .app import run_trading
        from .recording import open_recorder

        settings = load_config(tracking_uri, config)
        try:
            path = configure_run_logging(log_file, *log_options(settings))  # type: ignore[arg-type]
        except ValueError as exc:
            raise ConfigError(f"{exc}.") from None
        except OSError as exc:
            raise ConfigError(
                f"Cannot write the log file {log_file} ({exc.strerror}); pass another --log-file."
            ) from None
        typer.echo(f"mlflow-persist run: detailed log in {path}", err=True)
        code = run_trading(
            settings,
            steps=steps,
            minutes=minutes,
            seed=seed,
            progress=progress,
            speed=speed,
            recorder_factory=open_recorder if episodes else None,
            until_step=until_step,
        )
        raise typer.Exit(code)
