"""The orchestrator: model_states, serving weights that switch to a cut's registered weights at fixed bars,
recording, and a state that continues bit for bit."""

from __future__ import annotations

import copy

import pytest
import torch

from mlflow_persist.trading.market import HORIZON, MarketData
from mlflow_persist.trading.models import MODEL_NAMES, build_model
from mlflow_persist.trading.orchestrator import TradingOrchestrator
from mlflow_persist.trading.serving import SERVING_LAG
from mlflow_persist.trading.trainers import build_trainers

from .helpers import FakeHandle, ListRecorder, memory_system


def _orchestrator(
    steps: int, recorder: ListRecorder | None = None, seed: int = 0
) -> tuple[TradingOrchestrator, dict[str, FakeHandle]]:
    torch.set_num_threads(1)
    market = MarketData(seed=seed)
    trainers = build_trainers({name: build_model(name, seed=seed) for name in MODEL_NAMES}, seed=seed)
    handles = {name: FakeHandle(name, trainer.model) for name, trainer in trainers.items()}
    orchestrator = TradingOrchestrator(market, trainers, seed=seed, handles=handles, recorder=recorder)
    for i in range(steps):
        orchestrator.on_bar(market.first + i)
    return orchestrator, handles


def test_model_states_follow_training_and_saves() -> None:
    orchestrator, handles = _orchestrator(40)
    for name in MODEL_NAMES:
        orchestrator.refresh_saves(name)
        state = orchestrator.model_states[name]
        handle = handles[name]
        assert state["steps"] == handle.current_step == 40 - HORIZON
        assert state["current_loss"] == handle.metrics[-1]["loss"]
        assert state["best_loss"] == handle.best_value
        assert state["last_checkpoint_version"] == handle.last_version is not None
        assert state["last_save_time"] == handle.last_save_time
        assert "loss" in handle.metrics[-1]
    assert orchestrator.model_states["cnn"]["accuracy"] is not None
    assert orchestrator.model_states["extrema"]["accuracy"] is not None


def test_serving_switches_to_the_cut_weights_lag_bars_after_the_cut() -> None:
    persistence, system = memory_system(cut_every_steps=60)  # the classifiers train from case HOLDOUT + 1 on
    try:
        store = persistence.store
        system.run(steps=60 + SERVING_LAG - 1)
        for name in MODEL_NAMES:  # the switch is due at bar 70: until then the initial weights decide
            assert system.orchestrator.serving[name].version is None
        system.run(steps=1)
        for name in MODEL_NAMES:
            serving = system.orchestrator.serving[name]
            cut_version = next(v for v in store.list_versions(name) if v.cut == system.cuts_taken[0])
            assert serving.version == cut_version.version and serving.step == cut_version.step
            stored = store.load_version(cut_version).model_state
            assert all(torch.equal(stored[k], v) for k, v in serving.module.state_dict().items())
            live = system.trainers[name].model.state_dict()
            assert not all(torch.equal(live[k], v) for k, v in serving.module.state_dict().items())
    finally:
        persistence.close()


def test_recorder_gets_one_complete_episode_per_trained_decision() -> None:
    recorder = ListRecorder()
    orchestrator, _ = _orchestrator(20, recorder)
    assert len(recorder.episodes) == 20 - HORIZON
    episode = recorder.episodes[-1]
    assert set(episode.frames) == {"bars", "cob", "draws"}
    assert {"dqn.state", "cnn.window", "cob_rl.state", "extrema.window", "dqn.explore_u"} <= set(episode.tensors)
    assert {"dqn.q", "cnn.probs", "cob_rl.value", "extrema.probs"} <= set(episode.outputs)
    assert set(episode.checkpoint_versions) == set(MODEL_NAMES)
    assert episode.market["volatility_regime"] in {"low", "normal", "high"}
    assert episode.bar_time == episode.frames["bars"].index[-1]
    assert [e.episode_id for e in recorder.episodes] == [f"s0-{step:012d}" for step in range(20 - HORIZON)]
    assert isinstance(episode.to_dict()["frames"], dict)


def test_orchestrator_and_trainer_state_continue_bit_for_bit() -> None:
    """Save the orchestrator and trainers mid-stream, load them into fresh objects, and both continue alike:
    the same decisions (recorded independently) and bitwise the same weights after 30 more bars."""
    original, _ = _orchestrator(37, seed=2)
    snapshot = copy.deepcopy(
        {
            "orchestrator": original.state_dict(),
            "trainers": {n: t.runtime_state() for n, t in original.trainers.items()},
            "models": {n: t.model.state_dict() for n, t in original.trainers.items()},
            "optimizers": {n: t.optimizer.state_dict() for n, t in original.trainers.items()},
            "dqn": original.trainers["dqn"].state_dict(),
        }
    )
    resumed, _ = _orchestrator(0, seed=2)
    for name, trainer in resumed.trainers.items():
        trainer.model.load_state_dict(snapshot["models"][name])
        trainer.optimizer.load_state_dict(snapshot["optimizers"][name])
        trainer.load_runtime_state(snapshot["trainers"][name])
    resumed.trainers["dqn"].load_state_dict(snapshot["dqn"])
    resumed.load_state_dict(snapshot["orchestrator"])
    assert len(resumed.pending) == HORIZON
    recorded: dict[str, list] = {"original": [], "resumed": []}
    for label, orchestrator in (("original", original), ("resumed", resumed)):
        orchestrator.recorder = ListRecorder()
        for i in range(37, 67):
            orchestrator.on_bar(orchestrator.market.first + i)
        recorded[label] = [(e.episode_id, e.action, e.reward) for e in orchestrator.recorder.episodes]
    assert recorded["original"] == recorded["resumed"] and len(recorded["original"]) == 30
    for name in MODEL_NAMES:
        a = original.trainers[name].model.state_dict()
        b = resumed.trainers[name].model.state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.slow  # seconds of work: in `make test`, not in `make test-fast`
