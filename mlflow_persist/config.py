"""One typed configuration on pydantic-settings: defaults < TOML file < environment < explicit arguments.

Environment variables are `MLFLOW_PERSIST_<FIELD>`; `none`, `null` or an empty value mean None. Per-model
overrides live under `[models.<name>]` in the TOML file (or `models={...}` in code) and may set any field of
`ModelSettings`; one field of one model comes from `MLFLOW_PERSIST_MODELS__<NAME>__<FIELD>` (the name is
matched without regard to case). TOML tables and environment overrides of one model are merged field by field.
"""

from __future__ import annotations

import os
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from pydantic_settings.exceptions import SettingsError

from mlflow_persist.errors import ConfigError

__all__ = [
    "DEFAULT_TRACKING_URI_TEMPLATE",
    "ENV_NESTED_DELIMITER",
    "ENV_PREFIX",
    "ModelSettings",
    "PersistConfig",
    "resolve_tracking_uri",
]

ENV_PREFIX = "MLFLOW_PERSIST_"
ENV_NESTED_DELIMITER = "__"
DEFAULT_TRACKING_URI_TEMPLATE = "sqlite:///{cwd}/mlflow.db"
_NONE_WORDS = frozenset({"", "none", "null"})
#: The TOML file's values while `PersistConfig.load` builds a config (the file source reads them).
_TOML_FILE: ContextVar[Path | None] = ContextVar("mlflow_persist_config_file", default=None)


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The given URI, else `MLFLOW_TRACKING_URI`, else the embedded default store in the current directory."""
    if uri:
        return uri
    from_env = os.environ.get("MLFLOW_TRACKING_URI")
    if from_env:
        return from_env
    return DEFAULT_TRACKING_URI_TEMPLATE.format(cwd=Path.cwd().resolve().as_posix())


class ModelSettings(BaseModel):
    """Settings that can differ per model. Every field is documented in docs/configuration.md (generated from these fields)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    monitor: str | None = Field(
        "loss",
        description="Metric name that decides performance saves and `best`. None (`none` in the environment): no "
        "performance saves and no `best`, only periodic, episode and final checkpoints (Lightning's "
        "`ModelCheckpoint(monitor=None)`).",
    )
    mode: Literal["min", "max"] = Field("min", description="Whether a lower (`min`) or higher (`max`) value is better.")
    min_delta: float = Field(0.0, ge=0, description="Improvement over the best needed to count as better.")
    min_delta_mode: Literal["abs", "rel"] = Field(
        "abs", description="`abs`: min_delta in metric units; `rel`: a fraction of the best value's magnitude."
    )
    periodic_every_steps: int | None = Field(
        None, gt=0, description="Save a `periodic` checkpoint every N steps (None: off)."
    )
    periodic_every_minutes: float | None = Field(
        None, gt=0, description="Save a `periodic` checkpoint every X minutes of wall time (None: off)."
    )
    monitor_smoothing: Literal["none", "ema", "window", "window_mean", "window_median"] = Field(
        "none",
        description="How the monitored value is smoothed before it decides improvement and `best`: `none`, "
        "`ema` (see monitor_ema_alpha), `window` or `window_mean` (mean of the last "
        "monitor_window values) or `window_median`.",
    )
    monitor_ema_alpha: float = Field(
        0.1, gt=0, le=1, description="Weight of the newest value in the `ema` smoothing (1: no smoothing)."
    )
    monitor_window: int = Field(20, ge=1, description="Values averaged by the `window` and `window_median` smoothings.")
    weights_format: Literal["torch", "safetensors"] = Field(
        "torch",
        description="How a checkpoint stores the model's weights: `torch` (inside checkpoint.pt) or `safetensors` "
        "(model.safetensors beside it: no pickle, loaded memory-mapped, readable by any safetensors tool; "
        "needs the `safetensors` extra). The rest of the state stays in checkpoint.pt either way.",
    )
    keep_best: int = Field(3, ge=1, description="How many `performance` checkpoints to keep (the best ones).")
    keep_periodic: int = Field(3, ge=1, description="Rolling window of `periodic` checkpoints to keep (the newest).")
    keep_final: int = Field(3, ge=1, description="How many `final` (shutdown) checkpoints to keep (the newest).")
    keep_episode: int = Field(3, ge=1, description="How many `episode` (episode-end) checkpoints to keep (the newest).")
    on_unavailable: Literal["fail", "fresh"] = Field(
        "fail",
        description="What restore does when a checkpoint's files cannot be reached (a moved folder, a missing "
        "mount, a permission error, a full temp dir): `fail` stops with an error naming the location, `fresh` "
        "starts without them. Either way nothing is tagged corrupt or deleted.",
    )
    resume_from: Literal["latest", "best"] = Field(
        "latest", description="Which checkpoint `restore()` loads first: the newest valid one or `best`."
    )
    degradation_margin: float | None = Field(
        None, ge=0, description="Alert when the monitored value stays worse than best by more than this (None: off)."
    )
    degradation_margin_mode: Literal["abs", "rel"] = Field("rel", description="Unit of degradation_margin.")
    degradation_patience: int = Field(
        200, ge=1, description="Consecutive degraded steps before the degradation alert fires."
    )
    revert_on_degradation: bool = Field(
        False, description="On a degradation alert, load the `best` checkpoint into the live model."
    )


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source, with `none`, `null` and an empty value (any case) meaning None,
    as before pydantic-settings; MLflow's own variables (MLFLOW_TRACKING_URI) are read by the field defaults."""

    def __call__(self) -> dict[str, Any]:
        return _nones(super().__call__())


