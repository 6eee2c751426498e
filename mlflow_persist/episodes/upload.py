"""One flush: encode a batch of episodes, write part files per date and an index, upload, log lineage."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import mlflow

from mlflow_persist._format.payload import sha256_file
from mlflow_persist._store.worker_calls import StoreAddress, client_for
from mlflow_persist.episodes import layout
from mlflow_persist.episodes.errors import EpisodeEncodingError
from mlflow_persist.episodes.index import index_rows, write_index
from mlflow_persist.episodes.lineage import log_index_dataset
from mlflow_persist.episodes.model import Episode
from mlflow_persist.episodes.schema import encode_episode, write_rows

__all__ = ["FlushResult", "next_seq", "write_flush", "write_flush_at"]

log = logging.getLogger(__name__)


@dataclass
class FlushResult:
    """What one flush stored: part files, the index file, rows and bytes, and episodes refused."""

    seq: int
    parts: list[str] = field(default_factory=list)
    index_file: str | None = None
    rows: int = 0
    bytes_written: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)


def write_flush_at(address: StoreAddress, run_id: str, batch: Sequence[Episode], **options: Any) -> FlushResult:
    """`write_flush` on the store at `address`: what the persistence worker process runs (episodes pickle)."""
    return write_flush(client_for(address), run_id, batch, **options)


def next_seq(client: mlflow.MlflowClient, run_id: str) -> int:
    """1 + the highest flush sequence already in the run's episode index."""
    seqs = [layout.index_seq(f.path) for f in client.list_artifacts(run_id, layout.INDEX_DIR)]
    return max([s for s in seqs if s is not None], default=0) + 1


def write_flush(
    client: mlflow.MlflowClient,
    run_id: str,
    batch: Sequence[Episode],
    *,
    seq: int,
    token: str,
    compression_level: int = 3,
    log_dataset: bool = True,
) -> FlushResult:
    """Store `batch`; re-running with the same seq and token overwrites the same files (idempotent)."""
    result = FlushResult(seq=seq)
    groups: dict[str, list[tuple[Episode, dict]]] = {}
    for ep in batch:
        try:
            row = encode_episode(ep)
        except EpisodeEncodingError as exc:
            log.error("episode %s not stored: %s", ep.episode_id, exc)
            result.rejected.append((ep.episode_id, str(exc)))
            continue
        groups.setdefault(layout.date_dir(ep.bar_time), []).append((ep, row))
    if not groups:
        return result
    all_index_rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="mlflow-persist-episodes-") as tmp:
        for directory, items in groups.items():
            name = layout.part_name(seq, token)
            local_dir = os.path.join(tmp, directory)
            os.makedirs(local_dir, exist_ok=True)
            local = os.path.join(local_dir, name)
            write_rows([row for _, row in items], local, compression_level=compression_level)
            digest = sha256_file(local)
            client.log_artifact(run_id, local, artifact_path=directory)
            artifact = f"{directory}/{name}"
            result.parts.append(artifact)
            result.bytes_written += os.path.getsize(local)
            all_index_rows.extend(index_rows([ep for ep, _ in items], artifact, digest, seq))
        index_local = os.path.join(tmp, layout.index_name(seq, token))
        index_df = write_index(all_index_rows, index_local)
        client.log_artifact(run_id, index_local, artifact_path=layout.INDEX_DIR)
        result.bytes_written += os.path.getsize(index_local)
    result.index_file = f"{layout.INDEX_DIR}/{layout.index_name(seq, token)}"
    result.rows = len(all_index_rows)
    if log_dataset:
        run = client.get_run(run_id)
        log_index_dataset(client, run_id, index_df, f"{run.info.artifact_uri}/{result.index_file}")
    return result
