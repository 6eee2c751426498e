"""Turn a legacy payload into the current checkpoint payload and the tags of its registered version."""

from __future__ import annotations

from typing import Any

from mlflow_persist._format.digest import Digest
from mlflow_persist._format.payload import FORMAT_VERSION, build_payload
from mlflow_persist._policy.versions import digest_tags
from mlflow_persist._store.mlflow_store import tag
from mlflow_persist.legacy.classify import LegacyPayload, to_plain
from mlflow_persist.legacy.plan import LEGACY_SHA_TAG
from mlflow_persist.legacy.scan import LegacyFile

__all__ = [
    "LEGACY",
    "METRICS_LOGGED_TAG",
    "METRIC_TAG_PREFIX",
    "legacy_created_at",
    "to_current_payload",
    "version_tags",
]

LEGACY = "legacy"
METRIC_TAG_PREFIX = "mlflow_persist.metric."
METRICS_LOGGED_TAG = "mlflow_persist.legacy_metrics_logged"


def legacy_created_at(file: LegacyFile) -> str:
    return file.created_at.isoformat(timespec="microseconds")


def to_current_payload(file: LegacyFile, payload: LegacyPayload, model_name: str) -> dict[str, Any]:
    """The current-format payload: the legacy weights as model_state, the optimizer as optimizer_state and
    everything else the file held (target net, epsilon, history, ...) under extra_state."""
    extra = dict(to_plain(payload.extra_state))
    extra["legacy_checkpoint_id"] = file.checkpoint_id
    extra["legacy_sha256"] = file.sha256
    built = build_payload(
        model_name=model_name,
        model_state=payload.model_state,
        optimizer_state=payload.optimizer_state,
        scheduler_state=None,
        extra_state=extra,
        step=file.step,
        metrics=file.metrics,
        category=LEGACY,
        rng_state={},
    )
    built["created_at"] = legacy_created_at(file)
    return built


def version_tags(file: LegacyFile, digest: Digest, size_bytes: int, metric: str) -> dict[str, str]:
    """Tags of a legacy version: the contract tags plus where it came from and its legacy metrics."""
    value = file.metrics.get(metric)
    tags: dict[str, Any] = {
        tag("category"): LEGACY,
        tag("step"): file.step,
        tag("monitor"): metric,
        tag("value"): value if value is not None else "",
        **digest_tags(digest),
        tag("format_version"): FORMAT_VERSION,
        tag("created_at"): legacy_created_at(file),
        tag("size_bytes"): size_bytes,
        tag("legacy_path"): file.path.as_posix(),
        tag("legacy_checkpoint_id"): file.checkpoint_id,
        tag("legacy_shape"): file.shape or "",
        tag("legacy_created_at_source"): file.created_at_source,
        LEGACY_SHA_TAG: file.sha256,
    }
    if file.entry is not None:
        if file.entry.file_path:
            tags[tag("legacy_recorded_path")] = file.entry.file_path
        if file.entry.raw.get("model_type") is not None:
            tags[tag("legacy_model_type")] = file.entry.raw["model_type"]
    if file.trusted:
        tags[tag("legacy_trusted")] = "true"
    for key, number in sorted(file.metrics.items()):
        tags[METRIC_TAG_PREFIX + key] = repr(float(number))
    return {k: str(v) for k, v in tags.items()}
