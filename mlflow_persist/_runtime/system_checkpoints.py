"""System checkpoints (cuts) of a `Persistence`: `save_all()` snapshots every tracked model and application state
at one step boundary as one cut, `restore_all()` restores the newest complete cut, all members verified before
any is applied. The cut keeper thread (cut_keeper.py) marks a cut complete; the selection is pure (_policy.cuts)."""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterable

from mlflow_persist._format.fitting import model_state_fit
from mlflow_persist._observe.logs import package_logger
from mlflow_persist._policy.cuts import Cut, complete_cuts, cut_tags, declared_members, new_cut_id, next_cut_sequence
from mlflow_persist._policy.policy import FINAL, PERIODIC
from mlflow_persist._policy.versions import VersionInfo, tag
from mlflow_persist._runtime.cut_keeper import CutKeeper, PendingCut
from mlflow_persist._runtime.handle import ModelHandle, RestoreInfo
from mlflow_persist._runtime.writer import SaveJob
from mlflow_persist._store.best import mark_corrupt
from mlflow_persist._store.protocol import CheckpointStore
from mlflow_persist.config import PersistConfig
from mlflow_persist.errors import (
    CheckpointCorruptError,
    CheckpointMismatchError,
    CheckpointUnavailableError,
    PersistError,
)

__all__ = ["BEFORE_CUTS_TAG", "CUT_WRITER_SLOTS", "SystemCheckpoints", "cut_writer_slot"]

log = package_logger("mlflow_persist")


#: Run tag: the newest version of the model when the first `restore_all` found no system checkpoint.
BEFORE_CUTS_TAG = tag("before_cuts_up_to_version")
#: Cut sequences leave room for this many writers in one millisecond (see `_next_cut_sequence`).
CUT_WRITER_SLOTS = 1000
_writers = itertools.count()


def cut_writer_slot() -> int:
    """A number below CUT_WRITER_SLOTS for one writer of cuts: different for the writers of one process, and
    for processes whose ids differ by less than CUT_WRITER_SLOTS minus the writers they made."""
    return (os.getpid() + next(_writers)) % CUT_WRITER_SLOTS


