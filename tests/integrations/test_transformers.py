"""PersistCallback in a real Hugging Face Trainer (a tiny BERT and GPT-2 built from configs, CPU). Every check
compares the store against what the trainer recorded itself: its state digests at each save decision, the
evaluations it was given, the steps it reached."""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it (transformers[torch])

from transformers import BertConfig, BertForSequenceClassification, Trainer  # noqa: E402
from zygote import Zygote, Zygotes  # noqa: E402

import mlflow_persist as mp  # noqa: E402
from mlflow_persist.integrations.transformers import PersistCallback  # noqa: E402
from mlflow_persist.testing import MemoryStore  # noqa: E402

from .support import (
    DigestLog,
    env,
    framework_zygote,
    lines_with,
    metric_steps,
    registry,
    run,
    run_and_kill,
    run_and_signal,
)  # noqa: E402
from .transformers_proc import MODEL_NAME, ToyDataset, tiny_bert, training_args  # noqa: E402

pytestmark = pytest.mark.slow  # real Trainer fits (and importing the Trainer takes seconds)
SCRIPT = Path(__file__).with_name("transformers_proc.py")
EXAMPLE = Path(__file__).resolve().parents[2] / "scripts" / "examples" / "transformers_example.py"
CATEGORY, STEP, VALUE = "mlflow_persist.category", "mlflow_persist.step", "mlflow_persist.value"


@pytest.fixture(scope="module")
def framework(zygotes: Zygotes) -> Zygote:
    """A pre-imported Python with transformers imported, to fork the trainer scripts from."""
    return framework_zygote(zygotes, "transformers")


def _one(output: str, marker: str) -> dict[str, Any]:
    found = list(lines_with(output, marker))
    assert len(found) == 1, f"expected one {marker} line:\n{output[-3000:]}"
    return found[0]


def _evaluations(*logs: DigestLog) -> list[dict[str, Any]]:
    return [r for log in logs for r in log.records() if r["event"] == "eval"]


# ----------------------------------------------------------------------------------- in-process, MemoryStore


