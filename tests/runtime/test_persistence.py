"""The runtime through a real MLflow store: the embedded sqlite default and a real `mlflow server`."""

from __future__ import annotations

import math

import pytest
import torch

import mlflow_persist as mp
from mlflow_persist._store.mlflow_store import MlflowStore


def _model(seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    return model, torch.optim.SGD(model.parameters(), lr=0.01)


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    opt.zero_grad()
    model(torch.randn(4, 8)).pow(2).mean().backward()
    opt.step()


def _config(uri: str, **overrides: object) -> mp.PersistConfig:
    values = dict(
        tracking_uri=uri,
        min_delta=0.05,
        keep_best=3,
        keep_periodic=2,
        min_free_disk_mb=1,
        min_free_disk_percent=0,
        scheduler_interval_seconds=0.5,
        log_system_metrics=True,
    )
    values.update(overrides)
    return mp.PersistConfig(**values)


def test_two_models_independent_best_and_exact_performance_saves(tracking_uri: str) -> None:
    losses = [1.0, 0.98, 0.94, 0.95, 0.80, 0.76, 0.70, 0.70, 0.64, 2.0]
    expected_saves = [1, 3, 5, 7, 9]  # steps (1-based) where the loss beats the best by more than 0.05
    accuracies = [0.1, 0.3, 0.2, 0.5, 0.5, 0.9, 0.1, 0.2, 0.3, 0.4]
    cfg = _config(tracking_uri, models={"cnn": {"monitor": "accuracy", "mode": "max", "min_delta": 0.0}})
    dqn_model, dqn_opt = _model(0)
    cnn_model, cnn_opt = _model(1)
    with mp.Persistence(cfg) as persist:
        dqn = persist.track("dqn", dqn_model, optimizer=dqn_opt)
        cnn = persist.track("cnn", cnn_model, optimizer=cnn_opt)
        assert dqn.restore() is None and cnn.restore() is None
        dqn_saves, cnn_saves = [], []
        for loss, acc in zip(losses, accuracies):
            _train_step(dqn_model, dqn_opt)
            _train_step(cnn_model, cnn_opt)
            if dqn.step(loss=loss, accuracy=acc):
                dqn_saves.append(dqn.current_step)
            if cnn.step(loss=loss, accuracy=acc):
                cnn_saves.append(cnn.current_step)
            assert persist.flush(timeout=60)
        assert dqn_saves == expected_saves
        assert cnn_saves == [1, 2, 4, 6]
        assert dqn.best_value == 0.64 and cnn.best_value == 0.9
        store = persist.store
        dqn_versions = [v for v in store.list_versions("dqn")]
        assert [v.step for v in dqn_versions if v.category == "performance"][-3:] == [5, 7, 9]  # keep_best=3
        assert store.alias_version("dqn").value == 0.64
        assert store.alias_version("cnn").value == 0.9
        run_ids = {dqn.run_id, cnn.run_id}
    # close() saved a final checkpoint per model, which is now the newest version
    store = MlflowStore(tracking_uri)
    for name in ("dqn", "cnn"):
        latest = store.resolve(f"models:/{name}/latest")
        assert latest.category == "final" and latest.step == 10
        assert (
            len(latest.tags["mlflow_persist.digest"]) == 32
            and latest.tags["mlflow_persist.digest_algorithm"] == "xxh3-128"
            and latest.tags["mlflow_persist.format_version"] == "2"
        )
        assert latest.created_at.endswith("+00:00")
    metrics = store.client.get_metric_history(next(iter(run_ids)), "loss")
    assert sorted(m.step for m in metrics) == list(range(1, 11))


def test_monitor_none_saves_periodic_and_final_checkpoints_only_and_never_sets_best(tracking_uri: str) -> None:
    """Periodic-only persistence (Lightning's `ModelCheckpoint(monitor=None)`): a falling loss is logged and
    never saves; no version carries a monitor or a value, `best` stays unset, and a restart resumes the newest."""
    cfg = _config(tracking_uri, monitor=None, periodic_every_steps=4, keep_periodic=10)
    model, opt = _model(4)
    with mp.Persistence(cfg) as persist:
        handle = persist.track("periodic_only", model, optimizer=opt)
        decisions = []
        for step in range(1, 11):
            _train_step(model, opt)
            decision = handle.step(loss=1.0 / step)
            if decision:
                decisions.append((step, decision.category))
            assert persist.flush(timeout=60)  # else a newer snapshot may replace one still waiting to be written
        with pytest.raises(mp.ConfigError, match="monitor=None"):
            persist.track("evaluated", _model(5)[0], evaluate=lambda: 1.0, evaluate_every_steps=2)
    assert decisions == [(4, "periodic"), (8, "periodic")]
    store = MlflowStore(tracking_uri)
    versions = store.list_versions("periodic_only")
    assert [(v.step, v.category) for v in versions] == [(4, "periodic"), (8, "periodic"), (10, "final")]
    assert all(v.monitor is None and v.value is None for v in versions)
    assert store.alias_version("periodic_only") is None
    history = store.client.get_metric_history(handle.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(1, 11))
    fresh, fresh_opt = _model(6)
    with mp.Persistence(cfg) as persist:
        restored = persist.track("periodic_only", fresh, optimizer=fresh_opt).restore()
        assert restored is not None and restored.step == 10 and restored.category == "final"
        assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))