class SystemCheckpoints:
    """Cuts over the tracked models; `Persistence` provides the state declared here."""

    config: PersistConfig
    store: CheckpointStore
    handles: dict[str, ModelHandle]
    cuts: CutKeeper
    _state_steps: dict[str, Callable[[], int] | None]
    _cut_sequence: int | None
    _cut_writer_slot: int
    last_cut_jobs: dict[str, SaveJob] = {}  # noqa: RUF012 - replaced, never mutated, per instance by save_all

    def save_all(
        self,
        category: str = PERIODIC,
        *,
        wait_for: Iterable[Callable[[], bool]] = (),
        submit_wait: float | None = -1.0,
    ) -> str:
        """Snapshot every tracked model and application state now, at this step boundary, as one system
        checkpoint (a cut); returns its id. The snapshots are written in the background; the cut becomes
        complete (restorable by `restore_all`) once every member is registered and every `wait_for`
        condition holds. Performance saves stay per model."""
        if category not in (PERIODIC, FINAL):
            raise PersistError(f"A system checkpoint is `periodic` or `final`, not {category!r}.")
        if not self.handles:
            raise PersistError("save_all() found nothing tracked; call track() for each model first.")
        sequence = self._next_cut_sequence()
        cut_id = new_cut_id(sequence)
        tags = cut_tags(cut_id, list(self.handles))
        model_steps = [h.current_step for n, h in self.handles.items() if n not in self._state_steps]
        jobs = {}
        for name, handle in list(self.handles.items()):
            if name in self._state_steps:
                handle.current_step = self._state_step(name, max(model_steps, default=0))
            job = handle.save(category, tags=tags, submit_wait=submit_wait)
            if job is None:  # the others are still saved: each is a good checkpoint of its own
                log.error("cut %s: %s could not be snapshotted; this system checkpoint stays incomplete", cut_id, name)
            else:
                jobs[name] = job
        self.last_cut_jobs = dict(jobs)
        if len(jobs) == len(self.handles):
            self.cuts.add(
                PendingCut(cut_id, jobs, {n: h.registered_name for n, h in self.handles.items()}, list(wait_for))
            )
        return cut_id

    def _state_step(self, name: str, fallback: int) -> int:
        step = self._state_steps[name]
        if step is None:
            return fallback
        try:
            return int(step())
        except Exception as exc:  # noqa: BLE001 - a broken step callback must not stop training
            log.error("%s: its step callback failed (%s); the cut records step %d", name, exc, fallback)
            return fallback

    def restore_all(self, strict: bool = True) -> dict[str, RestoreInfo]:
        """Restore the newest complete system checkpoint into every tracked model and application state.

        Members are loaded and verified first, then applied: a damaged member is tagged corrupt and the next
        older complete cut is tried. A tracked model that is not a member of the cut restores its own newest
        checkpoint. When cuts exist but none is complete, nothing is restored on a local store (the initial
        state is the newest consistent one; a kill before the first cut completed). Behind a tracking server,
        where an outage can keep every marker from being written, the newest cut whose members are all
        registered is restored instead. Only a store without any cut (checkpoints from before cuts) falls back
        to each model's own newest checkpoint. Returns what was restored, per name. A member whose files cannot be reached stops the restore
        (CheckpointUnavailableError), or, with on_unavailable="fresh" for every model, everything starts fresh."""
        try:
            return self._restore_all(strict)
        except CheckpointUnavailableError as exc:
            if any(h.settings.on_unavailable == "fail" for h in self.handles.values()):
                if "on_unavailable" in str(exc):
                    raise
                raise CheckpointUnavailableError(
                    f"{exc} To start training without them, set on_unavailable='fresh' (nothing is lost either way)."
                ) from None
            log.error("%s Every model starts fresh, as on_unavailable='fresh' says.", exc)
            return {}

    def _restore_all(self, strict: bool) -> dict[str, RestoreInfo]:
        names = list(self.handles)
        for handle in self.handles.values():
            if handle.pipeline.outbox is not None and handle.pipeline.drain_outbox(blocking=True) > 0:
                log.warning(
                    "checkpoints still wait in the outbox (the server is unreachable); each model "
                    "restores its own newest checkpoint instead of a system checkpoint"
                )
                return self._restore_each(names, strict)
        versions = {name: self.store.list_versions(h.registered_name) for name, h in self.handles.items()}
        for name in sorted(declared_members(versions) - set(versions)):  # members no longer tracked still count
            versions[name] = self.store.list_versions(self.config.registered_name(name))
        self._cut_sequence = next_cut_sequence(versions)
        restored = self._restore_cut(complete_cuts(versions), versions, strict)
        if restored is None and self.store.is_remote:
            restored = self._restore_cut(complete_cuts(versions, require_marker=False), versions, strict)
            if restored is not None:
                log.warning(
                    "no system checkpoint behind the server is marked complete (an outage at the time?); "
                    "restored the newest one whose members are all registered"
                )
        if restored is not None:
            restored.update(self._restore_each([n for n in names if n not in restored], strict))
            return restored
        if any(info.cut for member in versions.values() for info in member):
            # Cuts were taken, but none completed (or every complete one is damaged): the newest consistent
            # state is the initial one. Mixing each model's own newest checkpoint would not be consistent.
            log.warning(
                "no complete system checkpoint: the cuts found were interrupted before their completion "
                "marker; everything starts from its initial state (a model's own newest checkpoint is "
                "still there for handle.restore())"
            )
            return {}
        limits = self._before_cuts(versions)
        if any(versions.values()):
            log.warning(
                "no system checkpoint found; each model restores its own newest checkpoint from before the "
                "first start that took system checkpoints (%s)",
                ", ".join(f"{name} v{limit} or older" for name, limit in sorted(limits.items())),
            )
        return self._restore_each(names, strict, limits)

    def _before_cuts(self, versions: dict[str, list[VersionInfo]]) -> dict[str, int]:
        """Per tracked model, the newest version number written before the first `restore_all` that found no
        cut (recorded on the model's run the first time): a process killed before its first cut completed
        left newer per-model checkpoints that belong to no consistent state, so the next start restores what
        the first one restored and runs the same course."""
        limits = {}
        for name, handle in self.handles.items():
            if name in self._state_steps:
                continue
            summary = self.store.run_summary(handle.run_id)
            recorded = summary.tags.get(BEFORE_CUTS_TAG) if summary is not None else None
            if recorded is not None and recorded.isdigit():
                limits[name] = int(recorded)
                continue
            limits[name] = max((v.version for v in versions.get(name, [])), default=0)
            self.store.set_run_tags(handle.run_id, {BEFORE_CUTS_TAG: str(limits[name])})
        return limits

    def _restore_cut(
        self, cuts: list[Cut], versions: dict[str, list[VersionInfo]], strict: bool
    ) -> dict[str, RestoreInfo] | None:
        """The first of `cuts` whose tracked members all load intact, applied; None when none does."""
        for cut in cuts:
            members = {name: info for name, info in cut.members.items() if name in self.handles}
            if not members:
                continue
            states = {}
            damaged = None
            for name, info in members.items():
                try:
                    states[name] = self.handles[name].load_version(info)
                except CheckpointCorruptError as exc:
                    damaged = (name, info, exc)
                    break
            if damaged is not None:
                name, info, damage = damaged
                handle = self.handles[name]
                log.error(
                    "cut %s: %s v%d is damaged (%s); trying an older system checkpoint",
                    cut.id,
                    name,
                    info.version,
                    damage,
                )
                mark_corrupt(self.store, info, str(damage), handle.settings.mode, handle.tracker.monitor)
                continue
            if strict:  # every member must fit before any is applied: never half the models restored
                misfits = {
                    name: fit.describe()
                    for name, state in states.items()
                    if not (fit := model_state_fit(self.handles[name].model.state_dict(), state.model_state)).fits
                }
                if misfits:
                    raise CheckpointMismatchError(
                        f"System checkpoint {cut.id} does not fit the tracked "
                        + "; ".join(f"{name} ({why})" for name, why in sorted(misfits.items()))
                        + "; nothing was restored. Track the models it was saved with, or call "
                        "restore_all(strict=False). The registry was left as it is."
                    )
            restored: dict[str, RestoreInfo] = {}
            live = {name: self.handles[name].live_state() for name in states}
            try:
                for name, state in states.items():
                    handle = self.handles[name]
                    handle.adopt_stored_best()
                    restored[name] = handle.apply_version(members[name], state, versions[name], strict)
            except CheckpointMismatchError:
                for name in restored:  # put back what was applied before the member that did not fit
                    self.handles[name].put_back(live[name])
                raise
            self.cuts.record_complete(cut.id, {self.handles[n].registered_name: i.version for n, i in members.items()})
            log.info(
                "restored system checkpoint %s (step %s): %s",
                cut.id,
                cut.step,
                ", ".join(f"{n} v{i.version}" for n, i in sorted(restored.items())),
            )
            return restored
        return None

    def _restore_each(
        self, names: list[str], strict: bool, limits: dict[str, int] | None = None
    ) -> dict[str, RestoreInfo]:
        """Each model's own newest checkpoint (numbered at most `limits[name]` when given); never an
        application state, which only a complete cut restores (alone it would not match the models)."""
        restored = {}
        for name in names:
            if name in self._state_steps:
                continue
            info = self.handles[name].restore_newest(strict, at_most=(limits or {}).get(name))
            if info is not None:
                restored[name] = info
        return restored

    def cut(self, cut_id: str) -> PendingCut | None:
        """A system checkpoint this process took recently: its member saves, outcome and versions."""
        return self.cuts.find(cut_id)

    def _next_cut_sequence(self) -> int:
        """Cut sequences grow across restarts without a registry read on the training thread: the wall clock in
        milliseconds times 1000 plus this writer's own number below 1000 (its process id and instance), so two
        processes cutting in the same millisecond still pick different sequences; never below one more than the
        newest sequence `restore_all` found or this writer used."""
        clock = time.time_ns() // 1_000_000 * CUT_WRITER_SLOTS + self._cut_writer_slot
        sequence = max(self._cut_sequence or 0, clock)
        self._cut_sequence = sequence + 1
        return sequence