class LossRecordingTrainer(Trainer):
    """A Trainer that keeps the loss of every optimizer step (what the Trainer sums into its `loss` log)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step_losses: list[float] = []

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        loss = super().training_step(*args, **kwargs)
        self.step_losses.append(float(loss))
        return loss


def _trainer(
    tmp_path: Path, store: MemoryStore, max_steps: int, monitor: str | None = "eval_loss"
) -> tuple[LossRecordingTrainer, PersistCallback]:
    config = mp.PersistConfig(
        monitor=monitor,
        keep_best=100,
        keep_final=100,
        log_system_metrics=False,
        min_free_disk_mb=0,
        min_free_disk_percent=0,
    )
    callback = PersistCallback(MODEL_NAME, config, store=store, persistence_kwargs={"install_signal_handlers": False})
    trainer = LossRecordingTrainer(
        model=tiny_bert(),
        args=training_args(str(tmp_path / "out"), max_steps),
        train_dataset=ToyDataset(128, 1),
        eval_dataset=ToyDataset(32, 2),
        callbacks=[callback],
    )
    return trainer, callback


def _train(
    tmp_path: Path, store: MemoryStore, max_steps: int, monitor: str | None = "eval_loss"
) -> tuple[LossRecordingTrainer, PersistCallback]:
    trainer, callback = _trainer(tmp_path, store, max_steps, monitor)
    trainer.train()
    return trainer, callback


def test_logs_and_evaluations_land_once_on_the_trainers_step(tmp_path: Path) -> None:
    store = MemoryStore()
    trainer, callback = _train(tmp_path, store, max_steps=6)
    assert callback.persistence is None  # train end closed it
    callback.close()  # and closing again does nothing
    run_id = callback.handle.handle.run_id

    def steps(key: str) -> list[int]:
        return [step for step, _, _ in store.metric_history(run_id, key)]

    # logging_steps=2, eval_steps=3; the Trainer hands each evaluation to on_log and on_evaluate: logged once
    assert steps("loss") == steps("learning_rate") == steps("grad_norm") == [2, 4, 6]
    assert steps("eval_loss") == [3, 6]
    assert steps("epoch") == []
    evaluations = {r["step"]: r["eval_loss"] for r in trainer.state.log_history if "eval_loss" in r}
    assert [value for _, value, _ in store.metric_history(run_id, "eval_loss")] == [evaluations[3], evaluations[6]]
    versions = store.list_versions(MODEL_NAME)
    assert [(v.category, v.step) for v in versions if v.category == "final"] == [("final", 6)]
    assert {v.step for v in versions if v.category == "performance"} <= {3, 6}


def test_a_registered_model_of_another_architecture_fails_train_before_the_first_step(tmp_path: Path) -> None:
    store = MemoryStore()
    _train(tmp_path, store, max_steps=3)
    before = [(v.version, v.category, v.corrupt) for v in store.list_versions(MODEL_NAME)]
    wider = BertForSequenceClassification(BertConfig(**{**tiny_bert().config.to_dict(), "intermediate_size": 96}))
    config = mp.PersistConfig(
        monitor="eval_loss", log_system_metrics=False, min_free_disk_mb=0, min_free_disk_percent=0
    )
    callback = PersistCallback(MODEL_NAME, config, store=store, persistence_kwargs={"install_signal_handlers": False})
    trainer = Trainer(
        model=wider,
        args=training_args(str(tmp_path / "wider"), 3),
        train_dataset=ToyDataset(128, 1),
        eval_dataset=ToyDataset(32, 2),
        callbacks=[callback],
    )
    with pytest.raises(mp.CheckpointMismatchError, match="does not fit the tracked model .*intermediate"):
        trainer.train()
    assert trainer.state.global_step == 0
    assert [(v.version, v.category, v.corrupt) for v in store.list_versions(MODEL_NAME)] == before


def test_monitor_none_trains_to_the_end_with_the_final_checkpoint_only(tmp_path: Path) -> None:
    store = MemoryStore()
    trainer, _ = _train(tmp_path, store, max_steps=6, monitor=None)
    assert trainer.state.global_step == 6
    assert [(v.category, v.step) for v in store.list_versions(MODEL_NAME)] == [("final", 6)]
    assert store.alias_version(MODEL_NAME) is None


@pytest.mark.parametrize(("evaluation", "fails_at", "logged"), [("steps", 3, "eval_loss"), ("no", 2, "loss")])
def test_a_monitor_the_trainer_never_logs_fails_train_at_once_naming_what_it_logs(
    tmp_path: Path, evaluation: str, fails_at: int, logged: str
) -> None:
    """A misspelled monitor fails at the first evaluation (logs every 2 steps, evaluations every 3), or at the
    first log without evaluation, as the Trainer's own metric_for_best_model does; the steps trained are kept."""
    store = MemoryStore()
    config = mp.PersistConfig(monitor="eval_los", log_system_metrics=False, min_free_disk_mb=0, min_free_disk_percent=0)
    callback = PersistCallback(MODEL_NAME, config, store=store, persistence_kwargs={"install_signal_handlers": False})
    trainer = Trainer(
        model=tiny_bert(),
        args=training_args(str(tmp_path / "out"), 12, eval_strategy=evaluation),
        train_dataset=ToyDataset(128, 1),
        eval_dataset=ToyDataset(32, 2),
        callbacks=[callback],
    )
    with pytest.raises(mp.ConfigError, match=f"'eval_los' is not among .*{logged}"):
        trainer.train()
    assert trainer.state.global_step == fails_at
    assert [(v.category, v.step) for v in store.list_versions(MODEL_NAME)][-1] == ("final", fails_at)


