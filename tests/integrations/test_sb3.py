"""Stable-Baselines3 DQN on CartPole with PersistCallback, in real subprocesses against an sqlite MLflow store:
`best` is the best mean reward the trainer saw, restarts continue one run and its step axis, a `kill -9`
resumes from the newest checkpoint with the exact weights, optimizer state, counters and replay buffer the
trainer recorded, `learn(total_timesteps=T)` ends at T, and a DQN or PPO killed twice and resumed ends with SB3's
own resume's counters and bit for bit where the uninterrupted run ends. Every expectation comes from the
trainer's own records (sb3_proc.py), never from what the callback reports about itself. With
`replay_buffer_every_steps`, only the checkpoints the step arithmetic says hold the buffer (and the final one), a
kill after one without it resumes with the buffer the trainer had at the older one, retention keeps that one,
and without any a restart resumes with an empty buffer; each with a warning."""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("stable_baselines3")

import gymnasium  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from stable_baselines3 import DQN, PPO  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize  # noqa: E402
from store_support import copy_template_store  # noqa: E402
from zygote import Zygote, Zygotes  # noqa: E402

import mlflow_persist as mp  # noqa: E402
from mlflow_persist.integrations.sb3 import EVAL_MONITOR, PersistCallback  # noqa: E402
from mlflow_persist.integrations.sb3_state import ReplayBufferSchedule  # noqa: E402
from mlflow_persist.testing import MemoryStore  # noqa: E402

from .support import (  # noqa: E402
    DigestLog,
    framework_zygote,
    lines_with,
    registry,
    run,
    run_and_kill,
    run_and_signal,
    state_digest,
)

SCRIPT = Path(__file__).with_name("sb3_proc.py")
EXAMPLE = Path(__file__).resolve().parents[2] / "scripts" / "examples" / "sb3_example.py"
NAME = "cartpole_dqn"
TRAIN_FREQ = 4  # sb3_proc.py's DQN(train_freq=...)
PPO_N_STEPS = 64  # sb3_proc.py's PPO(n_steps=...)
CATEGORY, STEP, VALUE = "mlflow_persist.category", "mlflow_persist.step", "mlflow_persist.value"
BUFFER_ARRAYS = ("observations", "actions", "rewards", "next_observations", "dones", "timeouts")  # sb3_proc.py's
BUFFER_RECORD = ("buffer_pos", "buffer_full", "buffer_size", "buffer_digest")  # sb3_proc.buffer_record()


@pytest.fixture(scope="module")
def framework(zygotes: Zygotes) -> Zygote:
    """A pre-imported Python with sb3 imported, to fork the trainer scripts from."""
    return framework_zygote(zygotes, "sb3")


def _one(output: str, marker: str) -> dict[str, Any]:
    records = list(lines_with(output, marker))
    assert len(records) == 1, f"expected one {marker} line:\n{output[-3000:]}"
    return records[0]


def _learn_end(restored_step: int, total: int) -> int:
    """Where `learn(total)` stops after a restore at `restored_step`: SB3 ends learn() only at the end of a
    rollout of TRAIN_FREQ steps, and a restore between two updates starts a fresh rollout there, so it is
    `total` itself only when the restored step lies on the rollout grid (as SB3 does for any total)."""
    return restored_step + math.ceil((total - restored_step) / TRAIN_FREQ) * TRAIN_FREQ


def _one_record(log: DigestLog, event: str) -> dict[str, Any]:
    records = [r for r in log.records() if r["event"] == event]
    assert len(records) == 1, f"the trainer recorded {len(records)} {event!r} events"
    return records[0]


def _metric_steps_since(uri: str, run_id: str, key: str, since_ms: int) -> list[int]:
    import mlflow

    history = mlflow.MlflowClient(uri).get_metric_history(run_id, key)
    return [m.step for m in history if m.timestamp >= since_ms]


# ------------------------------------------------------------------------------------- in-process, fast


def _config(**overrides: Any) -> mp.PersistConfig:
    values = dict(
        tracking_uri="memory://",
        monitor="rollout/ep_rew_mean",
        mode="max",
        periodic_every_steps=200,
        log_system_metrics=False,
        min_free_disk_mb=0,
        min_free_disk_percent=0,
    )
    return mp.PersistConfig(**{**values, **overrides})


def _dqn(seed: int = 0) -> DQN:
    return DQN(
        "MlpPolicy",
        gymnasium.make("CartPole-v1"),
        learning_starts=100,
        train_freq=4,
        buffer_size=2000,
        seed=seed,
        device="cpu",
    )


def _callback(store: MemoryStore, **kwargs: Any) -> PersistCallback:
    return PersistCallback(
        NAME, _config(), store=store, persistence_kwargs={"install_signal_handlers": False}, **kwargs
    )


