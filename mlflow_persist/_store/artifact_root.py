"""Where the embedded store's artifacts are now, when its folder was moved or copied.

The sqlite database records absolute `file://` locations: an experiment's artifact root, each run's artifact
URI, each version's source. A project folder renamed with `mv`, or copied with `cp -r` to another path or
machine, carries its `mlruns/` beside `mlflow.db`, but the database still names the old place. The store reads
every local location through `ArtifactRoot.relocate`, so a moved folder finds its own files and a copy writes
its new checkpoints into itself, not into the original.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["ARTIFACT_ROOT_TAG", "BESIDE_STORE", "DEFAULT_ROOT_NAME", "ArtifactRoot", "artifact_root"]

ARTIFACT_ROOT_TAG = "mlflow_persist.artifact_root"  # experiment tag; BESIDE_STORE: `mlruns/` beside the database
BESIDE_STORE = "beside-store"
DEFAULT_ROOT_NAME = "mlruns"


@dataclass(frozen=True)
class ArtifactRoot:
    """`recorded`: the artifact root the database names (None: nothing to move); `actual`: `mlruns/` beside
    the database file as it is now."""

    actual: Path
    recorded: Path | None = None

    def relocate(self, path: Path) -> Path:
        """The path where a recorded local artifact location is now (unchanged when nothing moved)."""
        if self.recorded is not None:
            try:
                return self.actual / path.relative_to(self.recorded)
            except ValueError:
                pass
        if not path.exists() and DEFAULT_ROOT_NAME in path.parts:
            # another experiment's root beside the same (moved) database
            parts = path.parts
            below = parts[len(parts) - parts[::-1].index(DEFAULT_ROOT_NAME) :]
            candidate = self.actual.joinpath(*below)
            if candidate.exists():
                return candidate
        return path


def artifact_root(db_file: Path, recorded: Path | None, tagged_beside_store: bool) -> ArtifactRoot:
    """The relocation of an embedded store whose database is now `db_file` and whose experiment records the
    artifact root `recorded` (None: a remote or unknown root). The recorded root is relocated when it was made
    as `mlruns/` beside the database (the tag says so, or the old folder is gone, or holds a database of its
    own, the original of a copy); a root the user chose elsewhere is left as it is."""
    actual = db_file.parent / DEFAULT_ROOT_NAME
    if recorded is None or recorded.name != DEFAULT_ROOT_NAME or _same(recorded, actual):
        return ArtifactRoot(actual)
    old_home = recorded.parent
    if tagged_beside_store or not old_home.exists() or (old_home / db_file.name).exists():
        return ArtifactRoot(actual, recorded)
    return ArtifactRoot(actual)


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return a == b
