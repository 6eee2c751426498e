"""One model's save pipeline, run on the writer thread: disk check, write (or the durable outbox for a remote
store), register, move `best`, prune by the retention windows, record what happened.

Remote stores go through the outbox: the checkpoint is complete on local disk before any network call, and a
registration failure leaves it there, in order, for the next drain (the scheduler tick, the next save, or the
next start).
"""

from __future__ import annotations

import errno
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from mlflow_persist._format.payload import FORMAT_VERSION
from mlflow_persist._observe.logs import package_logger
from mlflow_persist._policy.policy import BEST_ELIGIBLE, PERFORMANCE, retention_deletions
from mlflow_persist._policy.versions import VersionInfo, checkpoint_dirname, digest_tags, tag
from mlflow_persist._runtime.disk_guard import DiskGuard, GuardedModel
from mlflow_persist._runtime.health import ModelHealth
from mlflow_persist._runtime.metrics_buffer import MetricsBuffer
from mlflow_persist._runtime.outbox import Outbox
from mlflow_persist._runtime.outbox_drain import OutboxDrain
from mlflow_persist._runtime.registration import Registration, describe_saved_value, format_change, tensor_bytes
from mlflow_persist._runtime.writer import SaveJob
from mlflow_persist._store.best import reconcile_best
from mlflow_persist._store.descriptions import version_description
from mlflow_persist._store.protocol import CheckpointStore
from mlflow_persist._store.prune import PruneResult, prune
from mlflow_persist._store.registry_view import RegistryView
from mlflow_persist.config import ModelSettings
from mlflow_persist.errors import describe_store_error

__all__ = ["Registration", "SavePipeline", "describe_saved_value", "format_change", "tensor_bytes"]  # re-exported

log = package_logger("mlflow_persist")


def _number(info: VersionInfo | None) -> int | None:
    return info.version if info is not None else None