def test_a_restart_continues_global_step_and_its_first_loss_covers_only_the_steps_it_trained(tmp_path: Path) -> None:
    store = MemoryStore()
    _train(tmp_path, store, max_steps=6, monitor="loss")
    trainer, callback = _train(tmp_path, store, max_steps=10, monitor="loss")
    assert callback.restored is not None and callback.restored.step == 6
    assert trainer.state.global_step == 10 and len(trainer.step_losses) == 4  # steps 7..10, to the same total
    # the TrainerState came back with the checkpoint: the first train()'s log records are still in the history
    assert [r["step"] for r in trainer.state.log_history if "loss" in r] == [2, 4, 6, 8, 10]
    logged = dict((step, value) for step, value, _ in store.metric_history(callback.handle.handle.run_id, "loss"))
    assert sorted(logged) == [2, 4, 6, 8, 10]
    true_mean = statistics.fmean(trainer.step_losses[:2])  # steps 7 and 8
    assert logged[8] == pytest.approx(true_mean, rel=1e-5)
    assert logged[10] == pytest.approx(statistics.fmean(trainer.step_losses[2:]), rel=1e-5)
    # The Trainer itself divides by the steps since its start (8), not the 2 it trained: what the correction undoes.
    hf_first = next(r["loss"] for r in trainer.state.log_history if r.get("step") == 8 and "loss" in r)
    assert hf_first == pytest.approx(true_mean * 2 / 8, rel=1e-5)


def test_a_restore_that_fails_stops_train_and_leaves_no_final_checkpoint_of_the_fresh_model(tmp_path: Path) -> None:
    store = MemoryStore()
    _train(tmp_path, store, max_steps=3)
    saved = [(v.version, v.category, v.step) for v in store.list_versions(MODEL_NAME)]
    trainer, callback = _trainer(tmp_path, store, max_steps=6)
    store.fail("load", times=None)  # the store stays unreachable for every retry
    with pytest.raises(mp.StoreUnavailableError):
        trainer.train()
    store.heal()
    callback.close()  # what the exit hook would do: nothing is left open to save the unrestored model
    assert [(v.version, v.category, v.step) for v in store.list_versions(MODEL_NAME)] == saved
    assert trainer.state.global_step == 0


# ----------------------------------------------------------------------------------- subprocesses, MLflow


def test_a_stopped_run_resumes_in_its_run_and_best_is_the_best_evaluation(
    tmp_path: Path, sqlite_uri: str, framework: Zygote
) -> None:
    first, second = DigestLog(tmp_path / "first.jsonl"), DigestLog(tmp_path / "second.jsonl")
    code, output = run_and_signal(
        SCRIPT,
        sqlite_uri,
        str(first.path),
        "--max-steps",
        "24",
        "--step-sleep",
        "0.1",
        cwd=tmp_path,
        zygote=framework,
        when="STEP 8",
    )
    assert code == 0, output[-3000:]  # SIGTERM: final checkpoints, then a clean exit
    stopped = _one(output, "END")["step"]
    assert 8 <= stopped < 24
    before = registry(sqlite_uri, MODEL_NAME)
    newest = max(before["versions"])
    assert before["versions"][newest][CATEGORY] == "final" and int(before["versions"][newest][STEP]) == stopped

    result = run(SCRIPT, sqlite_uri, str(second.path), "--max-steps", "24", cwd=tmp_path, zygote=framework)
    restored = _one(result.stdout, "RESTORED")
    assert (restored["version"], restored["step"], restored["global_step"]) == (newest, stopped, stopped)
    assert restored["digest"] == first.digest_at(stopped)
    assert _one(result.stdout, "END")["step"] == 24  # max_steps is the total over both runs

    after = registry(sqlite_uri, MODEL_NAME)
    assert [r.info.run_id for r in after["runs"]] == [restored["run_id"]]
    evaluations = _evaluations(first, second)
    eval_steps = [r["step"] for r in evaluations]
    assert metric_steps(sqlite_uri, restored["run_id"], "eval_loss") == eval_steps == sorted(set(eval_steps))
    assert all(r["step"] > stopped for r in _evaluations(second))
    # `best` is the lowest eval_loss the trainer was given, at the step it was given
    lowest = min(evaluations, key=lambda r: r["eval_loss"])
    best = after["versions"][int(after["aliases"]["best"])]
    assert (best[CATEGORY], int(best[STEP])) == ("performance", lowest["step"])
    assert float(best[VALUE]) == pytest.approx(lowest["eval_loss"], rel=1e-12)
    # every checkpoint was decided by the trainer at its step; the final ones are where each run ended
    decided = {(r["category"], r["step"]) for log in (first, second) for r in log.records() if r["event"] == "saved"}
    registered = {(tags[CATEGORY], int(tags[STEP])) for tags in after["versions"].values()}
    # A save that waited while the trainer took a newer snapshot of the model is registered on the newer
    # snapshot's bytes, at its step (the writer's supersede): its own decided step is then not registered.
    # A periodic save due while a performance snapshot waits for the busy writer rides on it (the writer's
    # attach, which spares a third copy of the state): registered at that snapshot's step, decided later.
    # The step() that acts on the SIGTERM still decides that step's save, then raises GracefulExit instead of
    # returning the decision: the trainer never sees it. Only the stopped step may hold such a version.
    for category, step in registered - decided:
        if step == stopped and ("final", stopped) in registered:
            continue
        superseded = [s for c, s in decided - registered if c == category and s < step]
        rode = category == "periodic" and [s for c, s in decided - registered if c == category and s > step]
        assert superseded or rode, f"{category} at step {step} was never decided, nor superseded or rode on"
        assert any(c != category and s == step for c, s in registered & decided), (category, step)
    assert {step for category, step in registered if category == "final"} == {stopped, 24}


