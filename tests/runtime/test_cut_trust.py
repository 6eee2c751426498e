"""System checkpoints you can trust (issue "Trust, round 3", defect 3), on `MemoryStore`.

- A cut is complete only when every member is registered and marked; a cut marked on some members only (a
  crash between two marker writes) is never restored, and retention keeps the older complete cut whole.
- `restore_all()` checks every member (digest and shape) before it applies any.
- A cut whose marker can never be written is given up after a bounded number of tries, with one alert.
The records checked: the tensors this test kept, `MemoryStore`'s versions, tags and calls, the alerts received.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import mlflow_persist as mp
from mlflow_persist._policy.cuts import CUT_COMPLETE_TAG, complete_cuts
from mlflow_persist._policy.policy import VersionSummary, retention_deletions
from mlflow_persist._policy.versions import VersionInfo
from mlflow_persist.testing import MemoryStore


def _config(**fields: Any) -> mp.PersistConfig:
    return mp.PersistConfig(log_system_metrics=False, scheduler_interval_seconds=3600, **fields)


def _nets() -> dict[str, torch.nn.Module]:
    torch.manual_seed(1)
    return {"a": torch.nn.Linear(3, 2), "b": torch.nn.Linear(2, 2)}


def _weights(models: dict[str, torch.nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    return {n: {k: v.detach().clone() for k, v in m.state_dict().items()} for n, m in models.items()}


def _perturb(models: dict[str, torch.nn.Module]) -> None:
    with torch.no_grad():
        for m in models.values():
            for p in m.parameters():
                p.add_(1.0)


def _version(name: str, version: int, cut: str | None, marked: bool, members: str = "a,b") -> VersionInfo:
    tags = {"mlflow_persist.category": "periodic", "mlflow_persist.step": str(version)}
    if cut:
        tags |= {"mlflow_persist.cut": cut, "mlflow_persist.cut_members": members}
    if marked:
        tags[CUT_COMPLETE_TAG] = "true"
    return VersionInfo(name=name, version=version, source=f"memory://{name}/{version}", run_id="r", tags=tags)


def _restores_exactly(store: MemoryStore, cut: str, kept: dict[str, dict[str, torch.Tensor]]) -> None:
    """A fresh start's `restore_all()` restores `cut` for both models, with the weights `kept` of it."""
    fresh = {"a": torch.nn.Linear(3, 2), "b": torch.nn.Linear(2, 2)}
    with mp.Persistence(_config(), store=store, install_signal_handlers=False) as persist:
        for name, model in fresh.items():
            persist.track(name, model)
        restored = persist.restore_all()
        persist.close(final_checkpoints=False)
    assert {n: r.cut for n, r in restored.items()} == {"a": cut, "b": cut}
    for name, tensors in kept.items():
        for key, value in tensors.items():
            assert torch.equal(fresh[name].state_dict()[key], value)


def test_a_cut_marked_on_some_members_only_is_not_complete() -> None:
    versions = {
        "a": [_version("a", 1, "00000001-aaaa", True), _version("a", 2, "00000002-bbbb", True)],
        "b": [_version("b", 1, "00000001-aaaa", True), _version("b", 2, "00000002-bbbb", False)],
    }
    assert [c.id for c in complete_cuts(versions)] == ["00000001-aaaa"]


def test_retention_keeps_each_models_members_of_the_two_newest_marked_cuts() -> None:
    """Model a alone cannot tell whether its newest marked cut is complete; it keeps the one before too."""
    summaries = [
        VersionSummary(1, "periodic", step=1, cut_complete=True),
        VersionSummary(2, "periodic", step=2, cut_complete=True),
        VersionSummary(3, "periodic", step=3),
        VersionSummary(4, "periodic", step=4),
    ]
    assert retention_deletions(summaries, "min", 3, 1, 3, None) == [3]
    assert retention_deletions(summaries, "min", 3, 1, 3, None, keep=[3]) == []