def test_the_episode_mean_is_reported_once_per_episode_and_learn_again_resumes() -> None:
    store = MemoryStore()
    model = _dqn()
    reported: list[tuple[int, float]] = []
    expected: list[tuple[int, float]] = []
    returns: list[float] = []
    ended_at: list[int] = []

    class Recording(PersistCallback):
        def persist_step(self, **metrics: float) -> mp.SaveDecision:
            if not self.counted_ahead:  # the last step's report at learn()'s end: on_step saw it already
                return super().persist_step(**metrics)
            step = self.model.num_timesteps
            ended = [i["episode"]["r"] for i in self.locals["infos"] if "episode" in i]
            if returns and step - 1 in ended_at:  # SB3 adds an episode to ep_info_buffer after on_step
                expected.append((step, float(np.mean(returns[-100:]))))
            returns.extend(ended)
            ended_at.extend([step] if ended else [])
            if "rollout/ep_rew_mean" in metrics:
                reported.append((step, metrics["rollout/ep_rew_mean"]))
            return super().persist_step(**metrics)

    callback = Recording(NAME, _config(), store=store, persistence_kwargs={"install_signal_handlers": False})
    model.learn(total_timesteps=600, callback=callback)
    assert callback.restored is None and model.num_timesteps == 600
    assert len(expected) > 10 and reported == expected
    callback.close()  # idempotent: learn() already closed it
    assert [v.category for v in store.list_versions(NAME)][-1] == "final"

    model.learn(total_timesteps=600, callback=callback)  # the same total: nothing left to train
    assert callback.restored is not None and callback.restored.category == "final"
    assert callback.restored.step == 600 and model.num_timesteps == 600


class ReturnsRecorder(gymnasium.Wrapper):
    """The evaluation env's own record: the return of every episode played on it."""

    def __init__(self, env: gymnasium.Env) -> None:
        super().__init__(env)
        self.returns: list[float] = []
        self._current = 0.0

    def reset(self, **kwargs: Any) -> Any:
        self._current = 0.0
        return self.env.reset(**kwargs)

    def step(self, action: Any) -> Any:
        observation, reward, terminated, truncated, info = self.env.step(action)
        self._current += float(reward)
        if terminated or truncated:
            self.returns.append(self._current)
        return observation, reward, terminated, truncated, info


def test_with_an_eval_env_best_follows_the_evaluations_not_the_training_reward() -> None:
    store = MemoryStore()
    eval_env = ReturnsRecorder(gymnasium.make("CartPole-v1"))
    callback = PersistCallback(
        NAME,
        _config(monitor=EVAL_MONITOR, periodic_every_steps=10_000, keep_best=100),
        eval_env=eval_env,
        eval_freq=150,
        n_eval_episodes=2,
        store=store,
        persistence_kwargs={"install_signal_handlers": False},
    )
    _dqn().learn(total_timesteps=600, callback=callback)
    # every evaluation played 2 episodes, at steps 150, 300, 450 and 600 (the last one at learn()'s end)
    assert len(eval_env.returns) == 8
    means = [float(np.mean(eval_env.returns[i : i + 2])) for i in range(0, 8, 2)]
    performance = {v.step: v.value for v in store.list_versions(NAME) if v.category == "performance"}
    assert set(performance) <= {150, 300, 450, 600} and all(value in means for value in performance.values())
    best = store.alias_version(NAME)
    assert best is not None and best.value == max(means)
    assert best.step == 150 * (means.index(max(means)) + 1)


def test_an_eval_env_needs_the_evaluation_monitor() -> None:
    callback = PersistCallback(
        NAME, _config(), eval_env=gymnasium.make("CartPole-v1"), store=MemoryStore(),
        persistence_kwargs={"install_signal_handlers": False},
    )  # fmt: skip
    with pytest.raises(mp.ConfigError, match="monitor='eval/mean_reward' and mode='max'"):
        _dqn().learn(total_timesteps=10, callback=callback)


@pytest.mark.parametrize("algo", ["dqn", "ppo"])
def test_a_monitor_sb3_never_records_fails_learn_after_the_first_update_and_keeps_the_steps_trained(
    algo: str,
) -> None:
    """A misspelled monitor would never take a performance checkpoint: learn() fails with the keys SB3 records,
    one env step after the first training update recorded its keys, long before total_timesteps; the final
    checkpoint of the step reached is still taken."""
    store = MemoryStore()
    model = (
        _dqn()
        if algo == "dqn"
        else PPO("MlpPolicy", gymnasium.make("CartPole-v1"), n_steps=64, batch_size=64, device="cpu")
    )
    first_update = 104 if algo == "dqn" else 64  # DQN: learning_starts=100, train_freq=4; PPO: one rollout
    callback = PersistCallback(
        NAME, _config(monitor="train/los", mode="min", periodic_every_steps=10_000), store=store,
        persistence_kwargs={"install_signal_handlers": False},
    )  # fmt: skip
    with pytest.raises(mp.ConfigError) as failure:
        model.learn(total_timesteps=5_000, callback=callback)
    message = str(failure.value)
    assert "the monitor 'train/los' is not among the metrics SB3 records" in message
    for key in ("train/loss", "train/n_updates", "rollout/ep_rew_mean"):
        assert key in message
    assert first_update < model.num_timesteps <= first_update + 2  # the update's step, then one more
    (final,) = store.list_versions(NAME)
    assert final.category == "final" and final.step == model.num_timesteps - 1