def test_after_kill_9_training_resumes_from_the_newest_checkpoint(
    tmp_path: Path, sqlite_uri: str, framework: Zygote
) -> None:
    killed, resumed = DigestLog(tmp_path / "killed.jsonl"), DigestLog(tmp_path / "resumed.jsonl")
    run_and_kill(
        SCRIPT,
        sqlite_uri,
        str(killed.path),
        "--max-steps",
        "40",
        "--step-sleep",
        "0.05",
        cwd=tmp_path,
        zygote=framework,
        when="STEP 14",
        delay=0.2,
    )
    before = registry(sqlite_uri, MODEL_NAME)
    newest = max(before["versions"])
    newest_step = int(before["versions"][newest][STEP])
    assert before["versions"][newest][CATEGORY] in ("performance", "periodic") and newest_step >= 8

    result = run(SCRIPT, sqlite_uri, str(resumed.path), "--max-steps", "40", cwd=tmp_path, zygote=framework)
    restored = _one(result.stdout, "RESTORED")
    assert (restored["version"], restored["step"], restored["global_step"]) == (newest, newest_step, newest_step)
    # the live weights and optimizer state at restore are what the killed trainer held when it saved that step
    assert restored["digest"] == killed.digest_at(newest_step)
    assert _one(result.stdout, "END")["step"] == 40
    assert (
        [r.info.run_id for r in registry(sqlite_uri, MODEL_NAME)["runs"]]
        == [r.info.run_id for r in before["runs"]]
        == [restored["run_id"]]
    )


def test_with_report_to_mlflow_the_checkpoints_go_to_the_run_of_hugging_faces_mlflow_callback(
    tmp_path: Path, sqlite_uri: str, framework: Zygote
) -> None:
    import mlflow

    client = mlflow.MlflowClient(sqlite_uri)
    relative = f"sqlite:///{Path(sqlite_uri[len('sqlite:///') :]).relative_to(tmp_path)}"  # the same store
    first_log = DigestLog(tmp_path / "first.jsonl")
    args = ("--report-to-mlflow", relative)
    run(SCRIPT, sqlite_uri, str(first_log.path), "--max-steps", "6", *args, cwd=tmp_path, zygote=framework)
    runs = _all_runs(client)
    assert len(runs) == 1  # Hugging Face's run, which is the model's: no run of its own was made
    hf_run = runs[0]
    assert hf_run.data.params["learning_rate"] == "0.003"  # the MLflowCallback logged the TrainingArguments
    assert {"loss", "eval_loss", "checkpoint/version"} <= set(hf_run.data.metrics)
    for key in ("loss", "eval_loss"):  # the MLflowCallback logs them; the callback, sharing its run, does not again
        steps = [m.step for m in client.get_metric_history(hf_run.info.run_id, key)]
        assert steps and len(steps) == len(set(steps)), (key, steps)
    assert hf_run.data.tags["mlflow_persist.registered_model"] == MODEL_NAME
    versions = {int(v.version): v.run_id for v in client.search_model_versions(f"name='{MODEL_NAME}'")}
    assert versions and set(versions.values()) == {hf_run.info.run_id}

    result = run(
        SCRIPT, sqlite_uri, str(tmp_path / "second.jsonl"), "--max-steps", "9", *args, cwd=tmp_path, zygote=framework
    )
    restored = _one(result.stdout, "RESTORED")
    assert (restored["version"], restored["step"]) == (max(versions), 6)
    assert restored["digest"] == first_log.digest_at(6)
    second_run = restored["run_id"]
    assert {r.info.run_id for r in _all_runs(client)} == {hf_run.info.run_id, second_run}
    added = {v.run_id for v in client.search_model_versions(f"name='{MODEL_NAME}'") if int(v.version) > max(versions)}
    assert added == {second_run}


