"""The pipeline's memory of the registry between saves (registry_view.py): steady-state saves skip re-reading
what the pipeline itself wrote, yet a change by anyone else is picked up, and a version someone else tagged
corrupt never becomes `best` again. Checked against the registry as a second MlflowStore (another process,
as `mlflow-persist verify` would be) reads it, on a real sqlite store."""

from __future__ import annotations

from typing import Any

import torch

import mlflow_persist as mp
from mlflow_persist._policy.policy import select_best
from mlflow_persist._policy.versions import VersionInfo
from mlflow_persist._store.best import mark_corrupt
from mlflow_persist._store.mlflow_store import MlflowStore
from mlflow_persist._store.registry_view import REREAD_EVERY, RegistryView


def _config(uri: str) -> mp.PersistConfig:
    return mp.PersistConfig(
        tracking_uri=uri,
        min_free_disk_mb=0,
        min_free_disk_percent=0,
        log_system_metrics=False,
        scheduler_interval_seconds=60,
        keep_best=3,
        keep_periodic=2,
        keep_final=2,
        periodic_every_steps=2,
    )


def _valid_best(store: MlflowStore, name: str) -> VersionInfo | None:
    versions = store.list_versions(name)
    chosen = select_best([v.summary() for v in versions], "min", "loss")
    return next((v for v in versions if chosen and v.version == chosen.version), None)


def test_a_version_another_process_tagged_corrupt_never_becomes_best_again(sqlite_uri: str) -> None:
    other = MlflowStore(sqlite_uri)  # what `mlflow-persist verify` in another process would use
    with mp.Persistence(_config(sqlite_uri), install_signal_handlers=False) as persist:
        handle = persist.track("net", torch.nn.Linear(4, 4))
        name = persist.config.registered_name("net")
        after_the_tag = [2.5, 2.2, 2.1, 2.05, 2.6] * 6
        losses = iter([5.0, 4.0, 3.0, 2.0] + after_the_tag)
        for _ in range(4):
            handle.step(loss=next(losses))
            assert handle.flush(timeout=60)
        best = other.alias_version(name)
        assert best is not None and best.value == 2.0
        mark_corrupt(other, best, "damaged on disk (test)", "min", "loss")  # moves `best` off it at once
        corrupt = best.version
        seen_best = []
        for loss in losses:  # none better than 2.0, all better than the valid 3.0: `best` must follow them
            handle.step(loss=loss)
            handle.save(category="performance")  # not an improvement on the tracker's 2.0, so forced
            assert handle.flush(timeout=60)
            now = other.alias_version(name)
            seen_best.append(now.version if now else None)
            assert now is None or now.version != corrupt, "a corrupt version became best again"
            assert now is None or not now.corrupt
        expected = _valid_best(other, name)
        assert expected is not None and other.alias_version(name).version == expected.version
        assert other.alias_version(name).value == min(after_the_tag)  # the test's own record of what it reported
    assert corrupt not in seen_best


def test_steady_state_saves_skip_the_listing_and_a_change_in_this_process_forces_one(sqlite_uri: str) -> None:
    with mp.Persistence(_config(sqlite_uri), install_signal_handlers=False) as persist:
        handle = persist.track("net", torch.nn.Linear(4, 4))
        name = persist.config.registered_name("net")
        store = persist.store
        listings: list[int] = []
        list_versions = store.list_versions

        def counting_list(model: str) -> Any:
            listings.append(1)
            return list_versions(model)

        store.list_versions = counting_list  # type: ignore[method-assign]
        for step in range(1, 8):
            handle.step(loss=10.0 - step)
            assert handle.flush(timeout=60)
        steady = len(listings)
        assert steady <= 2  # the first save reads; the next ones know what they wrote
        best = list_versions(name)[-1]
        store.mark_corrupt(name, best.version, "tagged in this process")  # e.g. restore() found it damaged
        handle.step(loss=0.5)
        assert handle.flush(timeout=60)
        assert len(listings) == steady + 1  # the store's change counter moved: the pipeline read again
        assert persist.store.alias_version(name).value == 0.5


def test_the_view_rereads_after_its_bound_and_on_a_foreign_version_number() -> None:
    view = RegistryView(reread_every=3)

    def version(number: int) -> VersionInfo:
        return VersionInfo("m", number, f"s{number}", "r")

    assert view.known(0, [version(1)]) is None  # nothing known yet
    view.remember([version(1)], version(1), generation_after=5)
    assert view.known(4, [version(2)]) is None  # something else changed the model in this process
    assert view.known(5, [version(3)]) is None  # another writer registered v2 meanwhile
    known = view.known(5, [version(2)])
    assert known is not None and [v.version for v in known.versions] == [1, 2]
    view.remember(known.versions, version(2), generation_after=6)
    assert view.known(6, [version(3)]) is not None
    assert view.known(6, [version(3)]) is not None
    assert view.known(6, [version(3)]) is None  # the bound: three saves from memory, then a full read
    assert REREAD_EVERY >= 1


def test_a_summary_is_remembered_per_version_object_and_a_fresh_listing_brings_its_own() -> None:
    view = RegistryView()
    tags = {"mlflow_persist.category": "performance", "mlflow_persist.value": "2.0", "mlflow_persist.step": "7"}
    first = VersionInfo("net", 3, "file:///a", "run", dict(tags))
    assert view.summary(first) is view.summary(first)  # made once, then reused
    assert (view.summary(first).category, view.summary(first).value, view.summary(first).corrupt) == (
        "performance",
        2.0,
        False,
    )
    view.remember([first], None, generation_after=1)
    reread = VersionInfo("net", 3, "file:///a", "run", {**tags, "mlflow_persist.corrupt": "true"})  # tagged since
    assert view.summary(reread).corrupt and not view.summary(first).corrupt
    view.remember([reread], None, generation_after=2)  # the old object's summary is dropped with it
    assert view.summary(reread).corrupt
    view.forget()
    assert view.summary(reread).corrupt  # made again from the object's own tags