def test_a_monitor_recorded_by_a_later_callback_or_by_sb3_updates_is_found() -> None:
    """Keys a user's callback listed after ours records, and SB3's own `train/*` keys, are monitors learn() keeps
    training with; each one takes performance checkpoints."""

    class RecordsGrade(BaseCallback):
        def _on_step(self) -> bool:
            self.logger.record("custom/grade", float(self.num_timesteps % 7))
            return True

    for monitor in ("custom/grade", "train/loss"):
        store = MemoryStore()
        persist = PersistCallback(
            NAME, _config(monitor=monitor, mode="max", periodic_every_steps=10_000), store=store,
            persistence_kwargs={"install_signal_handlers": False},
        )  # fmt: skip
        model = _dqn()
        model.learn(total_timesteps=400, callback=[persist, RecordsGrade()])
        assert model.num_timesteps == 400
        assert any(v.category == "performance" for v in store.list_versions(NAME)), monitor


def test_monitor_none_takes_periodic_and_final_checkpoints_only_and_no_best() -> None:
    class Waiting(PersistCallback):  # each save registered before training goes on: none replaces another
        def persist_step(self, **metrics: float) -> mp.SaveDecision:
            decision = super().persist_step(**metrics)
            if decision.save and self.handle is not None:
                self.handle.flush()
            return decision

    store = MemoryStore()
    persist = Waiting(
        NAME, _config(monitor=None, periodic_every_steps=100, keep_periodic=10), store=store,
        persistence_kwargs={"install_signal_handlers": False},
    )  # fmt: skip
    model = _dqn()
    model.learn(total_timesteps=450, callback=persist)  # ends at 452: DQN trains every 4 steps
    versions = store.list_versions(NAME)
    assert sorted((v.step, v.category) for v in versions) == [
        *((step, "periodic") for step in (100, 200, 300, 400)),
        (model.num_timesteps, "final"),
    ]
    assert store.alias_version(NAME) is None


def test_a_registered_model_of_another_architecture_fails_learn_before_the_first_step_and_is_left_as_it_is() -> None:
    store = MemoryStore()
    _dqn().learn(total_timesteps=300, callback=_callback(store))
    before = [(v.version, v.category, v.corrupt) for v in store.list_versions(NAME)]
    ppo = PPO("MlpPolicy", gymnasium.make("CartPole-v1"), n_steps=64, batch_size=64, device="cpu")
    with pytest.raises(mp.CheckpointMismatchError, match=f"v{before[-1][0]} of {NAME} does not fit the tracked model"):
        ppo.learn(total_timesteps=128, callback=_callback(store))
    assert ppo.num_timesteps == 0  # not one env step
    assert [(v.version, v.category, v.corrupt) for v in store.list_versions(NAME)] == before  # nothing marked


def test_save_replay_buffer_needs_an_off_policy_algorithm() -> None:
    model = PPO("MlpPolicy", gymnasium.make("CartPole-v1"), n_steps=64, batch_size=64, device="cpu")
    with pytest.raises(mp.PersistError, match="save_replay_buffer=True needs an off-policy algorithm"):
        model.learn(total_timesteps=64, callback=_callback(MemoryStore(), save_replay_buffer=True))


def _normalized_ppo() -> PPO:
    env = VecNormalize(DummyVecEnv([lambda: gymnasium.make("CartPole-v1")]), gamma=0.99)
    return PPO("MlpPolicy", env, n_steps=64, batch_size=64, device="cpu", seed=0)


def _statistics(env: VecNormalize) -> dict[str, Any]:
    """What VecNormalize scales with, copied from the live wrapper (the trainer's own record)."""
    return {
        "obs": (env.obs_rms.mean.copy(), env.obs_rms.var.copy(), float(env.obs_rms.count)),
        "ret": (env.ret_rms.mean.copy(), env.ret_rms.var.copy(), float(env.ret_rms.count)),
        "returns": env.returns.copy(),
    }


def test_vec_normalize_statistics_are_saved_and_a_resumed_agent_scales_observations_alike() -> None:
    store = MemoryStore()
    first = _normalized_ppo()
    first.learn(total_timesteps=128, callback=_callback(store))
    trained = _statistics(first.get_vec_normalize_env())
    assert trained["obs"][2] > 100  # it saw the rollouts

    second = _normalized_ppo()
    second.learn(total_timesteps=128, callback=_callback(store))  # resumes at 128: nothing left to train
    assert second.num_timesteps == 128
    resumed = _statistics(second.get_vec_normalize_env())
    for key in ("obs", "ret"):
        mean, var, count = resumed[key]
        assert np.array_equal(mean, trained[key][0]) and np.array_equal(var, trained[key][1]), key
        assert count == trained[key][2], key
    assert np.array_equal(resumed["returns"], trained["returns"])
    observation = np.array([[0.1, -0.2, 0.03, 0.4]], dtype=np.float32)
    assert np.array_equal(
        second.get_vec_normalize_env().normalize_obs(observation),
        first.get_vec_normalize_env().normalize_obs(observation),
    )


class NoFinalCheckpoint(PersistCallback):
    """Ends learn() as a kill would: no final checkpoint (and no report of the last step)."""

    def _on_training_end(self) -> None:
        self.close(final_checkpoints=False)


