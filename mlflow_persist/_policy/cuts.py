"""System checkpoints (cuts), the pure part: which registered versions form a complete, consistent cut.

A cut is one version per member (every tracked model plus the application's own state), snapshotted
together on the training thread at one step boundary. Each member version carries:

- `mlflow_persist.cut`: the cut id, `<sequence:08d>-<random>` (the sequence orders cuts);
- `mlflow_persist.cut_members`: the names of every member, comma-separated;
- `mlflow_persist.cut_complete=true`: the marker, set on the members only once every one of them is registered
  (and whatever else the cut waits for, such as episodes, is durable). It is recorded last: a cut whose
  marker is missing on all members was interrupted and is never restored.

A cut counts as complete when every declared member still has an intact version with the cut's id and every one
of them carries the marker (a crash between two marker writes leaves a cut that is never restored), and none of
them is tagged corrupt.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mlflow_persist._policy.versions import VersionInfo, tag

__all__ = [
    "CUT_COMPLETE_TAG",
    "CUT_MEMBERS_TAG",
    "CUT_TAG",
    "Cut",
    "complete_cuts",
    "cut_sequence",
    "cut_tags",
    "declared_members",
    "new_cut_id",
    "next_cut_sequence",
]

CUT_TAG = tag("cut")
CUT_MEMBERS_TAG = tag("cut_members")
CUT_COMPLETE_TAG = tag("cut_complete")


def new_cut_id(sequence: int) -> str:
    return f"{sequence:08d}-{uuid.uuid4().hex[:8]}"


def cut_sequence(cut_id: str) -> int:
    """The ordering number of a cut id (-1 for an id this package did not make)."""
    head = cut_id.split("-", 1)[0]
    return int(head) if head.isdigit() else -1


def cut_tags(cut_id: str, members: Sequence[str]) -> dict[str, str]:
    return {CUT_TAG: cut_id, CUT_MEMBERS_TAG: ",".join(sorted(members))}


@dataclass(frozen=True)
class Cut:
    id: str
    members: dict[str, VersionInfo]  # member (model) name -> its version in this cut

    @property
    def sequence(self) -> int:
        return cut_sequence(self.id)

    @property
    def step(self) -> int | None:
        steps = [v.step for v in self.members.values() if v.step is not None]
        return max(steps) if steps else None


def complete_cuts(versions_by_member: Mapping[str, Sequence[VersionInfo]], require_marker: bool = True) -> list[Cut]:
    """Every complete cut found among the members' versions, newest first. Without `require_marker`: every
    cut whose declared members are all registered and intact, marked or not."""
    found: dict[str, dict[str, VersionInfo]] = {}
    declared: dict[str, set[str]] = {}
    for member, versions in versions_by_member.items():
        for info in versions:
            cut_id = info.cut
            if cut_id is None:
                continue
            previous = found.setdefault(cut_id, {}).get(member)
            if previous is None or info.version > previous.version:
                found[cut_id][member] = info
            names = {n for n in info.tags.get(CUT_MEMBERS_TAG, "").split(",") if n}
            declared.setdefault(cut_id, set()).update(names or {member})
    cuts = [
        Cut(cut_id, members)
        for cut_id, members in found.items()
        if declared[cut_id] <= set(members)
        and not any(v.corrupt for v in members.values())
        and (not require_marker or all(v.cut_complete for v in members.values()))
    ]
    return sorted(cuts, key=lambda c: (c.sequence, c.id), reverse=True)


def declared_members(versions_by_member: Mapping[str, Sequence[VersionInfo]]) -> set[str]:
    """Every member name the cuts among these versions declare."""
    return {
        name
        for versions in versions_by_member.values()
        for info in versions
        for name in info.tags.get(CUT_MEMBERS_TAG, "").split(",")
        if name
    }


def next_cut_sequence(versions_by_member: Mapping[str, Sequence[VersionInfo]]) -> int:
    """One more than the highest cut sequence any member's versions carry (complete or not)."""
    sequences = [cut_sequence(v.cut) for versions in versions_by_member.values() for v in versions if v.cut]
    return max(sequences, default=0) + 1
