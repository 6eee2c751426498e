"""The Episode: everything that led to one decision, as the trading system saw it."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

import pandas as pd
import torch

from mlflow_persist.episodes.errors import EpisodeEncodingError

__all__ = ["SCHEMA_VERSION", "Episode", "as_episode", "new_episode_id", "to_utc_timestamp"]

SCHEMA_VERSION = 1


def to_utc_timestamp(value: Any, *, what: str) -> pd.Timestamp:
    """Accept a pd.Timestamp/datetime/ISO string/epoch seconds; naive values are taken as UTC."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        ts = pd.Timestamp(value, unit="s", tz="UTC")
    else:
        try:
            ts = pd.Timestamp(value)
        except (TypeError, ValueError) as exc:
            raise EpisodeEncodingError(
                f"{what} {value!r} is not a timestamp; pass a datetime, ISO string or epoch seconds."
            ) from exc
    if ts is pd.NaT:
        raise EpisodeEncodingError(f"{what} is missing (NaT); every episode needs a {what}.")
    ts = ts.tz_localize("UTC") if ts.tz is None else ts.tz_convert("UTC")
    return ts.as_unit("ns")


def new_episode_id() -> str:
    """A unique episode id (uuid4 hex)."""
    return uuid.uuid4().hex


@dataclass
class Episode:
    """One decision and its complete context.

    frames: the complete input DataFrames the models saw (bars window, indicators, COB levels, ...).
    tensors: the exact feature tensor each model received, keys like "dqn.state".
    outputs: each model's outputs, keys like "dqn.q_values".
    checkpoint_versions: registered model version in use per model name (None: no checkpoint yet).
    market: volatility regime, spread, trend, ... (small values).
    rng: seeds/states needed to reproduce random choices; replay applies the keys "seed",
        "torch_state", "numpy_state" and "python_state" before calling decide.
    model_fingerprints: optional `state_fingerprint(model)` per model at decision time; replay then
        proves the loaded checkpoint holds exactly the weights that decided.
    frame_digests: filled when an episode is stored/loaded (bitwise fingerprint of each original frame).
    extra: any further context (step, position, per-model rewards, ...), stored as exact JSON.
    """

    episode_id: str
    bar_time: pd.Timestamp
    wall_time: pd.Timestamp
    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    action: Any = None
    reward: float | None = None
    checkpoint_versions: dict[str, int | None] = field(default_factory=dict)
    market: dict[str, Any] = field(default_factory=dict)
    rng: dict[str, Any] = field(default_factory=dict)
    model_fingerprints: dict[str, str] = field(default_factory=dict)
    frame_digests: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.episode_id, str) or not self.episode_id:
            raise EpisodeEncodingError(f"episode_id {self.episode_id!r} must be a non-empty string.")
        self.bar_time = to_utc_timestamp(self.bar_time, what="bar_time")
        self.wall_time = to_utc_timestamp(self.wall_time, what="wall_time")
        for name, frame in self.frames.items():
            if not isinstance(frame, pd.DataFrame):
                raise EpisodeEncodingError(
                    f"episode {self.episode_id} frame '{name}' is a {type(frame).__name__}; frames must be DataFrames."
                )
        for group in ("tensors", "outputs"):
            for key, value in getattr(self, group).items():
                if not isinstance(value, torch.Tensor):
                    raise EpisodeEncodingError(
                        f"episode {self.episode_id} {group}['{key}'] is a {type(value).__name__}; store a torch.Tensor."
                    )
        if self.reward is not None:
            self.reward = float(self.reward)
        self.checkpoint_versions = {
            str(k): (None if v is None else int(v)) for k, v in self.checkpoint_versions.items()
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Episode:
        """Build from a plain mapping with the field names; keys that are not fields go to `extra`,
        episode_id defaults to a new uuid and wall_time to now."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        extra = dict(values.get("extra") or {})
        extra.update({str(k): v for k, v in data.items() if k not in known})
        values["extra"] = extra
        values.setdefault("episode_id", new_episode_id())
        values.setdefault("wall_time", datetime.now().astimezone())
        if "bar_time" not in values:
            raise EpisodeEncodingError("episode has no bar_time; pass the time of the bar the decision was made on.")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (shares the frames and tensors, no copy)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def detached_copy(self) -> Episode:
        """A copy that later in-place changes by the caller cannot alter (frames, tensors, dicts)."""
        return Episode(
            episode_id=self.episode_id,
            bar_time=self.bar_time,
            wall_time=self.wall_time,
            frames={k: v.copy(deep=True) for k, v in self.frames.items()},
            tensors={k: v.detach().clone() for k, v in self.tensors.items()},
            outputs={k: v.detach().clone() for k, v in self.outputs.items()},
            action=self.action.detach().clone()
            if isinstance(self.action, torch.Tensor)
            else copy.deepcopy(self.action),
            reward=self.reward,
            checkpoint_versions=dict(self.checkpoint_versions),
            market=copy.deepcopy(self.market),
            rng=copy.deepcopy(self.rng),
            model_fingerprints=dict(self.model_fingerprints),
            frame_digests=dict(self.frame_digests),
            extra=copy.deepcopy(self.extra),
            schema_version=self.schema_version,
        )


def as_episode(value: Episode | Mapping[str, Any]) -> Episode:
    """Accept an Episode, a plain dict with its fields, or an object with `to_dict()` returning one."""
    if isinstance(value, Episode):
        return value
    if isinstance(value, Mapping):
        return Episode.from_dict(value)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return Episode.from_dict(to_dict())
    raise EpisodeEncodingError(f"cannot record a {type(value).__name__}; pass an Episode or a dict of its fields.")