@pytest.fixture
def sb3_warnings() -> Iterator[list[str]]:
    """The warnings the SB3 integration logs (the package's loggers do not propagate to caplog)."""
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("mlflow_persist.integrations.sb3")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def _buffer_callback(
    store: MemoryStore, every: int, kind: type[PersistCallback] = PersistCallback, **config: Any
) -> PersistCallback:
    return kind(
        NAME,
        _config(monitor=None, periodic_every_steps=100, **config),
        save_replay_buffer=True,
        replay_buffer_every_steps=every,
        store=store,
        persistence_kwargs={"install_signal_handlers": False},
    )


def test_retention_keeps_the_newest_checkpoint_holding_the_replay_buffer_the_newer_ones_rely_on(
    sb3_warnings: list[str],
) -> None:
    store = MemoryStore()
    first = _dqn()
    first.learn(total_timesteps=700, callback=_buffer_callback(store, 400, NoFinalCheckpoint, keep_periodic=1))
    kept = {v.step: v for v in store.list_versions(NAME)}
    # keep_periodic=1 keeps the newest periodic only (step 600: learn() ended without reporting 700); the one
    # of step 400, the last to hold the buffer (400 steps after none), stays for the checkpoints after it
    assert sorted(kept) == [400, 600]
    held = store.load_version(kept[400]).extra_state["replay_buffer"]
    assert held is not None and held["pos"] == 400

    second = _dqn()
    second.learn(total_timesteps=700, callback=_buffer_callback(store, 400))
    assert second.replay_buffer.pos >= 400  # 400 transitions restored, then those of steps 601 to 700
    assert [m for m in sb3_warnings if "holds no replay buffer" in m] == [
        f"{NAME}: the checkpoint v{kept[600].version} (step 600) holds no replay buffer: loaded the one of "
        f"v{kept[400].version} (step 400), which lacks the transitions of the 200 env steps in between"
    ]


def test_without_any_checkpoint_holding_the_replay_buffer_a_restart_resumes_with_an_empty_one(
    sb3_warnings: list[str],
) -> None:
    store = MemoryStore()
    _dqn().learn(total_timesteps=500, callback=_buffer_callback(store, 1000, NoFinalCheckpoint))
    assert all(store.load_version(v).extra_state.get("replay_buffer") is None for v in store.list_versions(NAME))

    class Probe(NoFinalCheckpoint):  # the buffer right after the restore, before learn() adds to it
        def _on_training_start(self) -> None:
            super()._on_training_start()
            self.after_restore = (int(self.model.replay_buffer.pos), bool(self.model.replay_buffer.full))

    model = _dqn()
    model.replay_buffer.pos = 123  # what a restore must not keep: transitions of no checkpoint
    probe = _buffer_callback(store, 1000, Probe)
    assert isinstance(probe, Probe)
    model.learn(total_timesteps=500, callback=probe)
    assert probe.restored is not None and probe.restored.step == 400
    assert probe.after_restore == (0, False)
    assert any("holds no replay buffer, and no older version holds" in m for m in sb3_warnings), sb3_warnings


def test_until_the_checkpoint_holding_the_buffer_is_registered_the_next_ones_hold_it_too() -> None:
    """The writer may replace a waiting snapshot by a newer one, or fail to save it: a checkpoint without the
    buffer must only ever go with one that is registered, which retention then keeps."""
    schedule = ReplayBufferSchedule(300)
    assert [schedule.due(step) for step in (100, 200, 300)] == [False, False, True]
    schedule.carried(300)
    assert schedule.due(400) and schedule.source() is None  # 300 is not registered yet
    held = schedule.carried(400)
    schedule.registered(7, 400)  # the snapshot of 400 replaced the waiting one of 300
    assert not schedule.due(500) and schedule.source() == held and schedule.keep() == {7}
    schedule.registered(8, 500)  # a checkpoint without the buffer
    assert schedule.keep() == {7} and not schedule.due(600) and schedule.due(700)


def test_replay_buffer_every_steps_needs_save_replay_buffer() -> None:
    with pytest.raises(mp.ConfigError, match="pass save_replay_buffer=True as well"):
        PersistCallback(NAME, _config(), replay_buffer_every_steps=1000)


# ------------------------------------------------------------------------------------- real subprocesses


@pytest.mark.slow
def test_best_is_the_best_mean_reward_the_trainer_saw(tmp_path: Path, sqlite_uri: str, framework: Zygote) -> None:
    log = DigestLog(tmp_path / "digests.jsonl")
    output = run(SCRIPT, sqlite_uri, str(log.path), "1500", cwd=tmp_path, zygote=framework).stdout
    assert _one(output, "DONE")["num_timesteps"] == 1500
    records = log.records()
    means = {r["step"]: r["value"] for r in records if r["event"] == "mean"}
    saved_steps = {r["step"] for r in records if r["event"] == "saved"}
    saved = registry(sqlite_uri, NAME)

    versions = saved["versions"]
    assert {t[CATEGORY] for t in versions.values()} == {"performance", "periodic", "final"}
    for number, tags in versions.items():
        step = int(tags[STEP])
        if tags[CATEGORY] == "final":
            assert step == 1500
            continue
        assert step in saved_steps, f"v{number} holds step {step}, where the trainer decided no save"
        if tags[CATEGORY] == "performance":
            assert float(tags[VALUE]) == means[step]

    best_value = max(means.values())
    best = versions[int(saved["aliases"]["best"])]
    assert best[CATEGORY] == "performance" and float(best[VALUE]) == best_value
    assert int(best[STEP]) == min(step for step, value in means.items() if value == best_value)
    assert len(saved["runs"]) == 1 and saved["runs"][0].info.status == "FINISHED"