def _restart_from_the_start_ends_like_an_uninterrupted_run(store: object, seed: int) -> None:
    """A restart on `store` restores nothing, starts at bar 0, and after 130 bars holds the weights of a run on
    its own store that was never interrupted."""
    resumed, resumed_system = memory_system(seed=seed, cut_every_steps=100, store=store)
    reference, reference_system = memory_system(seed=seed, cut_every_steps=100)
    try:
        assert resumed_system.restored == {} and resumed_system.steps_done == 0
        resumed_system.run(steps=130)
        reference_system.run(steps=130)
        for name in MODEL_NAMES:
            a = resumed_system.trainers[name].model.state_dict()
            b = reference_system.trainers[name].model.state_dict()
            assert all(torch.equal(a[k], b[k]) for k in a), name
    finally:
        resumed.close(final_checkpoints=False)
        reference.close(final_checkpoints=False)


@pytest.mark.slow  # three trading runs
def test_a_crash_before_the_first_cut_completed_resumes_from_the_start_and_ends_alike() -> None:
    """The killed process registered its first cut's members and newer performance checkpoints, but the cut's
    marker never came (its episodes were not stored yet). The restart must not mix those per-model checkpoints:
    it starts from the initial state and ends bitwise where an uninterrupted run ends."""
    from mlflow_persist.testing import MemoryStore

    store = MemoryStore()
    stored = {"episodes": False}
    crashed, crashed_system = memory_system(
        seed=4, cut_every_steps=100, store=store, durable=lambda: lambda: stored["episodes"]
    )
    crashed_system.run(steps=115)
    assert crashed.flush(timeout=30)
    assert any(v.cut for v in store.list_versions("dqn")) and not any(
        v.cut_complete for v in store.list_versions("dqn")
    )
    try:
        _restart_from_the_start_ends_like_an_uninterrupted_run(store, seed=4)
    finally:
        stored["episodes"] = True
        crashed.close(final_checkpoints=False)


@pytest.mark.slow  # writes that take a second each
def test_a_slow_store_delays_a_serving_cut_but_never_skips_it() -> None:
    """Serving switches only to registered weights, so a serving cut skipped because the writer was busy would
    change every later decision (a run and its resumed twin would part ways). With every write taking a second,
    the writer is still on the first cut when the second comes: the second waits instead of being skipped, and
    every member of both cuts is registered."""
    persistence, system = memory_system(cut_every_steps=5)
    store = persistence.store
    try:
        store.hang("write", seconds=1.0, times=8)
        system.run(steps=10)
        assert len(system.cuts_taken) == 2
        assert persistence.flush(timeout=60)
        for cut_id in system.cuts_taken:
            members = {v.name for name in MODEL_NAMES for v in store.list_versions(name) if v.cut == cut_id}
            assert members == set(MODEL_NAMES), (cut_id, members)
    finally:
        persistence.close()


@pytest.mark.slow  # three trading runs
def test_a_crash_before_the_first_cut_was_taken_resumes_from_the_start_and_ends_alike() -> None:
    """Killed at bar 90, before the first cut (bar 100) was even taken: the store holds performance
    checkpoints of this run and no cut at all. They belong to no consistent state, so the restart must not
    restore them: it starts where the first start started and ends bitwise where an uninterrupted run ends."""
    from mlflow_persist.testing import MemoryStore

    store = MemoryStore()
    crashed, crashed_system = memory_system(seed=5, cut_every_steps=100, store=store)
    crashed_system.run(steps=90)
    assert crashed.flush(timeout=30)
    assert any(store.list_versions(name) for name in MODEL_NAMES)
    assert not any(v.cut for name in MODEL_NAMES for v in store.list_versions(name))
    try:
        _restart_from_the_start_ends_like_an_uninterrupted_run(store, seed=5)
    finally:
        crashed.close(final_checkpoints=False)


@pytest.mark.slow  # seconds of work on a real store: in `make test`, not in `make test-fast`
def test_checkpoints_from_before_system_checkpoints_are_restored_at_every_start_until_the_first_cut() -> None:
    """A store with a model's checkpoint written before any system checkpoint (an older version, a legacy
    import): the first start restores it, and so does a restart after a crash before the first cut."""
    import mlflow_persist as mp
    from mlflow_persist.testing import MemoryStore

    store = MemoryStore()
    net = build_model("dqn")
    torch.manual_seed(11)
    for p in net.parameters():
        p.data.normal_()
    with mp.Persistence(mp.PersistConfig(log_system_metrics=False), store=store, install_signal_handlers=False) as p:
        p.track("dqn", net).save("periodic", wait=True, timeout=30)
        p.close(final_checkpoints=False)
    imported = store.list_versions("dqn")[-1].version
    for _ in range(2):  # the first start, then a restart after a crash before the first cut
        persistence, system = memory_system(seed=6, cut_every_steps=100, store=store)
        try:
            assert system.restored["dqn"].version == imported
            restored = system.trainers["dqn"].model.state_dict()
            assert all(torch.equal(restored[k], v) for k, v in net.state_dict().items())
            system.run(steps=20)  # performance saves of dqn newer than the imported version
            assert persistence.flush(timeout=30)
        finally:
            persistence.close(final_checkpoints=False)
    assert store.list_versions("dqn")[-1].version > imported
