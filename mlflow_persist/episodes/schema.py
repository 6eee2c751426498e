"""The Parquet layout of episode part files: one row per episode, schema-versioned.

Columns: schema_version, episode_id, bar_time, wall_time (timestamp[ns, UTC]), reward (float64,
null when unknown), action / checkpoint_versions / market / rng / model_fingerprints / extra (exact JSON,
see values.py), frames (list of {name, digest, parquet}: each frame is a standalone uncompressed
Parquet file, so the outer zstd compresses across episodes), tensors and outputs (list of
{key, dtype, shape, data}: raw element bytes).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from mlflow_persist.episodes import values
from mlflow_persist.episodes.errors import EpisodeEncodingError, EpisodeFormatError
from mlflow_persist.episodes.frames import frame_fingerprint, frame_from_parquet_bytes, frame_to_parquet_bytes
from mlflow_persist.episodes.model import SCHEMA_VERSION, Episode
from mlflow_persist.episodes.tensors import TensorRecord, decode_tensor, encode_tensor

__all__ = [
    "PART_SCHEMA",
    "ROW_GROUP_ROWS",
    "SCHEMA_META_KEY",
    "TS",
    "decode_row",
    "encode_episode",
    "episodes_to_table",
    "read_all",
    "read_rows",
    "rows_to_table",
    "write_part",
    "write_rows",
]

SCHEMA_META_KEY = b"mlflow_persist.episodes.schema_version"
ROW_GROUP_ROWS = 64

_TENSOR = pa.struct(
    [("key", pa.string()), ("dtype", pa.string()), ("shape", pa.list_(pa.int64())), ("data", pa.large_binary())]
)
_FRAME = pa.struct([("name", pa.string()), ("digest", pa.string()), ("parquet", pa.large_binary())])
TS = pa.timestamp("ns", tz="UTC")

PART_SCHEMA = pa.schema(
    [
        ("schema_version", pa.int32()),
        ("episode_id", pa.string()),
        ("bar_time", TS),
        ("wall_time", TS),
        ("reward", pa.float64()),
        ("action", pa.string()),
        ("checkpoint_versions", pa.string()),
        ("market", pa.string()),
        ("rng", pa.string()),
        ("model_fingerprints", pa.string()),
        ("extra", pa.string()),
        ("frames", pa.list_(_FRAME)),
        ("tensors", pa.list_(_TENSOR)),
        ("outputs", pa.list_(_TENSOR)),
    ],
    metadata={SCHEMA_META_KEY: str(SCHEMA_VERSION).encode()},
)


def _tensor_rows(episode: Episode, group: str) -> list[dict]:
    rows = []
    for key, tensor in getattr(episode, group).items():
        rec = encode_tensor(tensor, key=f"episode {episode.episode_id} {group}['{key}']")
        rows.append({"key": key, "dtype": rec.dtype, "shape": list(rec.shape), "data": rec.data})
    return rows


def encode_episode(episode: Episode) -> dict:
    """One part-file row; also fills `episode.frame_digests` with the originals' fingerprints."""
    eid = episode.episode_id
    frames = []
    for name, frame in episode.frames.items():
        digest = frame_fingerprint(frame)
        episode.frame_digests[name] = digest
        frames.append(
            {
                "name": name,
                "digest": digest,
                "parquet": frame_to_parquet_bytes(frame, name=f"{name}' of episode '{eid}"),
            }
        )
    return {
        "schema_version": SCHEMA_VERSION,
        "episode_id": eid,
        "bar_time": episode.bar_time.value,
        "wall_time": episode.wall_time.value,
        "reward": episode.reward,
        "action": values.encode(episode.action, where=f"episode {eid} action"),
        "checkpoint_versions": values.encode(episode.checkpoint_versions, where=f"episode {eid} checkpoint_versions"),
        "market": values.encode(episode.market, where=f"episode {eid} market"),
        "rng": values.encode(episode.rng, where=f"episode {eid} rng"),
        "model_fingerprints": values.encode(episode.model_fingerprints, where=f"episode {eid} model_fingerprints"),
        "extra": values.encode(episode.extra, where=f"episode {eid} extra"),
        "frames": frames,
        "tensors": _tensor_rows(episode, "tensors"),
        "outputs": _tensor_rows(episode, "outputs"),
    }