@pytest.mark.slow
def test_a_kill_mid_training_resumes_from_the_newest_checkpoint_with_its_replay_buffer(
    tmp_path: Path, sqlite_uri: str, framework: Zygote
) -> None:
    log = DigestLog(tmp_path / "digests.jsonl")
    args = (sqlite_uri, str(log.path), "2400", "--replay-buffer", "--periodic", "100")
    first = run_and_kill(
        SCRIPT, *args, "--slow-after", "800", cwd=tmp_path, zygote=framework, when="PROGRESS 1000", delay=0.3
    )
    assert "DONE" not in first
    before = registry(sqlite_uri, NAME)
    newest = max(before["versions"])
    assert before["versions"][newest][CATEGORY] != "final"  # killed: no final checkpoint was taken

    second = run(SCRIPT, *args, cwd=tmp_path, zygote=framework).stdout
    restored = _one(second, "RESTORED")
    step = int(before["versions"][newest][STEP])
    assert restored["version"] == newest and restored["step"] == step >= 500
    # the live policy, optimizer and counters are exactly what the trainer had when it saved that step
    assert restored["digest"] == log.digest_at(step)
    assert restored["counters"]["num_timesteps"] == step
    # one env: a checkpoint of step N holds all of step N (DQN's _n_calls counts its env steps, the replay
    # buffer holds one transition per step), not the state after step N - 1
    assert restored["counters"]["_n_calls"] == step and restored["buffer_pos"] == step
    recorded = [r for r in log.records() if r["event"] == "saved" and r["step"] == step][0]
    assert {k: restored[k] for k in ("buffer_pos", "buffer_full", "buffer_size", "buffer_digest")} == {
        k: recorded[k] for k in ("buffer_pos", "buffer_full", "buffer_size", "buffer_digest")
    }
    assert restored["buffer_size"] == step  # filled with every step's transition, not a fresh buffer
    assert _one(second, "DONE")["num_timesteps"] == _learn_end(step, 2400)  # never at step + 2400

    after = registry(sqlite_uri, NAME)
    assert len(after["runs"]) == 1 and after["runs"][0].info.run_id == restored["run_id"]
    assert after["runs"][0].info.status == "FINISHED"
    steps = _metric_steps_since(sqlite_uri, restored["run_id"], "train/loss", restored["time_ms"])
    assert steps and min(steps) > step and max(steps) <= _learn_end(step, 2400)


class VecNormalizeStatisticsOfTheNextStep(AssertionError):
    """A checkpoint of step N holds VecNormalize statistics that already counted step N + 1 (see the test below)."""


# The training the kill test repeats: its total across restarts, and per algorithm the periodic checkpoints'
# spacing, a whole number of rollouts (DQN's train_freq, PPO's n_steps).
EXACT_TOTAL = 1600
EXACT_PERIODIC = {"dqn": (100, TRAIN_FREQ), "ppo": (2 * PPO_N_STEPS, PPO_N_STEPS)}


