"""`mlflow-persist export MODEL`: a verified checkpoint's weights as safetensors or a Hugging Face model folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from mlflow_persist._format.export import EXPORT_FORMATS, export_checkpoint
from mlflow_persist.cli.options import (
    config_option,
    emit_json,
    json_option,
    load_config,
    open_store,
    tracking_uri_option,
)
from mlflow_persist.errors import ConfigError, NotFoundError

__all__ = ["export"]


def export(
    model: str = typer.Argument(..., help="Registered model name."),
    alias: Optional[str] = typer.Option(None, "--alias", help="The version an alias points at: best or latest."),
    version: Optional[int] = typer.Option(None, "--version", help="A version number (instead of --alias)."),
    export_format: str = typer.Option(..., "--format", help=f"One of {', '.join(EXPORT_FORMATS)}."),
    out: Optional[Path] = typer.Option(None, "--out", help="Directory to write into (default: ./MODEL-vN-FORMAT)."),
    tracking_uri: Optional[str] = tracking_uri_option(),
    config: Optional[str] = config_option(),
    as_json: bool = json_option(),
) -> None:
    """Write MODEL's weights (the version --alias or --version names; default: best) in a format its framework
    loads natively: `safetensors` (model.safetensors) or `hf` (config.json + model.safetensors, for
    from_pretrained). The checkpoint is verified against its recorded digest first."""
    if alias is not None and version is not None:
        raise ConfigError("Pass --alias or --version, not both.")
    if export_format not in EXPORT_FORMATS:
        raise ConfigError(f"Unknown --format {export_format!r}; use one of {', '.join(EXPORT_FORMATS)}.")
    store = open_store(load_config(tracking_uri, config))
    if version is not None:
        info = store.get_version(model, version)
    else:
        found = store.alias_version(model, alias or "best")
        if found is None:
            raise NotFoundError(f"{model} has no version with the alias {alias or 'best'!r}; pass --version N.")
        info = found
    state = store.load_version(info)
    directory = out or Path(f"{model}-v{info.version}-{export_format}")
    written = export_checkpoint(state, directory, export_format)
    if as_json:
        emit_json(
            "export",
            {
                "model": model,
                "version": info.version,
                "step": state.step,
                "format": export_format,
                "files": [str(path) for path in written],
            },
        )
        return
    typer.echo(f"exported {model} v{info.version} (step {state.step}) as {export_format}: {directory}")