def rows_to_table(rows: Sequence[dict]) -> pa.Table:
    """Lay encoded rows (see `encode_episode`) out as a part-file table."""
    columns = {name: [row[name] for row in rows] for name in PART_SCHEMA.names}
    try:
        return pa.Table.from_pydict(columns, schema=PART_SCHEMA)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise EpisodeEncodingError(
            f"episodes could not be laid out as Parquet ({exc}); check the recorded types."
        ) from exc


def episodes_to_table(episodes: Sequence[Episode]) -> pa.Table:
    return rows_to_table([encode_episode(ep) for ep in episodes])


def write_rows(rows: Sequence[dict], path: str, *, compression_level: int = 3) -> None:
    """Write encoded rows as a part file (zstd, page checksums, row groups of ROW_GROUP_ROWS)."""
    table = rows_to_table(rows)
    pq.write_table(
        table,
        path,
        compression="zstd",
        compression_level=compression_level,
        row_group_size=ROW_GROUP_ROWS,
        use_dictionary=["episode_id"],
        write_statistics=["bar_time", "wall_time"],
        write_page_checksum=True,
    )


def write_part(episodes: Sequence[Episode], path: str, *, compression_level: int = 3) -> None:
    """Encode and write episodes as one part file."""
    write_rows([encode_episode(ep) for ep in episodes], path, compression_level=compression_level)


def _tensors_from(rows: list[dict]) -> dict:
    return {r["key"]: decode_tensor(TensorRecord(r["dtype"], tuple(r["shape"]), r["data"])) for r in rows}


def decode_row(row: dict) -> Episode:
    """Rebuild an Episode from one part-file row."""
    version = row["schema_version"]
    if version > SCHEMA_VERSION:
        raise EpisodeFormatError(
            f"episode {row['episode_id']} uses schema version {version}, newer than this code reads "
            f"({SCHEMA_VERSION}); upgrade mlflow-persist."
        )
    import pandas as pd

    return Episode(
        episode_id=row["episode_id"],
        bar_time=pd.Timestamp(row["bar_time"]),
        wall_time=pd.Timestamp(row["wall_time"]),
        frames={f["name"]: frame_from_parquet_bytes(f["parquet"]) for f in row["frames"]},
        tensors=_tensors_from(row["tensors"]),
        outputs=_tensors_from(row["outputs"]),
        action=values.decode(row["action"]),
        reward=row["reward"],
        checkpoint_versions=values.decode(row["checkpoint_versions"]),
        market=values.decode(row["market"]),
        rng=values.decode(row["rng"]),
        model_fingerprints=values.decode(row["model_fingerprints"]),
        frame_digests={f["name"]: f["digest"] for f in row["frames"]},
        extra=values.decode(row["extra"]),
        schema_version=version,
    )


def _row_dict(table: pa.Table, row: int) -> dict:
    sliced = table.slice(row, 1)
    out = {}
    for name in sliced.schema.names:
        col = sliced.column(name)
        if name in ("bar_time", "wall_time"):
            out[name] = col.cast(pa.int64()).to_pylist()[0]
        else:
            out[name] = col.to_pylist()[0]
    # reward: keep the stored float bits (to_pylist already returns the exact double)
    return out


def read_rows(path: str | io.BytesIO, rows: Sequence[int]) -> dict[int, Episode]:
    """Decode the given rows of a part file, reading only the row groups that hold them."""
    pf = pq.ParquetFile(path, page_checksum_verification=True)
    starts = []
    total = 0
    for i in range(pf.num_row_groups):
        starts.append(total)
        total += pf.metadata.row_group(i).num_rows
    out: dict[int, Episode] = {}
    by_group: dict[int, list[int]] = {}
    for row in rows:
        if not 0 <= row < total:
            raise EpisodeFormatError(f"row {row} is outside the part file's {total} rows; the index does not match it.")
        group = max(i for i, s in enumerate(starts) if s <= row)
        by_group.setdefault(group, []).append(row)
    for group, group_rows in by_group.items():
        table = pf.read_row_group(group)
        for row in group_rows:
            out[row] = decode_row(_row_dict(table, row - starts[group]))
    return out


def read_all(path: str) -> list[Episode]:
    pf = pq.ParquetFile(path, page_checksum_verification=True)
    return list(read_rows(path, range(pf.metadata.num_rows)).values())