def test_a_partially_marked_cut_leaves_the_older_complete_cut_restorable() -> None:
    store = MemoryStore()
    models = _nets()
    with mp.Persistence(_config(keep_periodic=1), store=store, install_signal_handlers=False) as persist:
        for name, model in models.items():
            persist.track(name, model)
        first = persist.save_all()
        assert persist.flush(timeout=30) and persist.cuts.wait(30)
        kept = _weights(models)
        _perturb(models)
        second = persist.save_all()
        assert persist.flush(timeout=30) and persist.cuts.wait(30)
        # a crash between the two marker writes of the second cut: b's member never got its marker
        b_second = next(v for v in store.list_versions("b") if v.cut == second)
        store.set_version_tag("b", b_second.version, CUT_COMPLETE_TAG, "false")
        for _ in range(3):  # more periodic saves: retention (keep_periodic=1) runs for both models
            _perturb(models)
            for handle in persist.handles.values():
                handle.save("periodic")
            assert persist.flush(timeout=30)
        persist.close(final_checkpoints=False)

    for name in ("a", "b"):
        assert first in {v.cut for v in store.list_versions(name)}, f"retention deleted {name}'s member of {first}"
    _restores_exactly(store, first, kept)


def test_retention_keeps_the_members_of_a_cut_still_waiting_for_its_condition() -> None:
    """Found with the worker process: the trading system's cuts wait for its episodes to be stored, and when that
    took seconds, later periodic saves (keep_periodic windows) deleted the waiting cut's members, so the cut and
    every later one could never complete (`make run`: one complete cut in 1,000 bars)."""
    store = MemoryStore()
    models = _nets()
    stored = {"episodes": False}
    with mp.Persistence(_config(keep_periodic=1), store=store, install_signal_handlers=False) as persist:
        for name, model in models.items():
            persist.track(name, model)
        waiting = persist.save_all(wait_for=[lambda: stored["episodes"]])
        kept = _weights(models)
        for _ in range(3):  # periodic saves while the cut waits: retention (keep_periodic=1) runs for both models
            _perturb(models)
            for handle in persist.handles.values():
                handle.save("periodic")
            assert persist.flush(timeout=30)
        for name in ("a", "b"):
            assert waiting in {v.cut for v in store.list_versions(name)}, f"retention deleted {name}'s member"
        stored["episodes"] = True
        assert persist.cuts.wait(30)
        assert persist.cuts.find(waiting).outcome == "complete"
        persist.close(final_checkpoints=False)
    _restores_exactly(store, waiting, kept)


def test_restore_all_applies_nothing_when_one_member_does_not_fit() -> None:
    store = MemoryStore()
    models = _nets()
    with mp.Persistence(_config(), store=store, install_signal_handlers=False) as persist:
        for name, model in models.items():
            persist.track(name, model)
        persist.save_all()
        assert persist.flush(timeout=30) and persist.cuts.wait(30)
        persist.close(final_checkpoints=False)

    torch.manual_seed(9)
    changed = {"a": torch.nn.Linear(3, 2), "b": torch.nn.Linear(2, 5)}  # b's architecture changed
    before = _weights(changed)
    with mp.Persistence(_config(), store=store, install_signal_handlers=False) as persist:
        for name, model in changed.items():
            persist.track(name, model)
        with pytest.raises(mp.CheckpointMismatchError, match="b"):
            persist.restore_all()
        persist.close(final_checkpoints=False)
    after = _weights(changed)
    for name in changed:
        for key in before[name]:
            assert torch.equal(before[name][key], after[name][key]), f"{name}.{key} was changed by a failed restore"


@pytest.mark.usefixtures("quick_marker_retries")
@pytest.mark.slow  # seconds of work: in `make test`, not in `make test-fast`
def test_a_cut_whose_marker_can_never_be_written_is_given_up_with_one_alert() -> None:
    store = MemoryStore()
    alerts: list[mp.Alert] = []
    models = _nets()
    with mp.Persistence(_config(), store=store, alert_sinks=[alerts.append], install_signal_handlers=False) as persist:
        for name, model in models.items():
            persist.track(name, model)
        store.fail("tag", times=None)
        cut_id = persist.save_all()
        assert persist.flush(timeout=30)
        assert persist.cuts.wait(timeout=60), "the cut was retried without end"
        pending = persist.cut(cut_id)
        assert pending is not None and pending.outcome == "abandoned"
        store.heal()
        persist.close(final_checkpoints=False)
    tries = store.calls["tag"]
    assert 1 <= tries <= 50, tries
    cut_alerts = [a for a in alerts if a.kind == "cut_abandoned"]
    assert len(cut_alerts) == 1 and cut_id in cut_alerts[0].message
    assert all(not v.cut_complete for n in ("a", "b") for v in store.list_versions(n) if v.cut == cut_id)