def _nones(values: dict[str, Any]) -> dict[str, Any]:
    return {
        key: _nones(value)
        if isinstance(value, dict)
        else None
        if isinstance(value, str) and value.strip().lower() in _NONE_WORDS
        else value
        for key, value in values.items()
    }


class _TomlFile(TomlConfigSettingsSource):
    """pydantic-settings' TOML source, reading the file given to `PersistConfig.load` (none otherwise). A top-level
    `[mlflow_persist]` table (a shared file's section for other tools) is not a setting and is left out."""

    def __init__(self, settings_cls: type[BaseSettings]) -> None:
        path = _TOML_FILE.get()
        super().__init__(settings_cls, toml_file=[path] if path is not None else [])

    def __call__(self) -> dict[str, Any]:
        values = super().__call__()
        values.pop("mlflow_persist", None)
        return values


class PersistConfig(BaseSettings, ModelSettings):
    """Global settings; the `ModelSettings` fields here are the defaults for every model."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
        case_sensitive=False,
        extra="forbid",
        validate_assignment=True,
        validate_default=True,
    )

    tracking_uri: str = Field(
        default_factory=resolve_tracking_uri,
        description="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db in the cwd).",
    )
    experiment_name: str = Field("mlflow-persist", min_length=1, description="MLflow experiment holding the runs.")
    registered_model_prefix: str = Field("", description="Prefix of every registered model name.")
    artifact_location: str | None = Field(
        None,
        description="Where a new experiment keeps its artifacts (default: mlruns/ beside an sqlite store, "
        "else the server's default).",
    )
    min_free_disk_mb: float = Field(
        500.0, ge=0, description="Free space (MB) the checkpoint disk must keep; short of it, cleanup runs first."
    )
    min_free_disk_percent: float = Field(
        2.0, ge=0, le=100, description="Free space (% of the disk) the checkpoint disk must keep."
    )
    writer_queue_size: int = Field(
        8, ge=1, description="Snapshots waiting for the background writer, all models together; beyond it step() waits."
    )
    max_training_wait_seconds: float = Field(
        0.5,
        gt=0,
        description="Longest any call of the training loop (step, save, save_all) waits on the writer or the "
        "store; past it the save is skipped (logged and counted in `skipped`) and a revert or health tag goes on "
        "in the background, so a slow or hanging store never stalls training.",
    )
    max_overhead: float = Field(
        0.05,
        gt=0,
        le=1,
        description="Share of the training process's time that checkpoint writing may take: past it, performance "
        "saves are coalesced (a newer best replaces one held back; the newest lands within a minute, at a "
        "periodic or final save, or at a flush). Periodic and final saves are never held back.",
    )
    worker_process: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Run MLflow's Python work (metric batches) in a persistence worker process, so that it does "
        "not hold the training process's interpreter lock: `auto` does for an MLflow store on a machine with two "
        "or more cores, `off` keeps everything in the training process.",
    )
    scheduler_interval_seconds: float = Field(
        5.0, gt=0, description="How often the background job flushes metrics, checks time-based saves and disk."
    )
    metrics_flush_size: int = Field(
        1000, ge=1, description="Flush buffered metrics early once this many values are waiting."
    )
    shutdown_grace_seconds: float = Field(
        30.0,
        gt=0,
        description="After SIGTERM/SIGINT, how long to wait for the next step() to take consistent "
        "final checkpoints before exiting without them.",
    )
    metrics_buffer_max_rows: int = Field(
        100_000,
        ge=1,
        description="Most metric values buffered per model while the store is unreachable; "
        "beyond it the oldest are dropped (with a warning).",
    )
    log_system_metrics: bool = Field(True, description="Log psutil CPU %, RSS and free disk to each model's run.")
    save_retry_attempts: int = Field(5, ge=1, description="Attempts per checkpoint before the save counts as failed.")
    save_retry_max_wait_seconds: float = Field(30.0, gt=0, description="Longest backoff between save attempts.")
    failure_alert_threshold: int = Field(
        5, ge=1, description="Consecutive failed save attempts that raise an alert and mark the run degraded."
    )
    alert_command: str | None = Field(
        None, description="Shell command run on an alert; the alert JSON is passed on stdin."
    )
    alert_webhook: str | None = Field(None, description="URL that receives each alert as a JSON POST.")
    partial_sweep_age_seconds: float = Field(
        60.0, ge=0, description="At start, delete leftovers of interrupted saves untouched for this long (0: all)."
    )
    outbox_dir: str | None = Field(
        None,
        description="Durable local outbox of checkpoints bound for a tracking server (default: "
        "~/.cache/mlflow-persist/outbox/<hash of the tracking URI>).",
    )
    outbox_max_mb: float = Field(
        10240.0,
        gt=0,
        description="Most disk the outbox may use per model while the server is unreachable; beyond "
        "it (or below the free-disk limits) the oldest periodic entries are dropped first, "
        "never a performance or final one.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="Level of mlflow-persist's log lines (applied by `mlflow-persist run`)."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="`text` or `json` log lines, one event per checkpoint operation."
    )
    fast_serialization: bool = Field(
        False,
        description="Deprecated, no effect: checkpoints are always written without torch's zip CRC32 (their digest "
        "covers every byte), and torch's own setting for the rest of the process is left alone.",
    )
    models: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per-model overrides: `[models.<name>]` tables of ModelSettings fields."
    )

    @field_validator("models")
    @classmethod
    def _check_model_overrides(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, overrides in value.items():
            try:
                ModelSettings(**overrides)
            except ValidationError as exc:
                raise ValueError(f"[models.{name}]: {_describe_validation_error(exc)}") from None
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _Environment(settings_cls), _TomlFile(settings_cls)

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(f"Invalid mlflow-persist configuration: {_describe_validation_error(exc)}") from None
        except SettingsError as exc:
            cause = f" ({exc.__cause__})" if exc.__cause__ else ""
            raise ConfigError(
                f"Invalid mlflow-persist configuration in the environment: {exc}{cause}; fix or "
                f"unset that {ENV_PREFIX}* variable."
            ) from None

    @classmethod
    def load(cls, path: str | os.PathLike[str], **overrides: Any) -> PersistConfig:
        """Read a TOML file; environment variables override it and keyword arguments override both."""
        file_path = Path(path)
        try:
            tomllib.loads(file_path.read_text(encoding="utf-8"))  # its errors, in our words, before pydantic reads it
        except FileNotFoundError:
            raise ConfigError(f"Config file {file_path} does not exist; create it or pass another --config.") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"Config file {file_path} is not valid TOML ({exc}); fix the syntax.") from None
        token = _TOML_FILE.set(file_path)
        try:
            return cls(**overrides)
        finally:
            _TOML_FILE.reset(token)

    def for_model(self, name: str) -> ModelSettings:
        """The effective settings of one model: these defaults with its `[models.<name>]` overrides applied."""
        base = {field: getattr(self, field) for field in ModelSettings.model_fields}
        base.update(self._overrides_of(name))
        return ModelSettings(**base)

    def _overrides_of(self, name: str) -> dict[str, Any]:
        """`[models.<name>]`, merged with the overrides of the same name in another case (the environment's
        names arrive lower-cased); the exact name wins a field both set."""
        merged: dict[str, Any] = {}
        for key in sorted(self.models, key=lambda k: k == name):
            if key.lower() == name.lower():
                merged.update(self.models[key])
        return merged

    def registered_name(self, model_name: str) -> str:
        return f"{self.registered_model_prefix}{model_name}"


def _describe_validation_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error["loc"]) or "config"
        given = error.get("input")
        variable = ENV_PREFIX + ENV_NESTED_DELIMITER.join(str(p) for p in error["loc"]).upper()
        source = f" (from {variable})" if variable in os.environ else ""
        parts.append(f"{field}={given!r}{source} is not allowed ({error['msg']})")
    return "; ".join(parts) + "."
