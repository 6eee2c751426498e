"""Replay: rebuild an episode's inputs from its stored frames, load the checkpoint versions that made
the decision, decide again and compare everything bit for bit.

A target is anything with three callables (a module works):
    features_from_frames(frames: dict[str, DataFrame]) -> dict[str, Tensor]
    build_model(name: str[, seed=...]) -> nn.Module        (the architecture; weights are loaded)
    decide(models: dict[str, nn.Module], tensors: dict[str, Tensor]) -> (action, outputs)
`decide` may also take `rng=` (the episode's rng dict). Before `decide`, the global RNGs are set from
episode.rng keys "seed" (torch, numpy, random), "torch_state", "numpy_state", "python_state", and
restored afterwards, so replay never disturbs the caller's random streams.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from mlflow_persist.episodes import values
from mlflow_persist.episodes.checkpoints import Loader, ModelCache, WeightsSource
from mlflow_persist.episodes.frames import frame_fingerprint
from mlflow_persist.episodes.model import Episode
from mlflow_persist.episodes.store import EpisodeFailure, EpisodeStore
from mlflow_persist.episodes.tensors import describe_difference, state_fingerprint, tensors_identical

__all__ = [
    "Mismatch",
    "ReplayReport",
    "ReplayTarget",
    "RetrainSummary",
    "check_frames",
    "compare_tensor_maps",
    "iter_training_cases",
    "rebuild_tensors",
    "replay",
    "replay_ids",
    "replay_one",
    "retrain_range",
]


class ReplayTarget(Protocol):
    def features_from_frames(self, frames: Mapping[str, pd.DataFrame]) -> dict[str, torch.Tensor]: ...

    def build_model(self, name: str) -> nn.Module: ...

    def decide(
        self, models: Mapping[str, nn.Module], tensors: Mapping[str, torch.Tensor]
    ) -> tuple[Any, dict[str, torch.Tensor]]: ...


@dataclass
class ReplayReport:
    """replayed: episodes attempted; reproduced: those whose decision and outputs matched bitwise."""

    replayed: int = 0
    reproduced: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.reproduced == self.replayed

    def to_dict(self) -> dict[str, Any]:
        return {"replayed": self.replayed, "reproduced": self.reproduced, "failed": list(self.failed)}


class Mismatch(Exception):
    """An episode did not reproduce; the message is the reason."""


def compare_tensor_maps(what: str, recorded: Mapping[str, torch.Tensor], rebuilt: Mapping[str, torch.Tensor]) -> None:
    """Raise Mismatch unless both maps have the same keys and bitwise-identical tensors."""
    missing = sorted(set(recorded) - set(rebuilt))
    unexpected = sorted(set(rebuilt) - set(recorded))
    if missing or unexpected:
        raise Mismatch(f"{what} keys differ: missing {missing}, not recorded {unexpected}")
    for key in recorded:
        if not isinstance(rebuilt[key], torch.Tensor):
            raise Mismatch(f"{what} '{key}' is a {type(rebuilt[key]).__name__}, not a tensor")
        if not tensors_identical(recorded[key], rebuilt[key]):
            raise Mismatch(f"{what} {describe_difference(key, recorded[key], rebuilt[key])}")


def check_frames(episode: Episode) -> None:
    """The decoded frames must have the fingerprints of the originals taken when they were stored."""
    for name, digest in episode.frame_digests.items():
        if name not in episode.frames:
            raise Mismatch(f"frame '{name}' is missing from the stored episode")
        if frame_fingerprint(episode.frames[name]) != digest:
            raise Mismatch(f"frame '{name}' read back differs bitwise from the recorded original")


def rebuild_tensors(episode: Episode, target: Any) -> dict[str, torch.Tensor]:
    """Rebuild the feature tensors from the stored frames and check them against the recorded ones."""
    check_frames(episode)
    frames = {k: v.copy(deep=True) for k, v in episode.frames.items()}  # the target may not mutate ours
    rebuilt = target.features_from_frames(frames)
    compare_tensor_maps("rebuilt tensor", episode.tensors, rebuilt)
    return rebuilt


class _SeededRng:
    """Set global RNGs from an episode's rng dict for the duration of a block, then restore them."""

    def __init__(self, rng: Mapping[str, Any]) -> None:
        self.rng = rng

    def __enter__(self) -> None:
        self._saved = (torch.get_rng_state(), np.random.get_state(), random.getstate())
        seed = self.rng.get("seed")
        if seed is not None:
            torch.manual_seed(int(seed))
            np.random.seed(int(seed) % 2**32)
            random.seed(int(seed))
        if self.rng.get("torch_state") is not None:
            torch.set_rng_state(self.rng["torch_state"])
        if self.rng.get("numpy_state") is not None:
            np.random.set_state(self.rng["numpy_state"])
        if self.rng.get("python_state") is not None:
            random.setstate(self.rng["python_state"])

    def __exit__(self, *exc: object) -> None:
        torch.set_rng_state(self._saved[0])
        np.random.set_state(self._saved[1])
        random.setstate(self._saved[2])


