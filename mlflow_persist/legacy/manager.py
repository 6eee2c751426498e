"""A drop-in replacement for the legacy file-based `CheckpointManager`, backed by the MLflow registry.

Existing call sites keep working unchanged: `save_checkpoint(...)` registers a `legacy` version (scored with
the old performance_score, the old keep-the-best-N rotation), and `load_best_checkpoint(name)` returns a local
file in the legacy layout plus its metadata, so `torch.load(path)["model_state_dict"]` still works.

Longer than 400 lines: it mirrors the legacy class method for method, so a call site's method is found in one
place.
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from mlflow_persist._format.atomic import private_directory, user_cache_dir
from mlflow_persist._format.payload import FORMAT_VERSION, CheckpointState, build_payload, sha256_file
from mlflow_persist._policy.policy import VersionSummary
from mlflow_persist._policy.versions import digest_tags
from mlflow_persist._store.alias_log import move_alias
from mlflow_persist._store.best import mark_corrupt
from mlflow_persist._store.mlflow_store import BEST_ALIAS, MlflowStore, VersionInfo, tag
from mlflow_persist._store.prune import prune
from mlflow_persist.config import PersistConfig, resolve_tracking_uri
from mlflow_persist.errors import CheckpointCorruptError, PersistError
from mlflow_persist.legacy.classify import to_plain
from mlflow_persist.legacy.convert import LEGACY, METRIC_TAG_PREFIX
from mlflow_persist.legacy.importer import model_run
from mlflow_persist.legacy.score import SCORE_FIELD, as_number, numeric_metrics, performance_score

__all__ = [
    "LEGACY_API_TAG",
    "CheckpointManager",
    "CheckpointMetadata",
    "get_checkpoint_manager",
    "legacy_layout",
    "legacy_rotation",
    "load_best_checkpoint",
    "save_checkpoint",
]

LEGACY_API_TAG = tag("legacy_api")


def legacy_rotation(versions: Sequence[VersionInfo], limit: int, best_version: int | None) -> list[int]:
    """The old manager's keep-the-best-N rotation as a prune policy: beyond `limit` scored legacy versions,
    the lowest-scoring ones this API saved go first; never `best`, the newest, or imported versions."""
    scored = [
        v
        for v in versions
        if v.category == LEGACY and v.monitor == SCORE_FIELD and v.value is not None and not v.corrupt
    ]
    excess = len(scored) - limit
    if excess <= 0 or not versions:
        return []
    newest = max(v.version for v in versions)
    deletable = sorted(
        (v for v in scored if v.tags.get(LEGACY_API_TAG) == "true" and v.version not in (newest, best_version)),
        key=lambda v: (v.value, v.version),
    )
    return [v.version for v in deletable[:excess]]


@dataclass
class CheckpointMetadata:
    """The legacy metadata record (same fields as checkpoint_metadata.json entries)."""

    checkpoint_id: str
    model_name: str
    model_type: str
    file_path: str
    created_at: datetime
    file_size_mb: float
    performance_score: float
    accuracy: float | None = None
    loss: float | None = None
    val_accuracy: float | None = None
    val_loss: float | None = None
    reward: float | None = None
    pnl: float | None = None
    epoch: int | None = None
    training_time_hours: float | None = None
    total_parameters: int | None = None
    wandb_run_id: str | None = None
    wandb_artifact_name: str | None = None
    version: int | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CheckpointMetadata:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("created_at"), str):
            values["created_at"] = datetime.fromisoformat(values["created_at"])
        return cls(**values)


class CheckpointManager:
    """The old API: `CheckpointManager(base_dir="NN/models/saved", max_checkpoints_per_model=5, ...)`."""

    def __init__(
        self,
        base_dir: str = "NN/models/saved",
        max_checkpoints_per_model: int = 5,
        metadata_file: str = "checkpoint_metadata.json",
        enable_wandb: bool = False,
        *,
        base_checkpoint_dir: str | None = None,
        tracking_uri: str | None = None,
        config: PersistConfig | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.base_dir = Path(base_checkpoint_dir or base_dir)
        self.max_checkpoints_per_model = int(max_checkpoints_per_model)
        self.metadata_file = metadata_file
        self.enable_wandb = False  # W&B is replaced by MLflow; the argument is accepted for compatibility
        uri = resolve_tracking_uri(tracking_uri or (config.tracking_uri if config else None))
        self.config = config or PersistConfig(tracking_uri=uri)
        self._cache_dir = Path(cache_dir) if cache_dir else None
        self._store: MlflowStore | None = None
        self._lock = threading.Lock()
        self._tracking_uri = uri

    @property
    def store(self) -> MlflowStore:
        with self._lock:
            if self._store is None:
                self._store = MlflowStore(self._tracking_uri, self.config.experiment_name)
            return self._store

    def _name(self, model_name: str) -> str:
        return self.config.registered_name(model_name)

    # ------------------------------------------------------------------------------------- saving

    def save_checkpoint(
        self,
        model: Any,
        model_name: str,
        model_type: str,
        performance_metrics: Mapping[str, Any],
        training_metadata: Mapping[str, Any] | None = None,
        force_save: bool = False,
    ) -> CheckpointMetadata | None:
        """Register a checkpoint when it scores among the best `max_checkpoints_per_model` (or `force_save`);
        returns its metadata, or None when it was not good enough to keep (as the old manager did)."""
        store, name = self.store, self._name(model_name)
        metrics = numeric_metrics(performance_metrics or {}, exclude=frozenset())
        score = performance_score(metrics)
        kept = self._scored_versions(name)
        if (
            not force_save
            and len(kept) >= self.max_checkpoints_per_model
            and score <= min(v.value for v in kept if v.value is not None)
        ):
            return None
        training = dict(training_metadata or {})
        now = datetime.now()
        checkpoint_id = f"{model_name}_{now:%Y%m%d_%H%M%S}"
        epoch = as_number(training.get("epoch", metrics.get("epoch")))
        step = int(epoch) if epoch is not None else (max((v.step or 0) for v in kept) + 1 if kept else 0)
        model_state, optimizer_state, extra = _split_model(model)
        extra["legacy"] = to_plain(
            {
                "model_type": model_type,
                "saved_at": now.isoformat(),
                "epoch": int(epoch) if epoch is not None else None,
                "performance_metrics": dict(performance_metrics or {}),
                "training_metadata": training,
            }
        )
        all_metrics = {**metrics, SCORE_FIELD: score}
        payload = build_payload(
            model_name=name,
            model_state=model_state,
            optimizer_state=optimizer_state,
            extra_state=extra,
            step=step,
            metrics=all_metrics,
            category=LEGACY,
            rng_state={},
        )
        run_id = model_run(store, name)
        source, written = store.write_checkpoint(run_id, name, step, payload)
        tags: dict[str, Any] = {
            tag("category"): LEGACY,
            tag("step"): step,
            tag("monitor"): SCORE_FIELD,
            tag("value"): score,
            **digest_tags(written.digest),
            tag("format_version"): FORMAT_VERSION,
            tag("created_at"): payload["created_at"],
            tag("size_bytes"): written.size_bytes,
            tag("legacy_checkpoint_id"): checkpoint_id,
            tag("legacy_model_type"): model_type,
            LEGACY_API_TAG: "true",
        }
        tags.update({METRIC_TAG_PREFIX + k: repr(v) for k, v in sorted(all_metrics.items())})
        with store.lock(f"model-{name}"):
            info = store.register_version(name, source, run_id, tags)
            best = store.alias_version(name, BEST_ALIAS)
            if best is None or (best.monitor == SCORE_FIELD and (best.value is None or score > best.value)):
                move_alias(
                    store.client,
                    name,
                    BEST_ALIAS,
                    info.version,
                    f"performance_score {score:.6g} is the best",
                    "legacy CheckpointManager",
                )
            self._rotate(name)
        stamp = int(datetime.now(UTC).timestamp() * 1000)
        store.log_metrics(run_id, [(k, v, stamp, step) for k, v in sorted(all_metrics.items())])
        total = sum(t.numel() for t in model_state.values() if isinstance(t, torch.Tensor))
        return self._metadata(
            info,
            checkpoint_id,
            model_type,
            written.size_bytes,
            score,
            all_metrics,
            epoch,
            training.get("training_time_hours"),
            total,
        )

    def _scored_versions(self, name: str) -> list[VersionInfo]:
        return [
            v
            for v in self.store.list_versions(name)
            if v.category == LEGACY and v.monitor == SCORE_FIELD and v.value is not None and not v.corrupt
        ]

    def _rotate(self, name: str) -> None:
        """Keep the best `max_checkpoints_per_model` by score: delete the lowest-scoring versions this API
        saved, never the `best` one, never the newest, never imported ones (called under the model's lock)."""
        versions = self.store.list_versions(name)
        best = self.store.alias_version(name, BEST_ALIAS)
        by_number = {v.version: v for v in versions}
        limit = self.max_checkpoints_per_model

        def rotation(summaries: Sequence[VersionSummary], best_version: int | None) -> list[int]:
            return legacy_rotation([by_number[s.version] for s in summaries], limit, best_version)

        prune(
            self.store,
            name,
            rotation,
            versions=versions,
            best_version=best.version if best else None,
            reason="legacy rotation",
        )

    # ------------------------------------------------------------------------------------- loading

    def load_best_checkpoint(self, model_name: str) -> tuple[str, CheckpointMetadata] | None:
        """(path of a local file in the legacy layout, its metadata) for the best checkpoint, None if none."""
        store, name = self.store, self._name(model_name)
        versions = [v for v in store.list_versions(name) if not v.corrupt]
        if not versions:
            return None
        best = store.alias_version(name, BEST_ALIAS)
        candidates = ([best] if best is not None and not best.corrupt else []) + [
            v for v in reversed(versions) if best is None or v.version != best.version
        ]
        for info in candidates:
            try:
                state = store.load_version(info)
            except CheckpointCorruptError as exc:
                mark_corrupt(store, info, str(exc), "max", SCORE_FIELD)  # legacy scores: higher is better
                continue
            path = self._materialize(info, state)
            metrics = {
                k[len(METRIC_TAG_PREFIX) :]: float(v) for k, v in info.tags.items() if k.startswith(METRIC_TAG_PREFIX)
            } or dict(state.metrics)
            score = metrics.get(SCORE_FIELD, info.value if info.monitor == SCORE_FIELD else performance_score(metrics))
            return str(path), self._metadata(
                info,
                info.tags.get(tag("legacy_checkpoint_id"), f"{name}_v{info.version}"),
                info.tags.get(tag("legacy_model_type"), "unknown"),
                path.stat().st_size,
                score,  # type: ignore[arg-type]
                metrics,
                state.step,
                None,
                None,
                path=str(path),
            )
        return None

    @property
    def cache_dir(self) -> Path:
        """Where verified checkpoints are written in the legacy layout: a private (0700) per-user directory."""
        if self._cache_dir is None:
            self._cache_dir = user_cache_dir("legacy")
        return private_directory(self._cache_dir)

    def _materialize(self, info: VersionInfo, state: CheckpointState) -> Path:
        """Write the checkpoint in the legacy layout to the cache directory, atomically. A file already there is
        reused only when its sha256 matches the digest recorded when it was written; else it is rewritten."""
        folder = private_directory(self.cache_dir / info.name)
        target = folder / f"{info.name}_v{info.version}_{(info.digest.hexdigest if info.digest else 'x')[:12]}.pt"
        digest_file = target.with_name(target.name + ".sha256")
        if (
            target.is_file()
            and digest_file.is_file()
            and digest_file.read_text(encoding="utf-8").strip() == sha256_file(target)
        ):
            return target
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
        os.close(fd)
        torch.save(legacy_layout(state), tmp)
        digest_tmp = Path(tmp + ".sha256")
        digest_tmp.write_text(sha256_file(tmp), encoding="utf-8")
        os.replace(digest_tmp, digest_file)
        os.replace(tmp, target)
        return target

    def _metadata(
        self,
        info: VersionInfo,
        checkpoint_id: str,
        model_type: str,
        size: int,
        score: float,
        metrics: Mapping[str, float],
        epoch: float | None,
        hours: Any,
        params: int | None,
        path: str | None = None,
    ) -> CheckpointMetadata:
        created = info.created_at
        return CheckpointMetadata(
            checkpoint_id=checkpoint_id,
            model_name=info.name,
            model_type=model_type,
            file_path=path or f"models:/{info.name}/{info.version}",
            created_at=datetime.fromisoformat(created) if created else datetime.now(UTC),
            file_size_mb=size / 2**20,
            performance_score=float(score),
            accuracy=metrics.get("accuracy"),
            loss=metrics.get("loss"),
            val_accuracy=metrics.get("val_accuracy"),
            val_loss=metrics.get("val_loss"),
            reward=metrics.get("reward"),
            pnl=metrics.get("pnl"),
            epoch=int(epoch) if epoch is not None else None,
            training_time_hours=as_number(hours),
            total_parameters=params,
            version=info.version,
        )

    # ------------------------------------------------------------------------------------- statistics

    def get_checkpoint_stats(self) -> dict[str, Any]:
        """{'total_models', 'total_checkpoints', 'total_size_mb', 'models': {name: {...}}} like the old API."""
        stats: dict[str, Any] = {"total_models": 0, "total_checkpoints": 0, "total_size_mb": 0.0, "models": {}}
        for name in self.store.managed_models():
            versions = [v for v in self.store.list_versions(name) if not v.corrupt]
            if not versions:
                continue
            size = sum(float(v.tags.get(tag("size_bytes"), 0) or 0) for v in versions) / 2**20
            best = self.store.alias_version(name, BEST_ALIAS)
            stats["models"][name] = {
                "checkpoint_count": len(versions),
                "total_size_mb": size,
                "best_performance": best.value if best else None,
                "best_checkpoint_id": best.tags.get(tag("legacy_checkpoint_id"), f"v{best.version}") if best else None,
                "latest_checkpoint": versions[-1].tags.get(tag("legacy_checkpoint_id"), f"v{versions[-1].version}"),
            }
            stats["total_models"] += 1
            stats["total_checkpoints"] += len(versions)
            stats["total_size_mb"] += size
        return stats


def _split_model(model: Any) -> tuple[dict[str, Any], dict[str, Any] | None, dict[str, Any]]:
    """(model state, optimizer state, extra state) of whatever the old call sites passed as `model`."""
    if hasattr(model, "policy_net") and hasattr(model, "target_net"):
        extra: dict[str, Any] = {"legacy_shape": "dqn_dict", "target_net": model.target_net.state_dict()}
        for key in ("epsilon", "steps_done"):
            if hasattr(model, key):
                extra[key] = to_plain(getattr(model, key))
        memory = getattr(model, "memory", None)
        if memory is not None and hasattr(memory, "__len__"):
            extra["memory_size"] = len(memory)
        optimizer = getattr(model, "optimizer", None)
        return dict(model.policy_net.state_dict()), (optimizer.state_dict() if optimizer is not None else None), extra
    if isinstance(model, torch.nn.Module):
        optimizer = getattr(model, "optimizer", None)
        state = optimizer.state_dict() if isinstance(optimizer, torch.optim.Optimizer) else None
        return dict(model.state_dict()), state, {"legacy_shape": "state_dict_dict"}
    if isinstance(model, Mapping) and model and all(isinstance(v, torch.Tensor) for v in model.values()):
        return dict(model), None, {"legacy_shape": "bare_state_dict"}
    raise PersistError(
        f"save_checkpoint cannot save a {type(model).__name__}; pass an nn.Module, a DQN agent "
        "with policy_net/target_net, or a state dict."
    )


def legacy_layout(state: CheckpointState) -> Any:
    """The checkpoint as the old manager wrote it: a DQN agent dict, a bare state dict or a model dict."""
    extra = state.extra_state if isinstance(state.extra_state, Mapping) else {}
    shape = extra.get("legacy_shape")
    if shape == "dqn_dict":
        out: dict[str, Any] = {
            "policy_net": state.model_state,
            "target_net": extra.get("target_net", state.model_state),
            "optimizer": state.optimizer_state,
        }
        for key in ("epsilon", "memory_size", "steps_done"):
            if key in extra:
                out[key] = extra[key]
        return out
    if shape == "bare_state_dict":
        return state.model_state
    legacy = extra.get("legacy") if isinstance(extra.get("legacy"), Mapping) else {}
    out = {
        "model_state_dict": state.model_state,
        "model_type": legacy.get("model_type"),  # type: ignore[union-attr]
        "saved_at": legacy.get("saved_at", state.created_at),  # type: ignore[union-attr]
        "epoch": legacy.get("epoch", state.step),  # type: ignore[union-attr]
        "performance_metrics": legacy.get("performance_metrics", dict(state.metrics)),  # type: ignore[union-attr]
        "training_metadata": legacy.get("training_metadata", {}),  # type: ignore[union-attr]
    }
    if "history" in legacy:  # type: ignore[operator]
        out["history"] = legacy["history"]  # type: ignore[index]
    if state.optimizer_state is not None:
        out["optimizer_state_dict"] = state.optimizer_state
    return out


_default: CheckpointManager | None = None
_default_lock = threading.Lock()


def get_checkpoint_manager() -> CheckpointManager:
    """The process-wide manager the old module-level functions used."""
    global _default
    with _default_lock:
        if _default is None:
            _default = CheckpointManager()
        return _default


def save_checkpoint(
    model: Any,
    model_name: str,
    model_type: str,
    performance_metrics: Mapping[str, Any],
    training_metadata: Mapping[str, Any] | None = None,
    force_save: bool = False,
) -> CheckpointMetadata | None:
    return get_checkpoint_manager().save_checkpoint(
        model, model_name, model_type, performance_metrics, training_metadata, force_save
    )


def load_best_checkpoint(model_name: str) -> tuple[str, CheckpointMetadata] | None:
    return get_checkpoint_manager().load_best_checkpoint(model_name)
