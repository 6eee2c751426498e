"""Lightning: real fits of a BoringModel-style module with PersistCallback, killed with SIGKILL and resumed.

Every expectation is the trainer's own record (its digests of the state at each save, the monitor values it
reported), never what mlflow-persist says about itself.
"""

from __future__ import annotations

import importlib.util
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

    killed = run_and_kill(SCRIPT, uri, str(log.path), "1000", cwd=tmp_path, zygote=framework, when="STEP 63", delay=0.3)
    restarted_from = next(lines_with(killed, "RESTORED"))
    assert restarted_from["step"] == 40 and restarted_from["digest"] == log.digest_at(40)

    after_kill = registry(uri, "boring")
    newest = max(after_kill["versions"])
    newest_step = int(after_kill["versions"][newest]["mlflow_persist.step"])
    assert newest_step > 40  # the killed fit saved checkpoints of its own before the kill
    resumed = run(SCRIPT, uri, str(log.path), "5", cwd=tmp_path, zygote=framework)
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
    first = run(script, "--tracking-uri", uri, "--steps", "20", cwd=tmp_path, zygote=framework)
    assert "started fresh - trained 20 steps; the model's step is now 20" in first.stdout  # what its user reads
    saved = registry(uri, EXAMPLE_MODEL)
    assert _final_steps(saved["versions"]) == [20] and max(_steps(saved["versions"])) == 20
    newest = max(saved["versions"])
    assert len(saved["runs"]) == 1
    first_losses = metric_steps(uri, saved["runs"][0].info.run_id, "train_loss")
    assert first_losses and max(first_losses) <= 20

    second = run(script, "--tracking-uri", uri, "--steps", "20", cwd=tmp_path, zygote=framework)
    assert f"resumed from step 20 (v{newest})" in second.stdout and "the model's step is now 40" in second.stdout
    # The registry says the same: the second fit saved only steps after 20, its final at 40, in the same run,
    # whose loss curve goes on from step 20 instead of starting over.
    resumed = registry(uri, EXAMPLE_MODEL)
    added = {v: tags for v, tags in resumed["versions"].items() if v not in saved["versions"]}
    assert added and min(_steps(added)) > 20, added
    assert _final_steps(added) == [40]
    assert len(resumed["runs"]) == 1 and resumed["runs"][0].info.run_id == saved["runs"][0].info.run_id
    logged = Counter(metric_steps(uri, resumed["runs"][0].info.run_id, "train_loss")) - Counter(first_losses)
    assert logged and min(logged) > 20 and max(logged) <= 40, sorted(logged)


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