def _all_runs(client: Any) -> list[Any]:
    return list(client.search_runs([e.experiment_id for e in client.search_experiments()]))


def test_the_example_trains_and_says_what_it_did(tmp_path: Path, sqlite_uri: str, framework: Zygote) -> None:
    result = run(
        EXAMPLE, "--tracking-uri", sqlite_uri, "--steps", "10", "--name", "example_gpt2", cwd=tmp_path, zygote=framework
    )
    assert "started fresh and trained to step 10" in result.stdout, result.stdout[-2000:]
    saved = registry(sqlite_uri, "example_gpt2")
    best = saved["versions"][int(saved["aliases"]["best"])]
    assert f"best: v{saved['aliases']['best']} at step {best[STEP]}" in result.stdout
    assert {tags[CATEGORY] for tags in saved["versions"].values()} >= {"performance", "periodic", "final"}
    # what it says it did is what the store holds: one run, trained to step 10, its final checkpoint at 10
    assert [int(t[STEP]) for t in saved["versions"].values() if t[CATEGORY] == "final"] == [10]
    assert max(int(t[STEP]) for t in saved["versions"].values()) == 10 and len(saved["runs"]) == 1
    # `best` is the version with the lowest eval_loss the registry holds
    performance = {v: float(t[VALUE]) for v, t in saved["versions"].items() if t[CATEGORY] == "performance"}
    assert int(saved["aliases"]["best"]) in performance
    assert performance[int(saved["aliases"]["best"])] == min(performance.values())

    final = next(v for v, t in saved["versions"].items() if t[CATEGORY] == "final")
    again = run(
        EXAMPLE, "--tracking-uri", sqlite_uri, "--steps", "14", "--name", "example_gpt2", cwd=tmp_path, zygote=framework
    )
    assert f"resumed from v{final} (final, step 10) and trained to step 14" in again.stdout, again.stdout[-2000:]


def test_killed_twice_at_random_points_the_trainers_own_resume_ends_at_the_uninterrupted_result(
    tmp_path: Path, sqlite_uri: str, framework: Zygote
) -> None:
    """Through `resume_from_checkpoint=callback.resume_checkpoint()` the Trainer resumes as from its own
    checkpoint: it fast-forwards the shuffled dataloader and restores the random states (BERT's dropout), so
    the weights and the optimizer state end bit for bit where a run without the callback ends, the loss is
    logged on the same steps, and each train() reports the steps it trained itself."""
    max_steps = "30"
    log = DigestLog(tmp_path / "digests.jsonl")
    oracle = _one(
        run(
            SCRIPT, "unused", str(log.path), "--max-steps", max_steps, "--plain", cwd=tmp_path, zygote=framework
        ).stdout,
        "DONE",
    )
    rng = random.Random()
    seed = rng.randrange(1_000_000)
    rng.seed(seed)
    restored_steps = []
    kill_at = 0
    for attempt in range(2):
        kill_at += rng.randrange(9, 13) if attempt == 0 else rng.randrange(6, 10)
        print(f"seed {seed}: kill {attempt + 1} at step {kill_at}", flush=True)
        output = run_and_kill(
            SCRIPT,
            sqlite_uri,
            str(log.path),
            *("--max-steps", max_steps, "--step-sleep", "0.1", "--native"),
            cwd=tmp_path,
            zygote=framework,
            when=f"STEP {kill_at}",
        )
        restored = _one(output, "RESTORED")
        restored_steps.append(restored["global_step"])
        assert (restored["step"] or 0) == restored["global_step"]  # the Trainer's own counter came back with it
        steps = [int(line.split()[1]) for line in output.splitlines() if line.startswith("STEP ")]
        assert steps[0] == restored["global_step"] + 1, steps  # it went on from there, not from 0
    assert restored_steps[0] == 0 and restored_steps[1] > 0

    result = run(
        SCRIPT, sqlite_uri, str(log.path), "--max-steps", max_steps, "--native", cwd=tmp_path, zygote=framework
    )
    restored = _one(result.stdout, "RESTORED")
    assert restored["global_step"] > restored_steps[1]
    done = _one(result.stdout, "DONE")
    assert done["trained_steps"] == int(max_steps) - restored["global_step"]  # train_steps_per_second covers these
    assert {key: done[key] for key in ("global_step", "weights", "optimizer", "log_steps")} == {
        key: oracle[key] for key in ("global_step", "weights", "optimizer", "log_steps")
    }


