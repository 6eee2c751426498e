"""`mlflow-persist replay`: replay stored episodes of the trading system and report reproduction."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from mlflow_persist.errors import NotFoundError, PersistError

__all__ = [
    "EPISODES_RUN_KEY",
    "EXPERIMENT_NAME",
    "RUN_KEY_TAG",
    "find_episodes_run",
    "register",
    "run_replay",
    "select_ids",
]

EXPERIMENT_NAME = "mlflow-persist"
RUN_KEY_TAG = "mlflow_persist.run_key"
EPISODES_RUN_KEY = "trading-system"


def find_episodes_run(client: Any, experiment_name: str = EXPERIMENT_NAME, run_key: str = EPISODES_RUN_KEY) -> str:
    """The run tagged `mlflow_persist.run_key` = run_key in the experiment (newest if several)."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        raise NotFoundError(
            f"experiment {experiment_name!r} does not exist in this store; run `mlflow-persist run` "
            "first or pass --tracking-uri."
        )
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise NotFoundError(
            f"no run tagged {RUN_KEY_TAG}={run_key!r} in experiment {experiment_name!r}; "
            "run `mlflow-persist run` first or pass --run-id."
        )
    return runs[0].info.run_id


def select_ids(
    store: Any, episode: list[str], sample: int | None, seed: int | None, start: str | None, end: str | None
) -> list[str]:
    ids = list(episode)
    if start is not None or end is not None:
        ids += [e for e in store.list(start, end)["episode_id"].drop_duplicates() if e not in ids]
    if sample is not None:
        if sample < 1:
            raise PersistError(f"--sample {sample} must be at least 1.")
        ids += [e for e in store.sample(sample, seed=seed) if e not in ids]
    if not ids:
        raise PersistError("nothing to replay: give --episode ID, --sample N or --start/--end.")
    return ids


def run_replay(
    *,
    episode: list[str],
    sample: int | None,
    seed: int | None,
    run_id: str | None,
    tracking_uri: str | None,
    start: str | None = None,
    end: str | None = None,
    target: Any,
    experiment_name: str = EXPERIMENT_NAME,
) -> dict[str, Any]:
    """Resolve the run, pick the episodes and replay them against `target` (the application's replay module:
    `features_from_frames`, `build_model`, `decide`)."""
    from mlflow import MlflowClient

    from mlflow_persist.config import resolve_tracking_uri
    from mlflow_persist.episodes.replay import replay
    from mlflow_persist.episodes.store import EpisodeStore

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = run_id or find_episodes_run(client, experiment_name)
    store = EpisodeStore(client, run)
    ids = select_ids(store, episode, sample, seed, start, end)
    report = replay(store.load(ids), target, tracking_uri=uri, weights=store.weights)
    out = report.to_dict()
    out["run_id"] = run
    return out


def register(app: typer.Typer, target: Callable[[], Any]) -> None:
    """Add the `replay` command to the mlflow-persist CLI; `target()` gives the replay module when it runs (the
    application that records episodes registers the command, so this package never imports it)."""
    from mlflow_persist.cli.options import config_option, emit_json, json_option, load_config, tracking_uri_option

    @app.command("replay")
    def replay_command(
        episode: list[str] = typer.Option([], "--episode", help="Episode id to replay (repeatable)."),  # noqa: B008
        sample: int | None = typer.Option(None, "--sample", help="Replay N randomly chosen episodes."),
        seed: int | None = typer.Option(None, "--seed", help="Seed of the --sample choice."),
        start: str | None = typer.Option(None, "--start", help="Replay episodes with bar_time >= START (ISO)."),
        end: str | None = typer.Option(None, "--end", help="... and bar_time < END (ISO)."),
        run_id: str | None = typer.Option(
            None,
            "--run-id",
            help="Run holding the episodes (default: the "
            "trading system's run, tag mlflow_persist.run_key=trading-system).",
        ),
        tracking_uri: Optional[str] = tracking_uri_option(),
        config: Optional[Path] = config_option(),
        as_json: bool = json_option(),
    ) -> None:
        """Replay recorded episodes with the checkpoint versions that made them; exit 1 unless all reproduce."""
        settings = load_config(tracking_uri, config)
        report = run_replay(
            episode=episode,
            sample=sample,
            seed=seed,
            run_id=run_id,
            tracking_uri=settings.tracking_uri,
            start=start,
            end=end,
            target=target(),
            experiment_name=settings.experiment_name,
        )
        if as_json:
            emit_json("replay", {k: report[k] for k in ("replayed", "reproduced", "failed")})
        else:
            typer.echo(
                f"replayed {report['replayed']} episodes of run {report['run_id']}: "
                f"{report['reproduced']} reproduced exactly"
            )
            for item in report["failed"]:
                typer.echo(f"  {item['episode_id']}: {item['reason']}")
        if report["reproduced"] < report["replayed"]:
            raise typer.Exit(code=1)
