"""Lightning: real fits of a BoringModel-style module with PersistCallback, killed with SIGKILL and resumed.

Every expectation is the trainer's own record (its digests of the state at each save, the monitor values it
reported), never what mlflow-persist says about itself.
"""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

if importlib.util.find_spec("lightning") is None:  # not imported here (4 s): only the trainer processes use it
    pytest.skip("could not import 'lightning': not installed", allow_module_level=True)

from zygote import Zygote, Zygotes  # noqa: E402

from .support import (  # noqa: E402
    DigestLog,
    env,
    framework_zygote,
    lines_with,
    metric_steps,
    registry,
    run,
    run_and_kill,
)

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).with_name("lightning_proc.py")


@pytest.fixture(scope="module")
def framework(zygotes: Zygotes) -> Zygote:
    """A pre-imported Python with lightning imported, to fork the trainer scripts from."""
    return framework_zygote(zygotes, "lightning")


def test_lightning_fit_registers_checkpoints_keeps_one_run_and_resumes_after_sigkill(
    tmp_path: Path, framework: Zygote
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    log = DigestLog(tmp_path / "digests.jsonl")
    first = run(SCRIPT, uri, str(log.path), "40", cwd=tmp_path, zygote=framework)
    assert [r["step"] for r in lines_with(first.stdout, "RESTORED")] == [None]
    saved = registry(uri, "boring")
    categories = {t["mlflow_persist.category"] for t in saved["versions"].values()}
    assert {"performance", "periodic", "final"} <= categories
    monitors = [r["value"] for r in log.records() if r["event"] == "monitor"]
    assert len(monitors) == 5  # one validation every 8 batches
    best = saved["versions"][int(saved["aliases"]["best"])]
    assert float(best["mlflow_persist.value"]) == min(monitors)

    def registered_after_40() -> bool:
        return max(int(tags["mlflow_persist.step"]) for tags in registry(uri, "boring")["versions"].values()) > 40

    killed = run_and_kill(
        SCRIPT, uri, str(log.path), "1000", cwd=tmp_path, zygote=framework, when="STEP 63", delay=0.3,
        until=registered_after_40,
    )  # fmt: skip
    restarted_from = next(lines_with(killed, "RESTORED"))
    assert restarted_from["step"] == 40 and restarted_from["digest"] == log.digest_at(40)

    after_kill = registry(uri, "boring")
    newest = max(after_kill["versions"])
    newest_step = int(after_kill["versions"][newest]["mlflow_persist.step"])
    assert newest_step > 40  # the killed fit saved checkpoints of its own before the kill
    resumed = run(SCRIPT, uri, str(log.path), str(newest_step + 5), cwd=tmp_path, zygote=framework)
    info = next(lines_with(resumed.stdout, "RESTORED"))
    assert info["version"] == newest and info["step"] == newest_step
    assert info["digest"] == log.digest_at(newest_step)  # weights, optimizer and scheduler as they were saved

    final = registry(uri, "boring")
    assert len(final["runs"]) == 1 and info["run_id"] == final["runs"][0].info.run_id
    steps = metric_steps(uri, final["runs"][0].info.run_id, "train_loss")
    assert steps == sorted(steps) and max(steps) == newest_step + 5  # the step axis continued


def test_the_lightning_example_runs_and_resumes(tmp_path: Path, framework: Zygote) -> None:
    script = Path(__file__).resolve().parents[2] / "scripts" / "examples" / "lightning_example.py"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    first = run(script, "--tracking-uri", uri, "--max-steps", "20", cwd=tmp_path, zygote=framework)
    assert "started fresh - trained to global_step 20 (max_steps=20" in first.stdout  # what its user reads
    saved = registry(uri, EXAMPLE_MODEL)
    assert _final_steps(saved["versions"]) == [20] and max(_steps(saved["versions"])) == 20
    newest = max(saved["versions"])
    assert len(saved["runs"]) == 1
    first_losses = metric_steps(uri, saved["runs"][0].info.run_id, "train_loss")
    assert first_losses and max(first_losses) <= 20

    second = run(script, "--tracking-uri", uri, "--max-steps", "40", cwd=tmp_path, zygote=framework)
    assert f"resumed from step 20 (v{newest}) - trained to global_step 40 (max_steps=40" in second.stdout
    # The registry says the same: the second fit saved only steps after 20, its final at 40, in the same run,
    # whose loss curve goes on from step 20 instead of starting over.
    resumed = registry(uri, EXAMPLE_MODEL)
    added = {v: tags for v, tags in resumed["versions"].items() if v not in saved["versions"]}
    assert added and min(_steps(added)) > 20, added
    assert _final_steps(added) == [40]
    assert len(resumed["runs"]) == 1 and resumed["runs"][0].info.run_id == saved["runs"][0].info.run_id
    logged = Counter(metric_steps(uri, resumed["runs"][0].info.run_id, "train_loss")) - Counter(first_losses)
    assert logged and min(logged) > 20 and max(logged) <= 40, sorted(logged)


def _runs(uri: str) -> dict[str, object]:
    """Every run of the store, in every experiment, by id."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    return {r.info.run_id: r for r in client.search_runs(experiments)}


def _version_runs(uri: str, name: str) -> dict[int, str]:
    """The run of each version of model `name`."""
    import mlflow

    return {int(v.version): v.run_id for v in mlflow.MlflowClient(uri).search_model_versions(f"name='{name}'")}


def test_with_an_mlflow_logger_of_the_store_the_checkpoints_go_to_its_run_and_a_new_launch_resumes(
    tmp_path: Path, framework: Zygote
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    logger = "--logger-uri=sqlite:///mlflow.db"  # the same store, spelled relative to the working directory
    log = DigestLog(tmp_path / "digests.jsonl")
    first = run(SCRIPT, uri, str(log.path), "16", logger, cwd=tmp_path, zygote=framework)
    first_run = next(lines_with(first.stdout, "LOGGER"))["run_id"]
    versions = _version_runs(uri, "boring")
    assert versions and set(versions.values()) == {first_run}
    assert set(_runs(uri)) == {first_run}  # the logger's run is the model's: no run of its own was made
    run_data = _runs(uri)[first_run].data  # type: ignore[attr-defined]
    assert {"train_loss", "val_loss", "checkpoint/version"} <= set(run_data.metrics)
    assert run_data.tags["mlflow_persist.registered_model"] == "boring"
    for key in ("train_loss", "val_loss"):  # the logger logs them; the callback, sharing its run, does not again
        steps = metric_steps(uri, first_run, key)
        assert steps and len(steps) == len(set(steps)), (key, steps)

    second = run(SCRIPT, uri, str(log.path), "24", logger, cwd=tmp_path, zygote=framework)
    second_run = next(lines_with(second.stdout, "LOGGER"))["run_id"]
    info = next(lines_with(second.stdout, "RESTORED"))
    assert second_run != first_run  # the logger made a new run for the new launch
    assert info["version"] == max(versions) and info["step"] == 16 and info["digest"] == log.digest_at(16)
    added = {v: r for v, r in _version_runs(uri, "boring").items() if v not in versions}
    assert added and set(added.values()) == {second_run}
    assert set(_runs(uri)) == {first_run, second_run}


def test_with_an_mlflow_logger_of_another_store_the_model_keeps_its_own_run_and_says_why(
    tmp_path: Path, framework: Zygote
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    logger_uri = f"sqlite:///{tmp_path}/logger.db"
    result = run(
        SCRIPT, uri, str(tmp_path / "d.jsonl"), "8", f"--logger-uri={logger_uri}", cwd=tmp_path, zygote=framework
    )
    own = registry(uri, "boring")["runs"]
    assert len(own) == 1 and set(_version_runs(uri, "boring").values()) == {own[0].info.run_id}
    assert next(lines_with(result.stdout, "LOGGER"))["run_id"] in _runs(logger_uri)
    warning = f"boring: the MLFlowLogger logs to {logger_uri}, not to the checkpoint store {uri}"
    assert warning in result.stderr, result.stderr[-3000:]


EXAMPLE_MODEL = "lightning-example"  # the registered model scripts/examples/lightning_example.py saves


def _steps(versions: dict[int, dict[str, str]]) -> list[int]:
    return [int(tags["mlflow_persist.step"]) for tags in versions.values()]


def _final_steps(versions: dict[int, dict[str, str]]) -> list[int]:
    return sorted(int(t["mlflow_persist.step"]) for t in versions.values() if t["mlflow_persist.category"] == "final")


def _run_failing(framework: Zygote, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the trainer script with `args`; it must fail before it finishes its fit."""
    result = framework.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, env=env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode != 0 and "DONE" not in result.stdout, result.stdout[-2000:]
    return result


def test_a_monitor_the_module_never_logs_fails_fit_at_the_first_validation_naming_what_is_logged(
    tmp_path: Path, framework: Zygote
) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    log = DigestLog(tmp_path / "digests.jsonl")
    result = _run_failing(framework, tmp_path, uri, str(log.path), "40", "val_los")  # misspelled
    assert "the monitor 'val_los' is not among the metrics the LightningModule logs (train_loss, val_loss)" in (
        result.stderr
    ), result.stderr[-3000:]
    steps = [int(line.split()[1]) for line in result.stdout.splitlines() if line.startswith("STEP ")]
    assert max(steps) == 8  # at once: at the first validation (every 8 batches), not at the end of fit
    categories = {t["mlflow_persist.category"] for t in registry(uri, "boring")["versions"].values()}
    assert "performance" not in categories  # nothing was ever ranked on the missing monitor


def test_fit_with_a_ckpt_path_fails_before_the_first_batch_when_the_callback_resumes_too(
    tmp_path: Path, framework: Zygote
) -> None:
    uri = f"sqlite:///{tmp_path}/fresh.db"
    log = DigestLog(tmp_path / "digests.jsonl")
    ckpt = str(tmp_path / "lightning.ckpt")
    # Into an empty store a Lightning checkpoint is simply where training starts: nothing to mix with.
    first = run(SCRIPT, uri, str(log.path), "16", "val_loss", ckpt, cwd=tmp_path, zygote=framework)
    assert "DONE" in first.stdout and [r["step"] for r in lines_with(first.stdout, "RESTORED")] == [None]
    before = registry(uri, "boring")["versions"]
    assert before

    second = _run_failing(framework, tmp_path, uri, str(log.path), "32", "val_loss", ckpt)
    assert "fit() was given ckpt_path=" in second.stderr and "PersistCallback resumed from v" in second.stderr, (
        second.stderr[-3000:]
    )
    assert not [line for line in second.stdout.splitlines() if line.startswith("STEP ")]  # before the first batch
    assert registry(uri, "boring")["versions"] == before  # and no checkpoint of the mixed-up state was taken


RESUME_SCRIPT = Path(__file__).with_name("lightning_resume_proc.py")


def _done(stdout: str) -> dict:
    records = list(lines_with(stdout, "DONE"))
    assert len(records) == 1, stdout[-3000:]
    return records[0]


def test_a_fit_killed_twice_at_random_points_resumes_to_the_uninterrupted_result(
    tmp_path: Path, framework: Zygote, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Optimizer steps with gradient accumulation (2 batches a step), checkpoints at the epoch ends: Lightning
    restarts a dataloader that is not resumable at its first batch, with its own resume as with this one, so
    a deterministic resume restarts at an epoch boundary. The oracle is the same fit run through without the
    callback; global_step, the epoch, the weights and the optimizer state must come out bit for bit the same."""
    max_steps, accumulate = 28, "2"
    monkeypatch.setenv("BATCH_SECONDS", "0.05")  # 0.1 s a step: a save registers before the kill points
    oracle = _done(
        run(RESUME_SCRIPT, "unused", str(max_steps), accumulate, "plain", cwd=tmp_path, zygote=framework).stdout
    )
    assert oracle["global_step"] == max_steps

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    rng = random.Random()
    seed = rng.randrange(1_000_000)
    rng.seed(seed)
    first_kill = rng.randrange(9, 13)
    print(f"kill points (seed {seed}): step {first_kill} of the first fit", flush=True)
    killed = run_and_kill(
        RESUME_SCRIPT, uri, str(max_steps), accumulate, cwd=tmp_path, zygote=framework, when=f"STEP {first_kill}"
    )
    assert [r["step"] for r in lines_with(killed, "RESTORED")] == [None]
    saved = registry(uri, "regressor")["versions"]
    assert saved, "the first fit saved nothing before the kill"
    restart_step = max(int(t["mlflow_persist.step"]) for t in saved.values())

    second_kill = rng.randrange(restart_step + 6, restart_step + 10)
    print(f"second kill at step {second_kill}", flush=True)
    killed = run_and_kill(
        RESUME_SCRIPT, uri, str(max_steps), accumulate, cwd=tmp_path, zygote=framework, when=f"STEP {second_kill}"
    )
    restored = next(lines_with(killed, "RESTORED"))
    # the trainer's own counter continues from the checkpoint, so max_steps is the total across restarts
    assert (restored["step"], restored["global_step"]) == (restart_step, restart_step), killed[-3000:]
    steps = [int(line.split()[1]) for line in killed.splitlines() if line.startswith("STEP ")]
    assert steps[0] == restart_step + 1, steps

    resumed = run(RESUME_SCRIPT, uri, str(max_steps), accumulate, cwd=tmp_path, zygote=framework)
    restored = next(lines_with(resumed.stdout, "RESTORED"))
    assert restored["step"] is not None and restored["step"] == restored["global_step"] > restart_step
    assert _done(resumed.stdout) == oracle


def test_max_steps_keeps_lightnings_own_meaning_across_restarts(tmp_path: Path, framework: Zygote) -> None:
    """The oracle is Lightning's own resume (`fit(ckpt_path=...)` from the checkpoint `save_checkpoint` wrote
    at the end of the previous fit): max_steps is the total, a fit at its max_steps ends at once, and a raised
    max_steps trains only the difference, to the same weights, epoch and optimizer state."""
    uri, own = f"sqlite:///{tmp_path}/mlflow.db", f"own:{tmp_path / 'own.ckpt'}"
    for max_steps in ("12", "12", "18"):
        ours = run(RESUME_SCRIPT, uri, max_steps, "1", cwd=tmp_path, zygote=framework).stdout
        lightning_own = run(RESUME_SCRIPT, "unused", max_steps, "1", own, cwd=tmp_path, zygote=framework).stdout
        assert _done(ours) == _done(lightning_own), (max_steps, ours[-2000:], lightning_own[-2000:])
        trained = [int(line.split()[1]) for line in ours.splitlines() if line.startswith("STEP ")]
        assert _done(ours)["global_step"] == int(max_steps) and (not trained or max(trained) == int(max_steps))


def _done_by_rank(stdout: str) -> dict[int, dict]:
    return {record.pop("rank"): record for record in lines_with(stdout, "DONE")}


def test_a_ddp_fit_resumes_on_every_rank_as_lightnings_own_ddp_resume_does(tmp_path: Path, framework: Zygote) -> None:
    """Two CPU processes (strategy "ddp", gloo): rank 0 saves, both ranks restore the same state and loop
    progress, and a fit resumed to max_steps=12 ends bit for bit where Lightning's own resume from its own
    checkpoint at step 8 ends, on both ranks."""
    uri, own = f"sqlite:///{tmp_path}/mlflow.db", f"own:{tmp_path / 'own.ckpt'}"
    for max_steps in ("8", "12"):
        ours = run(RESUME_SCRIPT, uri, max_steps, "1", "ddp", cwd=tmp_path, zygote=framework).stdout
        lightning_own = run(RESUME_SCRIPT, "unused", max_steps, "1", own, "ddp", cwd=tmp_path, zygote=framework).stdout
        restored = {record["rank"]: record for record in lines_with(ours, "RESTORED")}
        expected = 8 if max_steps == "12" else None
        assert {rank: (r["step"], r["global_step"]) for rank, r in restored.items()} == {
            0: (expected, expected or 0),
            1: (expected, expected or 0),
        }, ours[-3000:]
        done, oracle = _done_by_rank(ours), _done_by_rank(lightning_own)
        assert set(done) == set(oracle) == {0, 1}
        assert done[0] == done[1] == oracle[0] == oracle[1] and done[0]["global_step"] == int(max_steps)
    assert len(registry(uri, "regressor")["runs"]) == 1  # rank 0 alone opened the run, once