def test_a_checkpoint_the_callback_did_not_write_fails_train_when_the_store_has_one(
    tmp_path: Path, sqlite_uri: str, framework: Zygote
) -> None:
    first = run(SCRIPT, sqlite_uri, str(tmp_path / "d.jsonl"), "--max-steps", "4", cwd=tmp_path, zygote=framework)
    assert _one(first.stdout, "DONE")["global_step"] == 4
    before = registry(sqlite_uri, MODEL_NAME)["versions"]
    output_dir = tmp_path / "out"
    trainer = Trainer(
        model=tiny_bert(),
        args=training_args(str(output_dir), 6, save_strategy="steps", save_steps=2, eval_strategy="no"),
        train_dataset=ToyDataset(64, seed=1),
    )
    trainer.train()  # the Trainer's own checkpoints, without the callback
    callback = PersistCallback(MODEL_NAME, mp.PersistConfig(tracking_uri=sqlite_uri, monitor="eval_loss"))
    again = Trainer(
        model=tiny_bert(),
        args=training_args(str(output_dir), 8, eval_strategy="no"),
        train_dataset=ToyDataset(64, seed=1),
        callbacks=[callback],
    )
    with pytest.raises(mp.ConfigError, match="resume_checkpoint\\(\\) did not write"):
        again.train(resume_from_checkpoint=str(output_dir / "checkpoint-6"))
    assert registry(sqlite_uri, MODEL_NAME)["versions"] == before  # no final checkpoint of the mixed state


def test_export_hf_writes_a_folder_from_pretrained_loads(
    tmp_path: Path, sqlite_uri: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import BertForSequenceClassification

    from mlflow_persist.cli.main import main

    config = mp.PersistConfig(tracking_uri=sqlite_uri, monitor="loss", log_system_metrics=False)  # no evaluation
    callback = PersistCallback(MODEL_NAME, config, persistence_kwargs={"install_signal_handlers": False})
    trainer = Trainer(
        model=tiny_bert(),
        args=training_args(str(tmp_path / "out"), 3, eval_strategy="no"),
        train_dataset=ToyDataset(64, 1),
        callbacks=[callback],
    )
    trainer.train()
    trained = {key: value.detach().clone() for key, value in trainer.model.state_dict().items()}
    folder = tmp_path / "exported"
    with pytest.raises(SystemExit) as exit_info:
        main(["export", MODEL_NAME, "--alias", "latest", "--format", "hf", "--out", str(folder), "--tracking-uri", sqlite_uri])  # fmt: skip
    assert exit_info.value.code in (0, None), capsys.readouterr().err
    loaded = BertForSequenceClassification.from_pretrained(folder)  # transformers' own loader, nothing of ours
    assert loaded.config.hidden_size == 32 and loaded.config.num_labels == 2
    state = loaded.state_dict()
    assert set(state) == set(trained)
    for key, value in trained.items():
        assert torch.equal(state[key], value), key


def _by_rank(output: str, marker: str) -> dict[int, dict[str, Any]]:
    return {int(record.pop("rank")): record for record in lines_with(output, marker)}


def _torchrun(tmp_path: Path, uri: str, max_steps: str, *options: str) -> str:
    """The trainer script on 2 CPU processes under torchrun (gloo); its stdout."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(SCRIPT)]
    result = subprocess.run(
        [*command, uri, str(tmp_path / "d.jsonl"), "--max-steps", max_steps, *options],
        cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_under_ddp_the_trainers_own_resume_ends_bit_for_bit_where_an_uninterrupted_run_ends(
    tmp_path: Path, sqlite_uri: str
) -> None:
    """The Trainer seeds every rank alike (`set_seed`), and under DDP it reads each rank's random state from
    `rng_state_<rank>.pth`: resume_checkpoint()'s folder holds one per rank (rank 0's saved state, which every
    rank shared), so BERT's dropout draws after the resume what an uninterrupted 2-rank run draws."""
    plain_dir = tmp_path / "plain"
    plain_dir.mkdir()
    plain = _torchrun(plain_dir, f"sqlite:///{plain_dir}/mlflow.db", "10", "--plain")
    _torchrun(tmp_path, sqlite_uri, "10", "--stop-at-step", "6")  # the learning-rate schedule spans 10 steps
    native = _torchrun(tmp_path, sqlite_uri, "10", "--native")
    expected, done = _by_rank(plain, "DONE"), _by_rank(native, "DONE")
    assert done[0]["global_step"] == expected[0]["global_step"] == 10
    for rank in (0, 1):
        assert done[rank]["weights"] == expected[rank]["weights"], rank
        assert done[rank]["optimizer"] == expected[rank]["optimizer"], rank