@pytest.mark.slow
@pytest.mark.parametrize(
    "algo",
    ["dqn", "ppo"],
)
def test_killed_twice_at_random_points_the_resumed_run_ends_as_the_uninterrupted_one(
    algo: str, tmp_path: Path, sqlite_uri: str, template_db: Path, framework: Zygote
) -> None:
    """The same CartPole training run through once, and run again SIGKILLed twice at random points and restarted
    with the callback until it finishes. Every run calls `learn(EXACT_TOTAL)`: the callback continues from the
    restored timestep to that total, which is what SB3's own resume does with
    `load()` + `learn(EXACT_TOTAL - model.num_timesteps, reset_num_timesteps=False)` (run too, as the oracle of the
    step semantics: num_timesteps, updates, DQN's _n_calls, the schedules' progress, the optimizer's step count).

    Only periodic checkpoints are taken (monitor=None), every EXACT_PERIODIC steps: on
    the rollout grid, where SB3's own resume between two learn() calls lies too. A performance save at an update
    would push a periodic save due at the same step to the next step (decide_save), off the grid, and a resume
    there starts a fresh rollout, moving every later update (see _learn_end): the totals would no longer match.

    Bitwise: neither SB3's own save nor a checkpoint holds the env (CartPole's physics state mid-episode and
    its RNG, the TimeLimit and Monitor counters), the observation SB3 acts on next, or the RNG streams (torch:
    PPO's action sampling; numpy: DQN's epsilon-greedy draws and replay sampling, PPO's minibatch shuffles; the
    action space's own RNG). A resume resets the env (`_setup_learn`, as SB3's `set_env` does after `load`), so
    it takes other actions from there on: weights, the optimizer's moments and the episode count then differ
    from the uninterrupted run's (measured once without the carry: DQN ended with other weights and 138 episodes
    instead of 137), while the step counters and the optimizer's step count agree. sb3_proc.py --carry therefore carries exactly that
    state itself across each kill (at every rollout start, put back after the restore), and the rest, what the
    callback saves (weights, optimizer, counters, replay buffer, VecNormalize statistics), must then make the
    resumed run end bit for bit where the uninterrupted one ends, on CPU with one thread.

    The expectations come from the trainer's records: its digest log of every save, the uninterrupted run's
    and SB3's own resume's DONE records."""
    periodic, rollout = EXACT_PERIODIC[algo]
    name = f"cartpole_{algo}"
    common = (
        *("--algo", algo, "--monitor", "none", "--periodic", str(periodic)),
        *("--progress-every", "32", *(["--replay-buffer"] if algo == "dqn" else [])),
    )

    plain_log = DigestLog(tmp_path / "plain.jsonl")
    plain_uri = copy_template_store(template_db, tmp_path / "plain")
    plain_args = (plain_uri, str(plain_log.path), str(EXACT_TOTAL), *common, "--carry", str(tmp_path / "plain-carry"))
    plain = _one(run(SCRIPT, *plain_args, cwd=tmp_path, zygote=framework).stdout, "DONE")
    assert plain["num_timesteps"] == EXACT_TOTAL

    rng = random.Random()
    seed = rng.randrange(1_000_000)
    rng.seed(seed)
    first_kill = rng.randrange(12, 25) * 32  # timestep 384 to 768: periodic checkpoints are registered by then
    kills = [(first_kill, rng.uniform(0, 0.1)), (first_kill + rng.randrange(10, 16) * 32, rng.uniform(0, 0.1))]
    where = f"seed {seed}: kills at " + " and ".join(f"PROGRESS {step} + {delay:.3f} s" for step, delay in kills)
    print(where, flush=True)

    log = DigestLog(tmp_path / "killed.jsonl")
    args = (sqlite_uri, str(log.path), str(EXACT_TOTAL), *common, "--carry", str(tmp_path / "carry"))
    outputs = [
        run_and_kill(
            SCRIPT, *args, "--slow-after", "0", cwd=tmp_path, zygote=framework, when=f"PROGRESS {step}\n", delay=delay
        )
        for step, delay in kills
    ]
    assert not any("DONE" in output for output in outputs), where
    outputs.append(run(SCRIPT, *args, cwd=tmp_path, zygote=framework).stdout)
    restores = [_one(output, "RESTORED") for output in outputs]
    done = _one(outputs[-1], "DONE")

    steps = [restored["step"] for restored in restores]
    assert steps[0] is None, where  # a fresh store: the first run started from scratch
    assert steps[1] is not None and steps[2] is not None, f"{where}: a kill came before any checkpoint: {steps}"
    records = log.records()
    # each restart went on from a checkpoint the run before it took (the second from one of the resumed run's)
    for before, restored in zip(restores, restores[1:]):
        by_it = {r["step"] for r in records if r["event"] == "saved" and r["pid"] == before["pid"]}
        assert restored["step"] in by_it, f"{where}: {steps}, the killed run saved {sorted(by_it)}"
    assert 0 < steps[1] < steps[2], f"{where}: {steps}"
    for restored in restores[1:]:
        step = restored["step"]
        assert restored["category"] == "periodic" and step % rollout == 0, f"{where}: {restored}"
        saved = [r for r in records if r["event"] == "saved" and r["step"] == step]
        assert saved, f"{where}: the trainer recorded no save at step {step}"
        # the live policy, optimizer and counters are what the trainer had when it saved that step
        assert restored["digest"] in {r["digest"] for r in saved}, f"{where}: step {step}"
        assert restored["counters"]["num_timesteps"] == step and restored["carried"], where
        if algo == "dqn":  # one env: _n_calls counts the env steps, the buffer holds one transition per step
            assert restored["counters"]["_n_calls"] == step == restored["buffer_pos"], where
            buffer = ("buffer_pos", "buffer_full", "buffer_size", "buffer_digest")
            assert {k: restored[k] for k in buffer} == {k: saved[-1][k] for k in buffer}, f"{where}: step {step}"

    saved_runs = registry(sqlite_uri, name)["runs"]
    assert len(saved_runs) == 1, where  # one MLflow run across the restarts, each restore continued it
    assert {restored["run_id"] for restored in restores[1:]} == {saved_runs[0].info.run_id}, where
    assert saved_runs[0].info.status == "FINISHED", where

    # The step semantics of SB3's own resume (save + load at the same steps, learn(rest, reset_num_timesteps=
    # False)): the same total and counters. Its episode count differs (its env restarts mid-episode).
    own = _one(
        run(
            SCRIPT, "unused", str(tmp_path / "own.jsonl"), str(EXACT_TOTAL), *common,
            "--sb3-own", f"{steps[1]},{steps[2]}", cwd=tmp_path, zygote=framework,
        ).stdout,
        "DONE",
    )  # fmt: skip
    counters = {k: v for k, v in done["counters"].items() if k != "_episode_num"}
    assert done["num_timesteps"] == own["num_timesteps"] == plain["num_timesteps"] == EXACT_TOTAL, where
    assert counters == {k: v for k, v in own["counters"].items() if k != "_episode_num"}, where
    assert done["optimizer_steps"] == own["optimizer_steps"] == plain["optimizer_steps"], where
    assert len(done["optimizer_steps"]) == 1 and done["optimizer_steps"][0] > 0, where  # one count, all params

    if algo == "ppo":  # the statistics a restore put back are those the trainer had after the restored step
        for restored in restores[1:]:
            saved = [r for r in records if r["event"] == "saved" and r["step"] == restored["step"]]
            if restored["normalizer"] not in {r["normalizer"] for r in saved}:
                raise VecNormalizeStatisticsOfTheNextStep(
                    f"{where}: the checkpoint of step {restored['step']} holds VecNormalize statistics of "
                    f"{restored['normalizer_count']} observations, the trainer's after that step counted "
                    f"{saved[-1]['normalizer_count']}"
                )

    # Bit for bit: every step both runs saved holds the same state, and the resumed run ends as the other.
    plain_saved = {r["step"]: r for r in plain_log.records() if r["event"] == "saved"}
    for record in records:
        if record["event"] == "saved" and record["step"] in plain_saved:
            expected = plain_saved[record["step"]]
            assert record["digest"] == expected["digest"], f"{where}: step {record['step']}"
            assert record.get("normalizer") == expected.get("normalizer"), f"{where}: step {record['step']}"
    final = ("counters", "weights", "optimizer", "digest", "normalizer")
    assert {k: done.get(k) for k in final} == {k: plain.get(k) for k in final}, where


