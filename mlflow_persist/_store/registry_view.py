"""What the save pipeline remembers of one model's registry between saves, and when it may trust it.

After a save, the pipeline knows every version and where `best` points: it listed them (or knew them) and
made every change itself, under a lock every local writer shares. The next save can therefore skip the
listing and the alias read, the two registry round trips that only re-read what the pipeline already knows,
when all of these hold:

- the store is one every writer locks (`lock_is_shared`: the embedded sqlite store; never a server);
- nothing else in this process changed the model through the store since (`registry_generation`);
- the versions just registered are numbered right after the known ones (no other process registered one);
- fewer than `reread_every` saves went by since the last full read.

The last bound is there for changes no counter sees: another process's `mlflow-persist verify` tagging a
version corrupt, an operator moving `best` in the MLflow UI. They are picked up within `reread_every` saves,
and a `best` moved by another writer is caught at once when that writer registered a version.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow_persist._policy.versions import VersionInfo

__all__ = ["REREAD_EVERY", "KnownRegistry", "RegistryView"]

REREAD_EVERY = 10


@dataclass
class KnownRegistry:
    versions: list[VersionInfo]
    best: VersionInfo | None


class RegistryView:
    def __init__(self, reread_every: int = REREAD_EVERY) -> None:
        self.reread_every = reread_every
        self._known: KnownRegistry | None = None
        self._generation = -1
        self._saves_since_read = 0

    def known(self, generation_before: int, created: list[VersionInfo]) -> KnownRegistry | None:
        """The versions and `best` after this save's own registrations `created`, or None when they must be
        read from the store. `generation_before`: the store's generation before those registrations."""
        known = self._known
        if known is None or generation_before != self._generation or self._saves_since_read >= self.reread_every:
            return None
        expected = max((v.version for v in known.versions), default=0) + 1
        for info in sorted(created, key=lambda v: v.version):
            if info.version != expected:
                return None
            expected += 1
        self._saves_since_read += 1
        return KnownRegistry(known.versions + sorted(created, key=lambda v: v.version), known.best)

    def read(self) -> None:
        """The caller is about to list the versions and read `best` from the store."""
        self._saves_since_read = 0

    def remember(self, versions: list[VersionInfo], best: VersionInfo | None, generation_after: int) -> None:
        self._known = KnownRegistry(list(versions), best)
        self._generation = generation_after

    def forget(self) -> None:
        self._known = None