def _decide_takes_rng(target: Any) -> bool:
    try:
        return "rng" in inspect.signature(target.decide).parameters
    except (TypeError, ValueError):
        return False


def replay_one(episode: Episode, target: Any, models: ModelCache) -> None:
    """Replay one episode; return normally when it reproduces, raise Mismatch (or any error) if not."""
    tensors = rebuild_tensors(episode, target)
    loaded: dict[str, nn.Module] = {}
    for name, version in episode.checkpoint_versions.items():
        expected = episode.model_fingerprints.get(name)
        loaded[name] = models.get(name, version, episode.rng.get("model_seed"), expected)
        if expected is not None and state_fingerprint(loaded[name]) != expected:
            source = f"checkpoint version {version}" if version is not None else "the initial weights"
            raise Mismatch(f"model '{name}' at {source} does not hold the weights that made the decision")
    kwargs = {"rng": episode.rng} if _decide_takes_rng(target) else {}
    with _SeededRng(episode.rng), torch.no_grad():
        action, outputs = target.decide(loaded, tensors, **kwargs)
    if not values.values_identical(episode.action, action):
        raise Mismatch(f"action {action!r} differs from the recorded {episode.action!r}")
    compare_tensor_maps("output", episode.outputs, outputs)


def replay(
    episodes: Iterable[Episode | EpisodeFailure],
    target: Any,
    *,
    tracking_uri: str | None = None,
    loader: Loader | None = None,
    weights: WeightsSource | None = None,
) -> ReplayReport:
    """Replay each episode (EpisodeFailure entries, e.g. from EpisodeStore.load, count as failed).
    weights: where to find the recorded weights of a version the registry no longer has (EpisodeStore.weights)."""
    report = ReplayReport()
    models = ModelCache(target.build_model, tracking_uri=tracking_uri, loader=loader, weights=weights)
    for item in episodes:
        report.replayed += 1
        if isinstance(item, EpisodeFailure):
            report.failed.append({"episode_id": item.episode_id, "reason": item.reason})
            continue
        try:
            replay_one(item, target, models)
        except Exception as exc:  # noqa: BLE001 - any failure is this episode's result, the rest go on
            reason = str(exc) if isinstance(exc, Mismatch) else f"{type(exc).__name__}: {exc}"
            report.failed.append({"episode_id": item.episode_id, "reason": reason})
        else:
            report.reproduced += 1
    return report


def replay_ids(
    store: EpisodeStore,
    episode_ids: Iterable[str],
    target: Any,
    *,
    tracking_uri: str | None = None,
    loader: Loader | None = None,
) -> ReplayReport:
    """Load the episodes by id from `store` and replay them (with the weights kept in its run as fallback)."""
    return replay(store.load(episode_ids), target, tracking_uri=tracking_uri, loader=loader, weights=store.weights)


@dataclass
class RetrainSummary:
    """How a retrain_range pass went: episodes in the range, used for training, and failures."""

    episodes: int = 0
    used: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)


def iter_training_cases(
    store: EpisodeStore,
    start: Any,
    end: Any,
    target: Any,
    *,
    verify: bool = True,
    failed: list[dict[str, str]] | None = None,
) -> Iterator[tuple[Episode, dict[str, torch.Tensor]]]:
    """(episode, tensors rebuilt from its frames) for start <= bar_time < end, in bar_time order.
    With verify, tensors that do not match the recorded ones are skipped and reported in `failed`."""
    for item in store.in_range(start, end):  # type: ignore[attr-defined]
        if isinstance(item, EpisodeFailure):
            if failed is not None:
                failed.append({"episode_id": item.episode_id, "reason": item.reason})
            continue
        try:
            tensors = rebuild_tensors(item, target) if verify else target.features_from_frames(item.frames)
        except Exception as exc:  # noqa: BLE001
            if failed is not None:
                failed.append({"episode_id": item.episode_id, "reason": str(exc)})
            continue
        yield item, tensors


def retrain_range(
    store: EpisodeStore,
    start: Any,
    end: Any,
    target: Any,
    train_step: Callable[[Episode, dict[str, torch.Tensor]], Any],
    *,
    verify: bool = True,
) -> RetrainSummary:
    """Re-train on the recorded inputs of a time range.

    For each stored episode with start <= bar_time < end, in bar_time order, the inputs are rebuilt
    from its frames with `target.features_from_frames` (and, with verify, checked bitwise against the
    recorded tensors) and `train_step(episode, tensors)` is called: it owns the models, the optimizer
    and any logging (episode.reward, episode.action and episode.outputs hold the recorded outcome).
    Episodes that cannot be loaded or rebuilt are skipped and listed in the summary.
    """
    summary = RetrainSummary()
    for episode, tensors in iter_training_cases(store, start, end, target, verify=verify, failed=summary.failed):
        train_step(episode, tensors)
        summary.used += 1
    summary.episodes = summary.used + len(summary.failed)
    return summary