def test_periodic_retention_and_aliases_hold_after_200_steps(tracking_uri: str) -> None:
    cfg = _config(tracking_uri, min_delta=0.0, periodic_every_steps=20, keep_best=2, keep_periodic=3)
    model, opt = _model(2)
    torch.manual_seed(3)
    values = (torch.rand(200) * 2 + torch.linspace(3, 0, 200)).tolist()
    with mp.Persistence(cfg) as persist:
        handle = persist.track("extrema", model, optimizer=opt)
        categories = []
        for value in values:
            _train_step(model, opt)
            decision = handle.step(loss=value)
            if decision:
                categories.append(decision.category)
        assert persist.flush(timeout=120)
        store = persist.store
        versions = store.list_versions("extrema")
        by_category = {c: [v for v in versions if v.category == c] for c in ("performance", "periodic")}
        assert "periodic" in categories and len(by_category["periodic"]) <= 3
        assert 1 <= len(by_category["performance"]) <= 2 + 1  # keep_best, plus the newest if it is one
        best = store.alias_version("extrema")
        true_best = min(v.value for v in versions if v.category == "performance")
        assert best is not None and best.value == true_best == handle.best_value
        assert math.isclose(best.value, min(values))
        newest = store.resolve("models:/extrema/latest")
        assert newest.version == max(v.version for v in versions)
        state = mp.load_checkpoint("models:/extrema/latest", tracking_uri=tracking_uri)
        assert state.step == newest.step and state.version == newest.version


