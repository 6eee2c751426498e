"""Reading `checkpoint_metadata.json`: entries, Windows/absolute path normalisation, timestamps."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

__all__ = ["METADATA_FILE", "MetadataEntry", "MetadataIndex", "parse_legacy_time", "read_metadata", "split_legacy_path"]

METADATA_FILE = "checkpoint_metadata.json"
_DRIVE = re.compile(r"^[A-Za-z]:$")


@dataclass(frozen=True)
class MetadataEntry:
    """One checkpoint entry of the legacy index, as written (unknown fields kept in `raw`)."""

    model_name: str
    checkpoint_id: str | None
    file_path: str | None
    created_at: str | None
    raw: Mapping[str, Any] = field(default_factory=dict)

    @property
    def path_parts(self) -> tuple[str, ...]:
        return split_legacy_path(self.file_path or "")


@dataclass(frozen=True)
class MetadataIndex:
    """What the metadata file held, plus why it could not be used when it is missing or unreadable."""

    path: Path
    entries: tuple[MetadataEntry, ...]
    problem: str | None = None

    @property
    def present(self) -> bool:
        return self.problem is None


def split_legacy_path(raw: str) -> tuple[str, ...]:
    """Path components of a legacy path written on Linux or Windows, relative or absolute.

    `C:\\Users\\t\\NN\\models\\saved\\dqn\\x.pt` and `/home/t/NN/models/saved/dqn/x.pt` both end in
    (..., 'saved', 'dqn', 'x.pt'); drive letters, empty parts and '.' are dropped.
    """
    parts = [p for p in re.split(r"[\\/]+", raw.strip()) if p and p != "."]
    if parts and _DRIVE.match(parts[0]):
        parts = parts[1:]
    return tuple(parts)


def read_metadata(base_dir: Path) -> MetadataIndex:
    """Parse `<base_dir>/checkpoint_metadata.json` without modifying it; a missing or bad file is not fatal."""
    path = base_dir / METADATA_FILE
    if not path.is_file():
        return MetadataIndex(path, (), problem="no checkpoint_metadata.json")
    try:
        with open(path, "rb") as handle:
            document = json.loads(handle.read().decode("utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return MetadataIndex(path, (), problem=f"checkpoint_metadata.json is unreadable ({exc})")
    checkpoints = document.get("checkpoints") if isinstance(document, dict) else None
    if not isinstance(checkpoints, dict):
        return MetadataIndex(path, (), problem="checkpoint_metadata.json has no 'checkpoints' object")
    entries: list[MetadataEntry] = []
    for key, items in checkpoints.items():
        if not isinstance(items, list):
            continue
        for item in items:
            if not isinstance(item, dict):
                continue
            entries.append(
                MetadataEntry(
                    model_name=str(item.get("model_name") or key),
                    checkpoint_id=_str_or_none(item.get("checkpoint_id")),
                    file_path=_str_or_none(item.get("file_path")),
                    created_at=_str_or_none(item.get("created_at")),
                    raw=dict(item),
                )
            )
    return MetadataIndex(path, tuple(entries))


def parse_legacy_time(text: str | None, assume_tz: tzinfo | None = None) -> datetime | None:
    """A legacy ISO timestamp (naive local time, with or without microseconds) as an aware UTC datetime.

    Naive values are read in `assume_tz` (default: this machine's local zone); unparseable ones give None.
    """
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=assume_tz) if assume_tz is not None else moment.astimezone()
    return moment.astimezone(UTC)


def _str_or_none(value: Any) -> str | None:
    return None if value is None else str(value)
