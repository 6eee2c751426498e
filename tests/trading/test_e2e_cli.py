"""End to end through the real `mlflow-persist run` CLI in subprocesses, on a temp-dir sqlite store.

The CLI processes are forked from a pre-imported Python (tests/zygote.py)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from zygote import Zygote

MODELS = ("dqn", "cnn", "cob_rl", "extrema")
CLI = [sys.executable, "-c", "from mlflow_persist.cli.main import main; main()"]
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("MLFLOW_PERSIST_WORKER_PROCESS", None)  # what a user runs: the default, with the worker process
    return env


def _run(zygote: Zygote, workdir: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    uri = f"sqlite:///{workdir}/mlflow.db"
    return zygote.run(
        [*CLI, "run", "--tracking-uri", uri, *args],
        cwd=workdir,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class Background:
    """A `run` subprocess whose stderr is read on a thread, so the test can wait for progress lines."""

    def __init__(self, zygote: Zygote, workdir: Path, *args: str) -> None:
        uri = f"sqlite:///{workdir}/mlflow.db"
        self.proc = zygote.popen(
            [*CLI, "run", "--tracking-uri", uri, *args],
            cwd=workdir,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.lines):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"{text!r} never appeared; stderr:\n{''.join(self.lines)}")

    def finish(self, timeout: float = 600) -> tuple[int, str]:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code, "".join(self.lines)


def _client(workdir: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{workdir}/mlflow.db")


def _summary(workdir: Path) -> dict[str, dict]:
    client = _client(workdir)
    out: dict[str, dict] = {}
    for name in MODELS:
        model = client.get_registered_model(name)
        versions = client.search_model_versions(f"name='{name}'")
        out[name] = {
            "aliases": dict(model.aliases),
            "categories": sorted({v.tags.get("mlflow_persist.category") for v in versions}),
            "versions": {int(v.version): v.tags for v in versions},
        }
    experiment = client.get_experiment_by_name("mlflow-persist")
    runs = client.search_runs([experiment.experiment_id])
    out["_runs"] = {
        r.data.tags.get("mlflow_persist.run_key"): r.info.run_id
        for r in runs
        if r.data.tags.get("mlflow_persist.run_key") in MODELS
    }
    out["_run_count"] = {
        key: sum(1 for r in runs if r.data.tags.get("mlflow_persist.run_key") == key) for key in MODELS
    }
    out["_max_step"] = {
        key: max(m.step for m in client.get_metric_history(run_id, "loss")) for key, run_id in out["_runs"].items()
    }
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, zygote: Zygote) -> Path:
    workdir = tmp_path_factory.mktemp("trading-e2e")
    run = Background(zygote, workdir, "--steps", "500", "--seed", "1")
    code, stderr = run.finish(timeout=900)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    # every system checkpoint of the run completed (a cut whose members retention deleted while it waited for
    # the episodes to be stored never could, nor could any after it)
    assert "will not be restored" not in stderr and "could not record its completion" not in stderr, stderr
    assert run.proc.maxrss_kb is not None  # type: ignore[attr-defined]
    peak_mb = run.proc.maxrss_kb / 1024  # type: ignore[attr-defined]  # the process's own peak (wait4)
    print(f"peak RSS of `run --steps 500`: {peak_mb:.0f} MiB")
    assert peak_mb < 1536
    return workdir


def test_run_500_registers_all_models_with_best_and_both_categories(store: Path) -> None:
    summary = _summary(store)
    for name in MODELS:
        assert "best" in summary[name]["aliases"], name
        assert {"performance", "periodic"} <= set(summary[name]["categories"]), summary[name]["categories"]
        assert summary["_run_count"][name] == 1
        assert summary["_max_step"][name] >= 490
    from mlflow_persist import load_checkpoint

    for name in MODELS:
        latest = load_checkpoint(f"models:/{name}/latest", tracking_uri=f"sqlite:///{store}/mlflow.db")
        best = load_checkpoint(f"models:/{name}@best", tracking_uri=f"sqlite:///{store}/mlflow.db")
        assert latest.step >= best.step
    dqn = load_checkpoint("models:/dqn/latest", tracking_uri=f"sqlite:///{store}/mlflow.db")
    assert {"epsilon", "updates", "target"} <= set(dqn.extra_state)


def test_restart_restores_saved_weights_and_continues_the_runs(store: Path, zygote: Zygote) -> None:
    from mlflow_persist import PersistConfig, Persistence, load_checkpoint
    from mlflow_persist.trading.system import EnhancedRealtimeTrainingSystem

    uri = f"sqlite:///{store}/mlflow.db"
    before = _summary(store)
    saved = {name: load_checkpoint(f"models:/{name}/latest", tracking_uri=uri) for name in MODELS}
    with Persistence(PersistConfig(tracking_uri=uri), install_signal_handlers=False) as persistence:
        system = EnhancedRealtimeTrainingSystem(persistence, seed=1)
        system.start()
        for name in MODELS:
            live = system.models[name].state_dict()
            for key, value in saved[name].model_state.items():
                assert torch.equal(live[key], value), (name, key)
            # The first decisions use the weights that served when the final cut was taken: a registered version's.
            serving = system.orchestrator.serving[name]
            assert serving.version is not None
            registered = load_checkpoint(f"models:/{name}/{serving.version}", tracking_uri=uri).model_state
            assert all(torch.equal(registered[k], v) for k, v in serving.module.state_dict().items()), name
        assert system.trainers["dqn"].epsilon == saved["dqn"].extra_state["epsilon"]
        system.run(steps=20)
    result = _run(zygote, store, "--steps", "40", "--seed", "1")
    assert result.returncode == 0, result.stderr
    after = _summary(store)
    assert after["_runs"] == before["_runs"]
    for name in MODELS:
        assert after["_run_count"][name] == 1
        assert after["_max_step"][name] >= before["_max_step"][name] + 50


@pytest.mark.soak
def test_sigkill_at_a_random_moment_then_resume(
    store: Path, zygote: Zygote, soak_count: Callable[[str, int], int]
) -> None:
    for _ in range(soak_count("MLFLOW_PERSIST_CLI_KILL_TRIALS", 1)):
        _sigkill_at_a_random_moment_then_resume(store, zygote)


def _sigkill_at_a_random_moment_then_resume(store: Path, zygote: Zygote) -> None:
    before = _summary(store)
    run = Background(zygote, store, "--minutes", "10", "--seed", "1")
    run.wait_for("complete: cnn")  # a system checkpoint of this run is complete
    time.sleep(random.uniform(0.0, 4.0))
    run.proc.send_signal(signal.SIGKILL)
    run.finish()
    killed = _summary(store)
    cut_steps = {name: _newest_complete_cut_step(killed, name) for name in MODELS}
    result = _run(zygote, store, "--steps", "30", "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    after = _summary(store)
    assert after["_runs"] == before["_runs"]
    for name in MODELS:
        # The store's newest complete cut never goes back. (Not the loss history's newest step: that keeps
        # the steps an earlier killed run logged past the cut it was later resumed from.)
        assert cut_steps[name] >= _newest_complete_cut_step(before, name), name
        new = [
            int(t["mlflow_persist.step"])
            for v, t in after[name]["versions"].items()
            if v not in killed[name]["versions"]
        ]
        # resumed from the newest complete system checkpoint the kill left: the step axis goes on from there
        assert max(new) == cut_steps[name] + 30, (name, cut_steps[name], new)


def _newest_complete_cut_step(summary: dict[str, dict], name: str) -> int:
    marked = [t for t in summary[name]["versions"].values() if t.get("mlflow_persist.cut_complete") == "true"]
    return max(int(t["mlflow_persist.step"]) for t in marked)


def test_sigterm_saves_final_checkpoints_and_exits_zero(store: Path, zygote: Zygote) -> None:
    before = _summary(store)
    run = Background(zygote, store, "--minutes", "10", "--seed", "1")
    run.wait_for("complete: cnn")  # a system checkpoint of this run is complete
    run.proc.send_signal(signal.SIGTERM)
    code, stderr = run.finish()
    assert code == 0, stderr
    assert "Traceback" not in stderr, stderr
    after = _summary(store)
    for name in MODELS:
        new = {v: tags for v, tags in after[name]["versions"].items() if v not in before[name]["versions"]}
        finals = [tags for tags in new.values() if tags.get("mlflow_persist.category") == "final"]
        assert finals, (name, new)
        # The final checkpoint is where this run stopped: the newest of its versions, past where it started.
        # (Not the loss history's newest step: it keeps what an earlier killed run logged past its last cut.)
        final_step = max(int(t["mlflow_persist.step"]) for t in finals)
        assert final_step == max(int(t["mlflow_persist.step"]) for t in new.values()), (name, new)
        assert final_step > _newest_complete_cut_step(before, name), name
