"""EpisodeStore: find, fetch, sample and verify the episodes stored in one MLflow run."""

from __future__ import annotations

import logging
import os
import random
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException

from mlflow_persist._format.payload import sha256_file
from mlflow_persist.episodes import layout
from mlflow_persist.episodes.index import empty_index, read_index
from mlflow_persist.episodes.model import Episode, to_utc_timestamp
from mlflow_persist.episodes.schema import read_rows
from mlflow_persist.episodes.weights import StateDict, read_weights, weights_path
from mlflow_persist.errors import CheckpointCorruptError, NotFoundError, PersistError

__all__ = ["EpisodeFailure", "EpisodeStore"]

log = logging.getLogger(__name__)


@dataclass
class EpisodeFailure:
    """An episode that could not be loaded, with the one-sentence reason."""

    episode_id: str
    reason: str
    error: PersistError | None = None


class EpisodeStore:
    """Read access to `episodes/` of `run_id`. Only index files are read up front; part files are
    downloaded (once, into `cache_dir`) and sha256-verified when one of their episodes is asked for."""

    def __init__(self, client: mlflow.MlflowClient, run_id: str, *, cache_dir: str | None = None) -> None:
        self.client = client
        self.run_id = run_id
        self._tmp = None if cache_dir else tempfile.TemporaryDirectory(prefix="mlflow-persist-episode-cache-")
        self.cache_dir = cache_dir or self._tmp.name  # type: ignore[union-attr]
        self._index_files: dict[str, pd.DataFrame] = {}
        self._index: pd.DataFrame | None = None
        self._verified: dict[str, str] = {}
        self.problems: list[str] = []

    # ------------------------------------------------------------------ index
    def refresh(self) -> pd.DataFrame:
        """Read index files not read yet; an unreadable index file is noted in `problems` and skipped."""
        try:
            listed = self.client.list_artifacts(self.run_id, layout.INDEX_DIR)
        except MlflowException as exc:
            raise NotFoundError(
                f"run {self.run_id} cannot be read ({exc}); check --run-id and --tracking-uri."
            ) from exc
        for info in listed:
            if info.is_dir or layout.index_seq(info.path) is None or info.path in self._index_files:
                continue
            try:
                local = self._download(info.path)
                self._index_files[info.path] = read_index(local)
            except Exception as exc:  # noqa: BLE001 - one bad index file must not hide the others
                msg = f"episode index {info.path} is unreadable ({exc}); its episodes cannot be found"
                if msg not in self.problems:
                    self.problems.append(msg)
                    log.error(msg)
        frames = [df for df in self._index_files.values() if len(df)]
        index = pd.concat(frames, ignore_index=True) if frames else empty_index()
        self._index = index.sort_values(["bar_time", "wall_time", "flush_seq", "row"], kind="stable", ignore_index=True)
        return self._index

    @property
    def index(self) -> pd.DataFrame:
        """All stored episodes (one row each, duplicates of an id included), in bar_time order."""
        return self._index if self._index is not None else self.refresh()

    def list(self, start: Any = None, end: Any = None) -> pd.DataFrame:
        """Index rows with start <= bar_time < end (either bound optional)."""
        idx = self.index
        mask = pd.Series(True, index=idx.index)
        if start is not None:
            mask &= idx["bar_time"] >= to_utc_timestamp(start, what="start")
        if end is not None:
            mask &= idx["bar_time"] < to_utc_timestamp(end, what="end")
        return idx[mask]

    def __len__(self) -> int:
        return int(self.index["episode_id"].nunique())

    def sample(self, n: int, seed: int | None = None) -> list[str]:  # type: ignore[valid-type]
        """n distinct episode ids chosen at random (all of them when fewer are stored)."""
        ids = sorted(self.index["episode_id"].unique().tolist())
        return random.Random(seed).sample(ids, min(n, len(ids)))

    def _entry(self, episode_id: str) -> pd.Series:
        rows = self.index[self.index["episode_id"] == episode_id]
        if rows.empty:
            hint = f"; {len(self.problems)} index file(s) were unreadable" if self.problems else ""
            raise NotFoundError(
                f"episode {episode_id} is not in the episode index of run {self.run_id}{hint}; "
                "list the stored ids with EpisodeStore.list()."
            )
        return rows.sort_values(["flush_seq", "wall_time"]).iloc[-1]  # the newest record of a reused id

    # ------------------------------------------------------------------ files
    def _download(self, artifact_path: str) -> str:
        """Download into a mirror of the artifact's folder (MLflow drops the folders of a single file)."""
        target = os.path.join(self.cache_dir, os.path.dirname(artifact_path))
        os.makedirs(target, exist_ok=True)
        return self.client.download_artifacts(self.run_id, artifact_path, target)

    def _local_file(self, file: str, sha256: str, episode_id: str) -> str:
        if file in self._verified:
            return self._verified[file]
        try:
            local = self._download(file)
        except (MlflowException, OSError) as exc:
            raise NotFoundError(
                f"episode file {file} (episode {episode_id}) is missing from run {self.run_id}; "
                "it was deleted or never uploaded, so this episode cannot be loaded."
            ) from exc
        if not os.path.isfile(local):
            raise NotFoundError(
                f"episode file {file} (episode {episode_id}) is missing from run {self.run_id}; "
                "it was deleted or never uploaded, so this episode cannot be loaded."
            )
        actual = sha256_file(local)
        if actual != sha256:
            os.remove(local)
            raise CheckpointCorruptError(
                f"episode file {file} (episode {episode_id}) fails its sha256 check (index {sha256[:12]}, "
                f"file {actual[:12]}); the file is corrupt, delete or restore it."
            )
        self._verified[file] = local
        return local

    def _read(self, file: str, sha256: str, rows: dict[int, str]) -> dict[str, Episode]:
        first = next(iter(rows.values()))
        local = self._local_file(file, sha256, first)
        try:
            decoded = read_rows(local, sorted(rows))
        except PersistError:
            raise
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for damaged files
            raise CheckpointCorruptError(
                f"episode file {file} (episode {first}) cannot be decoded ({exc}); "
                "the file is damaged, delete or restore it."
            ) from exc
        return {rows[r]: ep for r, ep in decoded.items()}

    def weights(self, name: str, fingerprint: str) -> StateDict:
        """The weights of `name` with this state_fingerprint that the recorder kept in the run."""
        path = weights_path(name, fingerprint)
        try:
            local = self._download(path)
        except (MlflowException, OSError) as exc:
            raise NotFoundError(
                f"episode weights {path} are missing from run {self.run_id}; they were recorded "
                "by an older recorder or deleted."
            ) from exc
        return read_weights(local, name, fingerprint)

    # ------------------------------------------------------------------ episodes
    def get(self, episode_id: str) -> Episode:
        """One episode; raises NotFoundError or CheckpointCorruptError naming the file and the episode."""
        entry = self._entry(episode_id)
        return self._read(entry["file"], entry["sha256"], {int(entry["row"]): episode_id})[episode_id]

    def load(self, episode_ids: Iterable[str]) -> list[Episode | EpisodeFailure]:  # type: ignore[valid-type]
        """Episodes in the order asked; one that cannot be loaded becomes an EpisodeFailure and the
        others still load (each part file is downloaded and verified once)."""
        ids = list(episode_ids)
        by_file: dict[tuple[str, str], dict[int, str]] = {}
        loaded: dict[str, Episode | EpisodeFailure] = {}
        for eid in ids:
            try:
                entry = self._entry(eid)
            except NotFoundError as exc:
                loaded[eid] = EpisodeFailure(eid, str(exc), exc)
                continue
            by_file.setdefault((entry["file"], entry["sha256"]), {})[int(entry["row"])] = eid
        for (file, sha), rows in by_file.items():
            try:
                loaded.update(self._read(file, sha, rows))
            except PersistError as exc:
                for eid in rows.values():
                    reason = str(exc).replace(f"(episode {next(iter(rows.values()))})", f"(episode {eid})")
                    loaded[eid] = EpisodeFailure(eid, reason, exc)
        return [loaded[eid] for eid in ids]

    def in_range(self, start: Any = None, end: Any = None) -> list[Episode | EpisodeFailure]:  # type: ignore[valid-type]
        """Episodes with start <= bar_time < end, in bar_time order."""
        ids = self.list(start, end)["episode_id"].drop_duplicates().tolist()
        return self.load(ids)

    def verify(self, files: Sequence[str] | None = None) -> dict[str, Any]:
        """Check every part file (or `files`) against the sha256 in the index and decode it.
        Returns {"files": n, "ok": k, "bad": [{"file", "reason", "episodes": [...]}], "problems": [...]}."""
        idx = self.index
        bad = []
        groups = idx.groupby(["file", "sha256"], sort=True)
        checked = 0
        for (file, sha), rows in groups:
            if files is not None and file not in files:
                continue
            checked += 1
            eids = rows["episode_id"].tolist()
            try:
                self._read(file, sha, {int(r): e for r, e in zip(rows["row"], rows["episode_id"], strict=True)})
            except PersistError as exc:
                bad.append({"file": file, "reason": str(exc), "episodes": eids})
        return {"files": checked, "ok": checked - len(bad), "bad": bad, "problems": list(self.problems)}
