"""A registered checkpoint directory's marker, so that the start-up sweep need not list every registered version.

The sweep of an embedded store deletes checkpoint directories no registered version uses (the leftovers of a
save interrupted between writing and registering). Knowing which ones are used means listing every version
created from the run: with thousands of versions that listing was most of a restart. So the store puts an
empty file named after the directory into it once a version registers it, and the sweep asks the registry only
about the directories without one.

The marker is a hint that only ever spares a directory, never condemns one: a directory is deleted only when
the registry's listing does not name it. A missing marker (a crash right after registering, a power cut that
loses the unsynced file, a directory an older release wrote) costs one listing, and the sweep then marks the
directories the listing showed in use. A directory copied under another name carries a marker with the old
name, which does not count. A marked directory whose versions were all deleted, but whose files could not
be, is left to the disk-pressure cleanup, which sweeps without trusting markers.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["is_marked", "mark_registered"]

_PREFIX = ".registered-"


def _marker_path(directory: str) -> str:
    """The marker's path inside `directory` (plain strings: called for every checkpoint directory at start-up)."""
    return os.path.join(directory, _PREFIX + os.path.basename(os.path.normpath(directory)))


def mark_registered(directory: Path) -> None:
    """Note that a registered version uses `directory` (best effort: a missing marker only costs a listing)."""
    try:
        if directory.is_dir():
            Path(_marker_path(os.fspath(directory))).touch()
    except OSError:
        pass


def is_marked(directory: Path | str) -> bool:
    """One `stat`."""
    return os.path.exists(_marker_path(os.fspath(directory)))
