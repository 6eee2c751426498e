"""Artifact paths of the episode store inside an MLflow run (a contract the UI and the store share)."""

from __future__ import annotations

import re

import pandas as pd

__all__ = ["INDEX_DIR", "ROOT", "date_dir", "index_name", "index_seq", "part_name"]

ROOT = "episodes"
INDEX_DIR = f"{ROOT}/index"
_INDEX_RE = re.compile(r"^index-(\d{6,})-([0-9a-f]+)\.parquet$")


def date_dir(bar_time: pd.Timestamp) -> str:
    """`episodes/date=YYYY-MM-DD` for the UTC date of the bar."""
    return f"{ROOT}/date={bar_time.tz_convert('UTC').strftime('%Y-%m-%d')}"


def part_name(seq: int, token: str) -> str:
    return f"part-{seq:06d}-{token}.parquet"


def index_name(seq: int, token: str) -> str:
    return f"index-{seq:06d}-{token}.parquet"


def index_seq(filename: str) -> int | None:
    """The flush sequence number of an index file name, None for other files."""
    m = _INDEX_RE.match(filename.rsplit("/", 1)[-1])
    return int(m.group(1)) if m else None
