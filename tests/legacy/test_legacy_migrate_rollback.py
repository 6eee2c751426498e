"""migrate on the committed format-1 store, and rollback followed by a fresh restore."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from legacy_support import FIXTURES  # noqa: F401  (puts mlruns_fixtures on sys.path)

import mlflow_persist as mp
from mlflow_persist._format.payload import FORMAT_VERSION
from mlflow_persist._store.alias_log import alias_moves
from mlflow_persist._store.mlflow_store import MlflowStore, tag
from mlflow_persist.errors import ConfigError, NotFoundError
from mlflow_persist.legacy.migrate import migrate
from mlflow_persist.legacy.rollback import rollback
from mlruns_fixtures.generate import materialize_format1_store


def test_migrate_format1_store(tmp_path: Path) -> None:
    uri = materialize_format1_store(tmp_path / "store")
    store = MlflowStore(uri, "mlflow_persist")
    before = {
        n: mp.load_checkpoint(f"models:/{n}@best", tracking_uri=uri, experiment_name="mlflow_persist")
        for n in ("cnn", "dqn")
    }
    assert all(s.format_version == 1 for s in before.values())
    old_counts = {n: len(store.list_versions(n)) for n in ("cnn", "dqn")}

    dry = migrate(store, dry_run=True)
    assert len(dry.steps) == 5 and {n: len(store.list_versions(n)) for n in old_counts} == old_counts

    report = migrate(store)
    assert not report.failed and all(s.new_version for s in report.steps)
    for name, state in before.items():
        versions = store.list_versions(name)
        assert len(versions) == 2 * old_counts[name]  # the old versions are kept
        assert all(v.tags.get(tag("migrated_to")) for v in versions[: old_counts[name]])
        assert all(v.format_version == FORMAT_VERSION for v in versions[old_counts[name] :])
        best = store.alias_version(name)
        assert best.tags[tag("migrated_from")] and best.format_version == FORMAT_VERSION
        after = mp.load_checkpoint(f"models:/{name}@best", tracking_uri=uri, experiment_name="mlflow_persist")
        assert after.format_version == FORMAT_VERSION and after.step == state.step
        assert all(torch.equal(after.model_state[k], v) for k, v in state.model_state.items())
        latest = mp.load_checkpoint(f"models:/{name}/latest", tracking_uri=uri, experiment_name="mlflow_persist")
        assert latest.format_version == FORMAT_VERSION
        assert [m.source for m in alias_moves(store.client, name)] == ["migrate"]
    assert migrate(store).steps == []  # nothing left to do


def _train_and_save(uri: str, steps: int) -> list[dict[str, torch.Tensor]]:
    cfg = mp.PersistConfig(tracking_uri=uri, monitor="loss", mode="min", periodic_every_steps=None)
    snapshots = []
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    with mp.Persistence(cfg) as persist:
        handle = persist.track("dqn", model)
        for i in range(steps):
            with torch.no_grad():
                model.weight.add_(1.0)
            handle.step(loss=1.0 / (i + 1))
            handle.flush(timeout=60)
            snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
    return snapshots


@pytest.mark.slow
def test_rollback_then_restart_resumes_from_the_chosen_version(sqlite_uri: str) -> None:
    snapshots = _train_and_save(sqlite_uri, 3)
    store = MlflowStore(sqlite_uri)
    versions = store.list_versions("dqn")
    target = versions[0]
    result = rollback(store, "dqn", to=target.version, move_best=True, reason="bad data after v1")
    new = store.get_version("dqn", result.new_version)
    assert new.category == "rollback" and new.tags[tag("rollback_of")] == str(target.version)
    assert new.source == target.source and new.tags[tag("rollback_reason")] == "bad data after v1"
    assert new.tags[tag("rollback_by")] and new.tags[tag("rollback_at")]
    assert store.alias_version("dqn").version == new.version
    assert alias_moves(store.client, "dqn")[-1].to_version == new.version

    model = torch.nn.Linear(3, 1)
    with mp.Persistence(mp.PersistConfig(tracking_uri=sqlite_uri)) as persist:
        info = persist.track("dqn", model).restore()
    assert info is not None and info.version == new.version
    # the chosen version's weights: the first saved snapshot (the first step improves on nothing -> saved)
    state = store.load_version(target)
    assert all(torch.equal(model.state_dict()[k], state.model_state[k]) for k in state.model_state)
    assert not torch.equal(model.weight, snapshots[-1]["weight"])

    before_back = store.list_versions("dqn")
    back = rollback(store, "dqn", back=1)
    assert back.target == before_back[-2].version and store.alias_version("dqn").version == new.version


def test_rollback_errors(store) -> None:
    with pytest.raises(NotFoundError, match="no versions"):
        rollback(store, "ghost", to=1)
    with pytest.raises(ConfigError):
        rollback(store, "ghost")
