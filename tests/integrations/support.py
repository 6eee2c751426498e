"""Shared by the framework tests: a digest of a trainer's state that the trainer records itself, a
subprocess that is SIGKILLed at a chosen moment, and reading what a run left in the store.

The trainer scripts run as children of a zygote (tests/zygote.py) that imported the framework already
(lightning alone takes 7 s to import here): `framework_zygote(zygotes, "lightning")` in a module's fixture."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from zygote import Zygote

# What each framework's zygote imports on top of the base set (tests/conftest.py).
FRAMEWORK_MODULES = {
    "lightning": ("lightning.pytorch",),
    "transformers": (
        "transformers",
        "transformers.trainer",
        "transformers.models.bert.modeling_bert",
        "transformers.models.gpt2.modeling_gpt2",
        "accelerate",
    ),
    "sb3": ("gymnasium", "stable_baselines3"),
}


def _walk(value: Any, out: hashlib._Hash) -> None:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        out.update(str((tuple(tensor.shape), str(tensor.dtype))).encode())
        out.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            out.update(str(key).encode())
            _walk(value[key], out)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _walk(item, out)
    else:
        out.update(repr(value).encode())


def state_digest(*states: Any) -> str:
    """sha256 over state dicts (tensors by their bytes, everything else by repr), in the order given."""
    digest = hashlib.sha256()
    for state in states:
        _walk(state, digest)
    return digest.hexdigest()


class DigestLog:
    """An append-only file of `{"step": s, "digest": d, ...}` lines, fsynced, written by the trainer."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def append(self, **record: Any) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def records(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def digest_at(self, step: int) -> str:
        matches = [r["digest"] for r in self.records() if r.get("event") == "saved" and r["step"] == step]
        assert matches, f"the trainer recorded no save at step {step}"
        assert len(set(matches)) == 1, f"different states were recorded for step {step}"
        return matches[0]


def keep_everything_config(uri: str, monitor: str = "loss", periodic_every_steps: int = 4, **fields: Any) -> Any:
    """The trainer scripts' configuration: every version kept (the tests read the whole history), no system
    metrics, no disk floor."""
    import mlflow_persist as mp

    return mp.PersistConfig(
        tracking_uri=uri,
        monitor=monitor,
        periodic_every_steps=periodic_every_steps,
        **{
            "mode": "min",
            "keep_best": 100,
            "keep_periodic": 100,
            "keep_final": 100,
            "log_system_metrics": False,
            "min_free_disk_mb": 0,
            "min_free_disk_percent": 0,
            **fields,
        },
    )


def emit(marker: str, record: dict[str, Any]) -> None:
    """Print `MARKER {json}` as one line in one write: processes that share stdout (the ranks of a
    distributed run) never interleave a write under PIPE_BUF."""
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), f"{marker} {json.dumps(record)}\n".encode())


def env() -> dict[str, str]:
    values = {
        **os.environ,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
    }
    values.pop("MLFLOW_TRACKING_URI", None)
    return values


def run(script: Path, *args: str, cwd: Path, zygote: Zygote, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    result = zygote.run(
        [sys.executable, str(script), *args], cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{script.name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    return result


def _start_and_wait(
    script: Path, args: tuple[str, ...], cwd: Path, when: str, timeout: float, zygote: Zygote
) -> tuple[subprocess.Popen[str], list[str], threading.Thread, float]:
    """Start `script` and wait for a stdout line containing `when`; returns the process, its lines so far
    (still growing), the reader thread and the deadline."""
    proc = zygote.popen(
        [sys.executable, str(script), *args],
        cwd=cwd,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    deadline = time.monotonic() + timeout
    while not any(when in line for line in list(lines)):
        assert proc.poll() is None, f"{script.name} ended before {when!r}:\n{''.join(lines)[-5000:]}"
        assert time.monotonic() < deadline, f"{when!r} never appeared"
        time.sleep(0.02)
    return proc, lines, reader, deadline


def run_and_kill(
    script: Path,
    *args: str,
    cwd: Path,
    when: str,
    zygote: Zygote,
    delay: float = 0.0,
    timeout: float = 600,
    until: Callable[[], bool] | None = None,
) -> str:
    """Start `script`, wait for a stdout line containing `when`, wait `delay` s more (and, with `until`, until it
    holds: a loaded machine can take seconds to register a save), SIGKILL it."""
    proc, lines, reader, _ = _start_and_wait(script, args, cwd, when, timeout, zygote)
    time.sleep(delay)
    deadline = time.monotonic() + 120
    while until is not None and not until():
        assert time.monotonic() < deadline and proc.poll() is None, "the condition to kill at never held"
        time.sleep(0.1)
    assert proc.poll() is None, f"{script.name} ended before the kill:\n{''.join(lines)[-5000:]}"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    reader.join(timeout=10)
    return "".join(lines)


def registry(uri: str, name: str) -> dict[str, Any]:
    """The versions (tags), `best` and the runs of one model, read with MLflow's own client."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    versions = {int(v.version): dict(v.tags) for v in client.search_model_versions(f"name='{name}'")}
    model = client.get_registered_model(name)
    experiment = client.get_experiment_by_name("mlflow-persist")
    runs = [
        r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("mlflow_persist.run_key") == name
    ]
    return {"versions": versions, "aliases": dict(model.aliases), "runs": runs, "client": client}


def metric_steps(uri: str, run_id: str, key: str) -> list[int]:
    import mlflow

    return [m.step for m in mlflow.MlflowClient(uri).get_metric_history(run_id, key)]


def lines_with(text: str, marker: str) -> Iterable[dict[str, Any]]:
    """The JSON payloads of stdout records `MARKER {...}` a trainer script printed (`emit`: one write, to the end
    of its line). Found anywhere in a line: processes that share stdout (torchrun's ranks) write other text in
    several writes (the Trainer's prints on rank 0), so a record of another rank can land inside such a line."""
    start = marker + " {"
    for line in text.splitlines():
        at = line.find(start)
        if at >= 0:
            yield json.loads(line[at + len(marker) + 1 :])


def run_and_signal(
    script: Path,
    *args: str,
    cwd: Path,
    when: str,
    zygote: Zygote,
    signum: int = signal.SIGTERM,
    timeout: float = 600,
) -> tuple[int, str]:
    """Start `script`, send `signum` once a stdout line contains `when`, let it exit on its own; returns its
    exit code and output."""
    proc, lines, reader, deadline = _start_and_wait(script, args, cwd, when, timeout, zygote)
    proc.send_signal(signum)
    code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    reader.join(timeout=10)
    return code, "".join(lines)


def framework_zygote(zygotes: Any, framework: str) -> Zygote:
    """The session's zygote (tests/conftest.py `zygotes`) that has `framework` imported."""
    return zygotes.get(*FRAMEWORK_MODULES[framework])