class SavePipeline(OutboxDrain):
    """Everything that happens to one model's snapshot after the training thread hands it over."""

    def __init__(
        self,
        *,
        name: str,
        registered_name: str,
        run_id: str,
        settings: ModelSettings,
        store: CheckpointStore,
        outbox: Outbox | None,
        guard: DiskGuard,
        health: ModelHealth,
        metrics: MetricsBuffer,
        outbox_max_mb: float = 10240.0,
        cut_keep: Callable[[str], Collection[int]] = lambda name: (),
    ) -> None:
        self.name = name
        self.registered_name = registered_name
        self.run_id = run_id
        self.settings = settings
        self.store = store
        self.outbox = outbox
        self.guard = guard
        self.health = health
        self.metrics = metrics
        self.outbox_max_mb = outbox_max_mb
        self.cut_keep = cut_keep  # this model's member of the newest complete cut, kept by retention
        self.saves = 0
        self.last_version: int | None = None
        self.last_saved: tuple[int, int] | None = None  # (version, step) of the newest registered save
        self.last_save_time: float | None = None
        self.best: VersionInfo | None = None
        # per monitor, (value, version) of the last performance save: values of different measures never compare
        self._previous_performance: dict[str, tuple[float, int]] = {}
        self.registry_lock = threading.RLock()
        self.view = RegistryView()
        self._drain_lock = threading.Lock()

    @property
    def monitor(self) -> str | None:
        return self.settings.monitor

    def guarded(self) -> GuardedModel:
        return GuardedModel(self.name, self.registered_name, self.run_id, self.settings.mode, self.registry_lock)

    # ------------------------------------------------------------------------------------- writer thread

    def execute(self, job: SaveJob) -> Any:
        started = time.monotonic()
        if job.ready is not None:
            job.ready()  # GPU snapshots: the host buffers are complete only after their copies ran
        self.guard.ensure_space(self.guarded())
        if self.outbox is not None:
            if job.stored is not None:  # a retry after the entry was written: its snapshot is gone, drain only
                self.drain_outbox()
                return job.stored
            self._bound_outbox(job)
            entry = self.outbox.put(
                model=self.name,
                registered_name=self.registered_name,
                run_id=self.run_id,
                dirname=checkpoint_dirname(self.registered_name, job.step),
                payload=job.payload,
                category=job.category,
                step=job.step,
                value=job.value,
                improvement=job.improvement,
                also=list(job.also),
                tags=job.tags,
            )
            job.stored, job.payload = entry, {}
            self.drain_outbox()
            return entry
        if job.written is None:  # a retry after a failed registration registers the files it already wrote
            try:
                job.written = self.store.write_checkpoint(self.run_id, self.registered_name, job.step, job.payload)
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    self.guard.free(
                        self.guarded(), reason="disk full while writing", need_mb=tensor_bytes(job.payload) / 2**20
                    )
                raise
        source, written = job.written
        registration = Registration(
            job.category,
            job.step,
            job.value,
            job.improvement,
            list(job.also),
            str(job.payload.get("created_at", "")),
            written.digest,
            written.size_bytes,
            retried=job.attempts > 1,
            tags=dict(job.tags),
        )
        return self.register(source, registration, started, acknowledge=lambda info: job.finish("saved", result=info))

    def _bound_outbox(self, job: SaveJob) -> None:
        """Keep the outbox within `outbox_max_mb` and the free-disk limits during a long outage."""
        outbox = self.outbox
        assert outbox is not None
        with outbox.lock(self.registered_name):
            dropped = outbox.make_room(
                self.registered_name,
                tensor_bytes(job.payload),
                self.outbox_max_mb * 2**20,
                lambda need_mb: self.guard.short_at(outbox.root, need_mb),
            )
        if dropped:
            log.warning(
                "%s: the outbox is full (server unreachable for long?); dropped the %d oldest periodic "
                "checkpoint(s) waiting there (steps %s); performance and final ones are kept",
                self.name,
                len(dropped),
                ", ".join(str(e.step) for e in dropped),
            )

    def on_failure(self, job: SaveJob, exc: BaseException, final: bool) -> None:
        self.health.record_failure(job.category, job.step, exc, job.attempts, final)
        if job.written is not None and job.outcome in ("failed", "superseded"):
            self._discard_unregistered(job.written[0])

    def _discard_unregistered(self, source: str) -> None:
        """Delete the files of a save that was given up, unless a version uses them (a registration that went
        through although its answer was lost); when the store refuses, the start-up sweep removes them later."""
        try:
            if self.store.discard_unregistered(self.run_id, source):
                log.info("%s: deleted the unregistered checkpoint files of a given-up save: %s", self.name, source)
        except Exception as exc:  # noqa: BLE001 - best effort: the sweep is the fallback
            log.warning(
                "%s: could not delete the unregistered checkpoint files %s (%s); the next start-up sweeps them",
                self.name,
                source,
                describe_store_error(exc),
            )

    def register(
        self,
        source: str,
        reg: Registration,
        started: float,
        run_id: str | None = None,
        acknowledge: Callable[[VersionInfo], None] | None = None,
    ) -> VersionInfo:
        """Register a written checkpoint, move `best`, then apply retention; `run_id` is the run that holds
        its artifacts (default: this model's).

        With `acknowledge`, the save is acknowledged (called with the version) as soon as the version is
        registered and `best` is right, and retention runs afterwards, still under the lock: a retention
        failure is logged and retried at the next save instead of failing a checkpoint that is stored."""
        run_id = run_id or self.run_id
        store = self.store
        tags = {
            tag("category"): reg.category,
            tag("step"): reg.step,
            **({tag("monitor"): self.monitor} if self.monitor is not None else {}),
            tag("mode"): self.settings.mode,
            tag("value"): reg.value if reg.value is not None else "",
            **digest_tags(reg.digest),
            tag("format_version"): FORMAT_VERSION,
            tag("created_at"): reg.created_at,
            tag("size_bytes"): reg.size_bytes,
            **reg.tags,
        }
        name = self.registered_name
        with self.registry_lock, store.lock(f"model-{name}"):
            generation = store.registry_generation(name)
            try:
                created = [
                    store.register_version(
                        name,
                        source,
                        run_id,
                        {**tags, tag("category"): category},
                        retried=reg.retried,
                        description=self._describe(reg, category),
                    )
                    for category in reg.also
                ]  # first: the job's own category is the newest (`latest`)
                info = store.register_version(
                    name, source, run_id, tags, retried=reg.retried, description=self._describe(reg, reg.category)
                )
                versions, best = self._versions_and_best(reg, generation, [*created, info])
            except BaseException:
                self.view.forget()  # whatever happened, the next save reads the registry again
                raise
            self._after_save(reg, info, best, time.monotonic() - started, also=created)
            if acknowledge is not None:
                acknowledge(info)
            try:
                self._prune_and_remember(versions, best)
            except Exception as exc:
                self.view.forget()
                if acknowledge is None:
                    raise
                log.error(
                    "%s: retention after v%d failed (%s); what it would have deleted stays until the next save",
                    self.name,
                    info.version,
                    describe_store_error(exc),
                    extra={"model": self.name, "version": info.version, "outcome": "retention_failed"},
                )
        return info

    def _describe(self, reg: Registration, category: str) -> str:
        monitor = reg.monitor or self.monitor or ""
        previous = self._previous_performance.get(monitor) if category == PERFORMANCE else None
        return version_description(
            category,
            reg.step,
            monitor,
            reg.value,
            reg.size_bytes,
            previous,
            reg.tags.get(tag("cut")),
        )

    def _versions_and_best(
        self, reg: Registration, generation: int, created: list[VersionInfo]
    ) -> tuple[list[VersionInfo], VersionInfo | None]:
        """The versions after this save's registrations and the version `best` points at once it is right:
        from what the view knows where it may (registry_view.py), else from a fresh listing.

        From memory, nothing is deleted on a stale idea of `best`: unless this save just moved the alias
        itself, the alias is read before retention would delete anything, and any surprise means a full read."""
        store, name = self.store, self.registered_name
        known = self.view.known(generation, created) if store.lock_is_shared else None
        if known is not None:
            best = self._reconcile(reg, known.versions, known.best)
            moved = _number(best) != _number(known.best)
            if (
                moved
                or not self._prune(known.versions, best, dry_run=True).planned
                or _number(store.alias_version(name)) == _number(known.best)
            ):
                return known.versions, best
        self.view.read()
        versions = store.list_versions(name)
        return versions, self._reconcile(reg, versions, store.alias_version(name))

    def _reconcile(
        self, reg: Registration, versions: list[VersionInfo], current: VersionInfo | None
    ) -> VersionInfo | None:
        if reg.category not in BEST_ELIGIBLE:
            return current
        return reconcile_best(
            self.store,
            self.registered_name,
            self.settings.mode,
            versions,
            converge=not self.store.lock_is_shared,
            monitor=self.monitor,
            current=current,
            summarize=self.view.summary,
        )

    def _prune(self, versions: list[VersionInfo], best: VersionInfo | None, dry_run: bool = False) -> PruneResult:
        settings = self.settings
        return prune(
            self.store,
            self.registered_name,
            lambda summaries, best_version: retention_deletions(
                summaries,
                settings.mode,
                settings.keep_best,
                settings.keep_periodic,
                settings.keep_final,
                best_version,
                settings.keep_episode,
                keep=self.cut_keep(self.registered_name),
            ),
            versions=versions,
            best_version=_number(best),
            dry_run=dry_run,
            listing_is_current=self.store.lock_is_shared,
            summarize=self.view.summary,
        )

    def _prune_and_remember(self, versions: list[VersionInfo], best: VersionInfo | None) -> VersionInfo | None:
        deleted = {v.version for v in self._prune(versions, best).deleted}
        self.view.remember(
            [v for v in versions if v.version not in deleted],
            best,
            self.store.registry_generation(self.registered_name),
        )
        return best

    def _after_save(
        self,
        reg: Registration,
        info: VersionInfo,
        best: VersionInfo | None,
        duration: float,
        also: list[VersionInfo] | None = None,
    ) -> None:
        self.saves += 1
        self.last_saved = (info.version, reg.step)  # one assignment: readers never see a torn pair
        self.last_version = info.version
        self.last_save_time = time.time()
        self.best = best
        monitor = reg.monitor or self.monitor or ""
        last = self._previous_performance.get(monitor) if reg.category == PERFORMANCE else None
        previous = last[0] if last is not None else None
        if reg.category == PERFORMANCE:
            if reg.value is not None:
                self._previous_performance[monitor] = (reg.value, info.version)
            else:
                self._previous_performance.pop(monitor, None)
        metrics = {
            "checkpoint/saves": float(self.saves),
            "checkpoint/version": float(info.version),
            "checkpoint/failures": float(self.health.failures),
        }
        if best is not None and best.value is not None:
            metrics[f"best_{self.monitor or best.monitor or 'value'}"] = best.value
            metrics["checkpoint/best_version"] = float(best.version)
        if reg.improvement is not None:
            metrics["checkpoint/improvement"] = float(reg.improvement)
        self.metrics.add(reg.step, metrics)
        change = describe_saved_value(
            reg.monitor or self.monitor, reg.category, previous, reg.value, self.settings.mode
        )
        same_bytes = "".join(f", also v{v.version} {v.category}" for v in also or [])
        log.info(
            "%s: %s, saved v%d (%s, step %d, %.1f MB, %.0f ms%s)",
            self.name,
            change,
            info.version,
            reg.category,
            reg.step,
            reg.size_bytes / 2**20,
            duration * 1000,
            same_bytes,
            extra={
                "model": self.name,
                "category": reg.category,
                "version": info.version,
                "step": reg.step,
                "value": reg.value,
                "improvement": reg.improvement,
                "bytes": reg.size_bytes,
                "duration_s": round(duration, 4),
                "outcome": "saved",
                # the versions registered on the same bytes under the job's other categories
                **({"also_versions": {v.category: v.version for v in also}} if also else {}),
            },
        )
        self.health.record_success()