def test_under_ddp_every_rank_resumes_the_same_state_and_trainer_state(tmp_path: Path, sqlite_uri: str) -> None:
    """Two CPU processes under torchrun (gloo): rank 0 saves, and a plain train() restores on both ranks the
    same weights, optimizer state, global_step and TrainerState (the log records of the first run); then the
    Trainer's own resume from resume_checkpoint()'s folder does too."""

    def torchrun(max_steps: str, *options: str) -> str:
        return _torchrun(tmp_path, sqlite_uri, max_steps, *options)

    torchrun("6")
    resumed = torchrun("10")
    restored = _by_rank(resumed, "RESTORED")
    assert {rank: (r["step"], r["global_step"]) for rank, r in restored.items()} == {0: (6, 6), 1: (6, 6)}
    assert restored[0]["digest"] == restored[1]["digest"]
    done = _by_rank(resumed, "DONE")
    assert set(done) == {0, 1} and done[0]["global_step"] == 10
    for key in ("weights", "optimizer", "log_steps"):
        assert done[0][key] == done[1][key], key
    assert done[1]["log_steps"] == [2, 4, 6, 8, 10]
    assert len(registry(sqlite_uri, MODEL_NAME)["runs"]) == 1

    # the Trainer's own resume: resume_checkpoint() is collective, rank 0 writes the folder every rank loads
    native = torchrun("14", "--native")
    done_native = _by_rank(native, "DONE")
    assert set(done_native) == {0, 1} and done_native[0]["global_step"] == done_native[1]["global_step"] == 14
    for key in ("weights", "optimizer", "log_steps"):
        assert done_native[0][key] == done_native[1][key], key
    assert done_native[1]["log_steps"] == [2, 4, 6, 8, 10, 12, 14]  # TrainerState came back from the folder
    assert len(registry(sqlite_uri, MODEL_NAME)["runs"]) == 1


def test_resume_checkpoint_of_a_checkpoint_without_trainer_state_says_what_to_do_and_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    store = MemoryStore()
    config = mp.PersistConfig(monitor="loss", log_system_metrics=False, min_free_disk_mb=0, min_free_disk_percent=0)
    with mp.Persistence(config, store=store, install_signal_handlers=False) as persist:  # as an older release saved
        persist.track(MODEL_NAME, tiny_bert()).step(step=3, loss=1.0)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    callback = PersistCallback(MODEL_NAME, config, store=store, persistence_kwargs={"install_signal_handlers": False})
    with pytest.raises(mp.PersistError, match="holds no TrainerState .* call trainer.train\\(\\) without"):
        callback.resume_checkpoint()
    assert list(tmp_path.iterdir()) == []
    callback.close(final_checkpoints=False)
