"""A registered checkpoint version as its tags describe it, and the names of those tags (a contract)."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field

from mlflow_persist._policy.policy import VersionSummary

__all__ = [
    "BEST_ALIAS",
    "CHECKPOINTS_DIR",
    "DEFAULT_ALGORITHM",
    "HEALTH_TAG",
    "RUN_KEY_TAG",
    "SHA256",
    "TAG_PREFIX",
    "XXH3_128",
    "Digest",
    "RunSummary",
    "VersionInfo",
    "checkpoint_dirname",
    "digest_tags",
    "find_version",
    "recorded_digest",
    "tag",
    "written_for",
]

SHA256 = "sha256"
XXH3_128 = "xxh3-128"
DEFAULT_ALGORITHM = XXH3_128


@dataclass(frozen=True)
class Digest:
    algorithm: str
    hexdigest: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"


def recorded_digest(algorithm: str | None, hexdigest: str | None, sha256: str | None = None) -> Digest | None:
    """The digest a manifest or a version's tags recorded: the algorithm-tagged one, else a bare sha256."""
    if hexdigest:
        return Digest(algorithm or SHA256, hexdigest)
    if sha256:
        return Digest(SHA256, sha256)
    return None


TAG_PREFIX = "mlflow_persist."
RUN_KEY_TAG = TAG_PREFIX + "run_key"
HEALTH_TAG = TAG_PREFIX + "health"
BEST_ALIAS = "best"
CHECKPOINTS_DIR = "checkpoints"


def tag(name: str) -> str:
    return TAG_PREFIX + name


def digest_tags(digest: Digest) -> dict[str, str]:
    """The registry tags that record a checkpoint's checksum."""
    return {tag("digest_algorithm"): digest.algorithm, tag("digest"): digest.hexdigest}


def checkpoint_dirname(model_name: str, step: int) -> str:
    """A fresh, unique directory name for a checkpoint of the registered model `model_name` at `step`."""
    return f"{model_name}-{step:010d}-{uuid.uuid4().hex[:8]}"


_DIRNAME_TAIL = re.compile(r"-[0-9]{10}-[0-9a-f]{8}$")


def written_for(dirname: str, model_name: str, staging_prefix: str = "") -> bool:
    """Whether `dirname` (a checkpoint directory, or its staging name) was named by `checkpoint_dirname` for
    exactly `model_name`: the name, then `-<10-digit step>-<8 hex>` and nothing else, so `net` never claims
    `net-b`'s or `x_net`'s directories."""
    if staging_prefix and dirname.startswith(staging_prefix):
        dirname = dirname[len(staging_prefix) :]
    match = _DIRNAME_TAIL.search(dirname)
    return match is not None and dirname[: match.start()] == model_name


@dataclass
class VersionInfo:
    """A registered checkpoint version as recorded by its tags."""

    name: str
    version: int
    source: str
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)
    creation_timestamp_ms: int | None = None
    description: str | None = None

    @property
    def category(self) -> str:
        return self.tags.get(tag("category"), "unknown")

    @property
    def step(self) -> int | None:
        raw = self.tags.get(tag("step"))
        return int(raw) if raw not in (None, "") else None

    @property
    def value(self) -> float | None:
        raw = self.tags.get(tag("value"))
        try:
            return float(raw) if raw not in (None, "", "None") else None
        except ValueError:
            return None

    @property
    def monitor(self) -> str | None:
        return self.tags.get(tag("monitor"))

    @property
    def digest(self) -> Digest | None:
        """The checksum recorded at registration (older versions carry only `mlflow_persist.sha256`)."""
        return recorded_digest(
            self.tags.get(tag("digest_algorithm")), self.tags.get(tag("digest")), self.tags.get(tag("sha256"))
        )

    @property
    def created_at(self) -> str | None:
        return self.tags.get(tag("created_at"))

    @property
    def format_version(self) -> int | None:
        raw = self.tags.get(tag("format_version"))
        return int(raw) if raw else None

    @property
    def corrupt(self) -> bool:
        return self.tags.get(tag("corrupt"), "").lower() == "true"

    @property
    def superseded(self) -> bool:
        return bool(self.tags.get(tag("migrated_to")))

    @property
    def mode(self) -> str | None:
        return self.tags.get(tag("mode")) or None

    @property
    def cut(self) -> str | None:
        """The id of the system checkpoint (cut) this version belongs to, if any."""
        return self.tags.get(tag("cut")) or None

    @property
    def cut_complete(self) -> bool:
        return self.tags.get(tag("cut_complete"), "").lower() == "true"

    def summary(self) -> VersionSummary:
        return VersionSummary(
            self.version,
            self.category,
            self.value,
            self.step,
            self.corrupt,
            self.monitor,
            self.superseded,
            self.mode,
            self.cut_complete,
        )


@dataclass(frozen=True)
class RunSummary:
    """A run as the inspection commands show it: status, tags, the latest value of each metric."""

    status: str
    tags: dict[str, str]
    metrics: dict[str, float]


def find_version(versions: list[VersionInfo], number: int) -> VersionInfo:
    return next(v for v in versions if v.version == number)
