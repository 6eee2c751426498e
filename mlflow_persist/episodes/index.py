"""The episode index: one small Parquet file per flush, mapping episode_id -> file, row and times.

Columns: episode_id, bar_time, wall_time (timestamp[ns, UTC]), file (artifact path in the run),
row (row in that part file), sha256 (of the part file), schema_version, flush_seq, reward, action
(exact JSON) and checkpoint_versions (exact JSON). Loading all index files is cheap; the part files
are read only for the episodes asked for.
"""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlflow_persist.episodes import values
from mlflow_persist.episodes.model import Episode

__all__ = ["COLUMNS", "INDEX_SCHEMA", "TS", "empty_index", "index_rows", "read_index", "rows_to_frame", "write_index"]

TS = pa.timestamp("ns", tz="UTC")
INDEX_SCHEMA = pa.schema(
    [
        ("episode_id", pa.string()),
        ("bar_time", TS),
        ("wall_time", TS),
        ("file", pa.string()),
        ("row", pa.int64()),
        ("sha256", pa.string()),
        ("schema_version", pa.int32()),
        ("flush_seq", pa.int64()),
        ("reward", pa.float64()),
        ("action", pa.string()),
        ("checkpoint_versions", pa.string()),
    ]
)
COLUMNS = INDEX_SCHEMA.names


def index_rows(episodes: list[Episode], file: str, sha256: str, flush_seq: int) -> list[dict]:
    return [
        {
            "episode_id": ep.episode_id,
            "bar_time": ep.bar_time.value,
            "wall_time": ep.wall_time.value,
            "file": file,
            "row": row,
            "sha256": sha256,
            "schema_version": ep.schema_version,
            "flush_seq": flush_seq,
            "reward": ep.reward,
            "action": values.encode(ep.action),
            "checkpoint_versions": values.encode(ep.checkpoint_versions),
        }
        for row, ep in enumerate(episodes)
    ]


def rows_to_frame(rows: list[dict]) -> pd.DataFrame:
    table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
    return table.to_pandas()


def write_index(rows: list[dict], path: str) -> pd.DataFrame:
    table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
    pq.write_table(table, path, compression="zstd", write_page_checksum=True)
    return table.to_pandas()


def read_index(path: str) -> pd.DataFrame:
    return pq.read_table(path, page_checksum_verification=True).to_pandas()


def empty_index() -> pd.DataFrame:
    return INDEX_SCHEMA.empty_table().to_pandas()