@pytest.mark.slow
def test_sigterm_ends_learn_with_a_final_checkpoint_and_the_restart_continues_the_same_run(
    tmp_path: Path, sqlite_uri: str, framework: Zygote
) -> None:
    log = DigestLog(tmp_path / "digests.jsonl")
    args = (sqlite_uri, str(log.path), "1600", "--monitor", "train/loss", "--mode", "min")
    code, first = run_and_signal(
        SCRIPT, *args, "--slow-after", "500", cwd=tmp_path, zygote=framework, when="PROGRESS 750"
    )
    assert code == 0 and "DONE" not in first, first[-3000:]  # stopped at a step boundary, not at the end
    final = _one_record(log, "final")
    saved = registry(sqlite_uri, NAME)
    newest = saved["versions"][max(saved["versions"])]
    # the signal lands while step 750 is being counted, which reports step 749 (SB3 counts a step before
    # its callback): the earliest step boundary it can stop at is 750
    assert newest[CATEGORY] == "final" and int(newest[STEP]) == final["step"] >= 750
    run_id = saved["runs"][0].info.run_id

    second = run(SCRIPT, *args, cwd=tmp_path, zygote=framework).stdout
    restored = _one(second, "RESTORED")
    assert restored["category"] == "final" and restored["step"] == final["step"]
    assert restored["digest"] == final["digest"]  # the state learn() stopped with, counters included
    assert _one(second, "DONE")["num_timesteps"] == _learn_end(final["step"], 1600)

    saved = registry(sqlite_uri, NAME)
    assert [r.info.run_id for r in saved["runs"]] == [run_id] == [restored["run_id"]]
    assert saved["runs"][0].info.status == "FINISHED"
    steps = _metric_steps_since(sqlite_uri, run_id, "train/loss", restored["time_ms"])
    assert steps and min(steps) > final["step"] and max(steps) <= _learn_end(final["step"], 1600)


@pytest.mark.slow
def test_the_example_trains_and_resumes(tmp_path: Path, sqlite_uri: str, framework: Zygote) -> None:
    args = ("--tracking-uri", sqlite_uri, "--timesteps")
    first = run(EXAMPLE, *args, "600", cwd=tmp_path, zygote=framework).stdout
    assert "started fresh" in first and "trained to timestep 600" in first  # what its user reads
    saved = registry(sqlite_uri, "cartpole_dqn")
    assert _final_steps(saved["versions"]) == [600] and len(saved["runs"]) == 1
    run_id = saved["runs"][0].info.run_id
    first_losses = _metric_steps(sqlite_uri, run_id, "train/loss")
    assert first_losses and max(first_losses) <= 600
    newest = max(saved["versions"])

    second = run(EXAMPLE, *args, "900", cwd=tmp_path, zygote=framework).stdout
    assert f"resumed from v{newest} (final) at timestep 600" in second and "trained to timestep 900" in second
    # The registry says the same: one run, whose new checkpoints and loss values all come after timestep 600
    # (a fresh start would have logged its first 600 timesteps again), its final at 900.
    resumed = registry(sqlite_uri, "cartpole_dqn")
    assert [r.info.run_id for r in resumed["runs"]] == [run_id]
    added = {v: tags for v, tags in resumed["versions"].items() if v not in saved["versions"]}
    assert _final_steps(added) == [900] and min(int(t[STEP]) for t in added.values()) > 600, added
    logged = Counter(_metric_steps(sqlite_uri, run_id, "train/loss")) - Counter(first_losses)
    assert logged and min(logged) > 600 and max(logged) <= 900, sorted(logged)


def _final_steps(versions: dict[int, dict[str, str]]) -> list[int]:
    return sorted(int(t[STEP]) for t in versions.values() if t[CATEGORY] == "final")


def _metric_steps(uri: str, run_id: str, key: str) -> list[int]:
    import mlflow

    return [m.step for m in mlflow.MlflowClient(uri).get_metric_history(run_id, key)]


