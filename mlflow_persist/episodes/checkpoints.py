"""Models at the exact checkpoint version an episode recorded, built once per (name, version)."""

from __future__ import annotations

import inspect
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from torch import nn

import mlflow_persist
from mlflow_persist.errors import CheckpointCorruptError, NotFoundError, PersistError

__all__ = ["Loader", "ModelCache", "WeightsSource"]

Loader = Callable[[str, str | None], Any]
#: (model name, state_fingerprint) -> the state_dict kept in the episode run (see episodes.weights).
WeightsSource = Callable[[str, str], dict[str, Any]]


def _default_loader(uri: str, tracking_uri: str | None) -> Any:
    return mlflow_persist.load_checkpoint(uri, tracking_uri=tracking_uri)


class ModelCache:
    """`get(name, version)` returns target.build_model(name) with that version's weights loaded.

    version None means no registered checkpoint made the decision (the initial weights); the model is
    then built fresh, with `seed=model_seed` when build_model accepts a `seed` argument.
    When the registered version is gone (retention) or damaged, `weights(name, fingerprint)` supplies
    the copy the recorder kept in the episode run, found by the episode's model fingerprint.
    """

    def __init__(
        self,
        build_model: Callable[..., nn.Module],
        *,
        tracking_uri: str | None = None,
        loader: Loader | None = None,
        max_models: int = 64,
        weights: WeightsSource | None = None,
    ) -> None:
        self._build = build_model
        self._weights = weights
        self._tracking_uri = tracking_uri
        self._loader = loader or _default_loader
        self._max = max_models
        self._models: OrderedDict[tuple[str, int | None, Any], nn.Module] = OrderedDict()
        try:
            self._takes_seed = "seed" in inspect.signature(build_model).parameters
        except (TypeError, ValueError):
            self._takes_seed = False

    def _fresh(self, name: str, model_seed: Any) -> nn.Module:
        if self._takes_seed and model_seed is not None:
            return self._build(name, seed=model_seed)
        return self._build(name)

    def _state(self, name: str, version: int, fingerprint: str | None) -> dict[str, Any]:
        try:
            return self._loader(f"models:/{name}/{version}", self._tracking_uri).model_state
        except (NotFoundError, CheckpointCorruptError) as exc:
            if self._weights is None or fingerprint is None:
                raise
            try:
                return self._weights(name, fingerprint)
            except PersistError as inner:
                raise PersistError(
                    f"checkpoint models:/{name}/{version} cannot be loaded ({exc}) and the episode "
                    f"run's copy of its weights cannot either ({inner})."
                ) from inner

    def get(self, name: str, version: int | None, model_seed: Any = None, fingerprint: str | None = None) -> nn.Module:
        key = (name, version, model_seed if version is None else None)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        model = self._fresh(name, model_seed)
        if version is not None:
            state = self._state(name, version, fingerprint)
            try:
                model.load_state_dict(state)
            except (RuntimeError, KeyError, TypeError) as exc:
                raise PersistError(
                    f"checkpoint models:/{name}/{version} does not fit the model built by the "
                    f"replay target ({exc}); the architecture changed since it was saved."
                ) from exc
        self._models[key] = model
        if len(self._models) > self._max:
            self._models.popitem(last=False)
        return model