def test_restore_loads_everything_and_the_run_continues(tracking_uri: str) -> None:
    cfg = _config(tracking_uri, periodic_every_steps=5, min_delta=0.0)
    model, opt = _model(4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    with mp.Persistence(cfg) as persist:
        handle = persist.track("cob_rl", model, optimizer=opt, scheduler=sched)
        for i in range(12):
            _train_step(model, opt)
            sched.step()
            handle.step(loss=1.0 / (i + 1))
        run_id = handle.run_id
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    saved_lr = opt.param_groups[0]["lr"]
    fresh_model, fresh_opt = _model(99)
    fresh_sched = torch.optim.lr_scheduler.StepLR(fresh_opt, step_size=3, gamma=0.5)
    with mp.Persistence(cfg) as persist:
        handle = persist.track("cob_rl", fresh_model, optimizer=fresh_opt, scheduler=fresh_sched)
        info = handle.restore()
        assert info is not None and info.category == "final" and info.step == 12
        assert handle.run_id == run_id and handle.current_step == 12
        assert handle.best_value == pytest.approx(1.0 / 12)
        for key, tensor in saved.items():
            assert torch.equal(fresh_model.state_dict()[key], tensor)
        assert fresh_opt.param_groups[0]["lr"] == saved_lr
        assert fresh_sched.last_epoch == 12
        assert handle.step(loss=5.0).save is False  # worse than the restored best: nothing saved
        assert handle.current_step == 13


def test_restore_skips_damaged_versions_and_tags_them(sqlite_uri: str) -> None:
    cfg = _config(sqlite_uri, min_delta=0.0)
    model, opt = _model(5)
    with mp.Persistence(cfg) as persist:
        handle = persist.track("dqn", model, optimizer=opt)
        for value in (3.0, 2.0, 1.0):
            _train_step(model, opt)
            handle.step(loss=value)
            persist.flush(timeout=30)
    store = MlflowStore(sqlite_uri)
    versions = store.list_versions("dqn")
    newest = versions[-1]
    path = store.checkpoint_dir(newest).__enter__() / "checkpoint.pt"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with mp.Persistence(cfg) as persist:
        handle = persist.track("dqn", _model(6)[0], optimizer=None)
        info = handle.restore()
        assert info.version == versions[-2].version and info.skipped_corrupt == (newest.version,)
    assert MlflowStore(sqlite_uri).get_version("dqn", newest.version).corrupt


def test_a_changed_architecture_raises_a_mismatch_and_marks_nothing_corrupt(sqlite_uri: str) -> None:
    """Regression (issue 11 #1): a widened layer used to tag every healthy version corrupt, one by one."""
    cfg = _config(sqlite_uri, min_delta=0.0)
    torch.manual_seed(5)
    old = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 4))
    with mp.Persistence(cfg) as persist:
        handle = persist.track("cnn", old)
        for loss in (1.0, 0.9, 0.8, 0.7):
            handle.step(loss=loss)
            assert persist.flush(timeout=60)
        saved_first_layer = {k: v.clone() for k, v in old.state_dict().items() if k.startswith("0.")}
    store = MlflowStore(sqlite_uri)
    best_before = store.alias_version("cnn").version
    tags_before = {v.version: dict(v.tags) for v in store.list_versions("cnn")}
    wider = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 6))
    live_second_layer = {k: v.clone() for k, v in wider.state_dict().items() if k.startswith("1.")}
    persist = mp.Persistence(cfg)
    try:
        handle = persist.track("cnn", wider)
        with pytest.raises(mp.CheckpointMismatchError) as raised:
            handle.restore()
        message = str(raised.value)
        assert "cnn" in message and "1.weight [4, 8] (model has [6, 8])" in message and "strict=False" in message
        assert {v.version: dict(v.tags) for v in store.list_versions("cnn")} == tags_before  # registry untouched
        assert store.alias_version("cnn").version == best_before
        assert all(torch.equal(wider.state_dict()[k], v) for k, v in live_second_layer.items())
        info = handle.restore(strict=False)
        assert info is not None and info.category == "final"
        assert all(torch.equal(wider.state_dict()[k], v) for k, v in saved_first_layer.items())
        assert all(torch.equal(wider.state_dict()[k], v) for k, v in live_second_layer.items())
    finally:
        persist.close(final_checkpoints=False)


def test_invalid_model_names_are_refused(sqlite_uri: str) -> None:
    with mp.Persistence(_config(sqlite_uri)) as persist:
        for bad in ("../etc", "a/b", "/abs", "", "a..b"):
            with pytest.raises(mp.ConfigError):
                persist.track(bad, torch.nn.Linear(1, 1))


class Unsavable:
    """An `extra` whose state cannot be put in a checkpoint."""

    def state_dict(self) -> dict:
        return {"handle": object()}

    def load_state_dict(self, state: dict) -> None:
        pass


def test_a_snapshot_that_cannot_be_taken_never_stops_training(sqlite_uri: str) -> None:
    from mlflow_persist.errors import FinalCheckpointError

    with pytest.raises(FinalCheckpointError) as closed:  # close() says the final checkpoint is missing
        with mp.Persistence(_config(sqlite_uri)) as persist:
            handle = persist.track("dqn", torch.nn.Linear(2, 2), extra=Unsavable())
            for value in (3.0, 2.0, 1.0):
                handle.step(loss=value)  # each is an improvement; none can be snapshotted
            assert handle.failures == 3 and handle.current_step == 3
            assert handle.save("final") is None
            with pytest.raises(mp.PersistError, match="category"):
                handle.save("bogus")
    assert closed.value.report.finals["dqn"].outcome == "not_taken"  # type: ignore[attr-defined]
    assert MlflowStore(sqlite_uri).list_versions("dqn") == []
