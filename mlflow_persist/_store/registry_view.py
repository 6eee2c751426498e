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

The view also keeps each remembered version's `VersionSummary` (what retention decides on), so that a save
summarises only the versions it registered, not the whole history again (with 5,000 versions that was most
of a save's work). A summary belongs to the very `VersionInfo` object it was made from; a fresh listing brings
new objects and so new summaries.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlflow_persist._policy.policy import VersionSummary
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
        self._summaries: dict[int, tuple[VersionInfo, VersionSummary]] = {}  # id(info) -> (info, its summary)

    def summary(self, info: VersionInfo) -> VersionSummary:
        """`info.summary()`, made once per remembered `VersionInfo` object."""
        cached = self._summaries.get(id(info))
        if cached is not None and cached[0] is info:
            return cached[1]
        summary = info.summary()
        self._summaries[id(info)] = (info, summary)
        return summary

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
        if len(self._summaries) > len(versions):  # summaries of deleted or re-read versions: drop them
            kept = {id(v) for v in versions}
            self._summaries = {key: entry for key, entry in self._summaries.items() if key in kept}

    def forget(self) -> None:
        self._known = None
        self._summaries.clear()