def _held_buffer(uri: str, version: int) -> dict[str, Any] | None:
    """What registered `version` holds of the replay buffer, as the trainer records its live buffer
    (sb3_proc.buffer_record: pos, full, filled size, contents digest); None when it holds none."""
    extra = mp.load_checkpoint(f"models:/{NAME}/{version}", tracking_uri=uri).extra_state
    saved = extra.get("replay_buffer")
    if saved is None:
        return None
    arrays = [torch.as_tensor(np.ascontiguousarray(saved[name])) for name in BUFFER_ARRAYS]
    return {
        "buffer_pos": saved["pos"],
        "buffer_full": saved["full"],
        "buffer_size": len(arrays[0]),
        "buffer_digest": state_digest(arrays),
    }


# The interval tests' runs: periodic checkpoints only (monitor=None), every 100 steps.
INTERVAL_ARGS = (
    *("--replay-buffer", "--periodic", "100", "--monitor", "none"),
    *("--progress-every", "50"),
)


@pytest.mark.slow
def test_with_replay_buffer_every_steps_only_the_due_checkpoints_and_the_final_one_hold_the_buffer(
    tmp_path: Path, sqlite_uri: str, framework: Zygote
) -> None:
    every, total = 300, 1000
    log = DigestLog(tmp_path / "digests.jsonl")
    args = (sqlite_uri, str(log.path), str(total), *INTERVAL_ARGS, "--replay-buffer-every", str(every))
    run(SCRIPT, *args, "--wait-for-saves", cwd=tmp_path, zygote=framework)  # no snapshot replaces another
    records = log.records()
    saves = {r["step"]: r for r in records if r["event"] == "saved"}
    assert sorted(saves) == list(range(100, total + 1, 100))  # the trainer decided the periodic saves only
    due, last = [], 0  # the step arithmetic: the first save at least `every` steps after the last one with it
    for step in sorted(saves):
        if step - last >= every:
            due.append(step)
            last = step
    assert due == [300, 600, 900]

    versions = registry(sqlite_uri, NAME)["versions"]
    held = {number: _held_buffer(sqlite_uri, number) for number in versions}
    periodic = {int(tags[STEP]): held[n] for n, tags in versions.items() if tags[CATEGORY] == "periodic"}
    assert sorted(periodic) == sorted(saves)
    assert sorted(step for step, buffer in periodic.items() if buffer is not None) == due
    for step in due:  # the buffer the trainer had when it saved that step
        assert periodic[step] == {k: saves[step][k] for k in BUFFER_RECORD}, step
    assert periodic[600] is not None and periodic[600]["buffer_pos"] == 600  # all of step 600, nothing of 601
    finals = [n for n, tags in versions.items() if tags[CATEGORY] == "final"]
    assert len(finals) == 1 and int(versions[finals[0]][STEP]) == total
    final = _one_record(log, "final")
    assert held[finals[0]] == {k: final[k] for k in BUFFER_RECORD}  # a final checkpoint always holds it


@pytest.mark.slow
def test_a_kill_after_a_checkpoint_without_the_buffer_resumes_with_the_buffer_of_the_older_one(
    tmp_path: Path, sqlite_uri: str, framework: Zygote
) -> None:
    every = 500  # the buffer at step 500 (and at the steps after it saved before that one was registered)
    log = DigestLog(tmp_path / "digests.jsonl")
    args = (sqlite_uri, str(log.path), "1200", *INTERVAL_ARGS, "--replay-buffer-every", str(every))
    first = run_and_kill(
        SCRIPT, *args, "--slow-after", "0", cwd=tmp_path, zygote=framework, when="PROGRESS 850\n", delay=0.1
    )
    assert "DONE" not in first
    versions = registry(sqlite_uri, NAME)["versions"]
    newest = max(versions)
    step = int(versions[newest][STEP])
    assert versions[newest][CATEGORY] == "periodic" and every < step < 2 * every, versions[newest]
    assert _held_buffer(sqlite_uri, newest) is None  # what this test is about: the newest lacks the buffer
    older = next(n for n in sorted(versions, reverse=True) if n < newest and _held_buffer(sqlite_uri, n))
    older_step = int(versions[older][STEP])
    assert every <= older_step < step

    second = run(SCRIPT, *args, cwd=tmp_path, zygote=framework)
    restored = _one(second.stdout, "RESTORED")
    assert restored["version"] == newest and restored["step"] == step
    # weights, optimizer and counters from the newest checkpoint, as the trainer had them at that step
    assert restored["digest"] == log.digest_at(step) and restored["counters"]["num_timesteps"] == step
    # the replay buffer as the trainer had it when it saved the older version: its transitions, pos and full
    at_older = [r for r in log.records() if r["event"] == "saved" and r["step"] == older_step][0]
    assert {k: restored[k] for k in BUFFER_RECORD} == {k: at_older[k] for k in BUFFER_RECORD}
    assert restored["buffer_pos"] == older_step and not restored["buffer_full"]
    warning = f"loaded the one of v{older} (step {older_step}), which lacks the transitions of the {step - older_step}"
    assert warning in second.stderr, second.stderr[-3000:]
    assert _one(second.stdout, "DONE")["num_timesteps"] == _learn_end(step, 1200)
