"""The drop-in CheckpointManager: a script written against the old API runs unchanged."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from zygote import Zygote

from mlflow_persist._store.mlflow_store import MlflowStore, tag
from mlflow_persist.legacy import CheckpointManager

OLD_SCRIPT = textwrap.dedent("""
    import torch
    from torch import nn
    from utils.checkpoint_manager import CheckpointManager, save_checkpoint, load_best_checkpoint

    torch.manual_seed(0)
    manager = CheckpointManager(base_dir="NN/models/saved", max_checkpoints_per_model=2)
    model = nn.Linear(4, 2)
    for epoch, acc in enumerate([0.5, 0.7, 0.6, 0.4]):
        with torch.no_grad():
            model.weight.add_(0.1)
        meta = manager.save_checkpoint(model, "cnn", "cnn", {"accuracy": acc, "loss": 1 - acc},
                                       training_metadata={"epoch": epoch})
        print("saved" if meta else "skipped", epoch, meta.checkpoint_id if meta else "")
    forced = manager.save_checkpoint(model, "cnn", "cnn", {"accuracy": 0.1}, force_save=True)
    assert forced is not None
    path, metadata = manager.load_best_checkpoint("cnn")
    checkpoint = torch.load(path)
    fresh = nn.Linear(4, 2)
    fresh.load_state_dict(checkpoint["model_state_dict"])
    print("best", metadata.checkpoint_id, metadata.performance_score, metadata.accuracy, checkpoint["epoch"])
    stats = manager.get_checkpoint_stats()
    print("stats", stats["total_checkpoints"], stats["models"]["cnn"]["checkpoint_count"])
    assert load_best_checkpoint("missing_model") is None
""")


@pytest.mark.slow
def test_old_script_runs_unchanged(tmp_path: Path, sqlite_uri: str, subprocess_env: dict, zygote: Zygote) -> None:
    shim = tmp_path / "utils"
    shim.mkdir()
    (shim / "__init__.py").write_text("")
    (shim / "checkpoint_manager.py").write_text(
        "from mlflow_persist.legacy.manager import *  # noqa\n"
        "from mlflow_persist.legacy.manager import CheckpointManager, "
        "save_checkpoint, load_best_checkpoint\n"
    )
    (tmp_path / "old_script.py").write_text(OLD_SCRIPT)
    env = dict(subprocess_env, MLFLOW_TRACKING_URI=sqlite_uri)
    out = zygote.run(  # a child of a pre-imported Python (tests/zygote.py)
        [sys.executable, "old_script.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines[:4]] == ["saved", "saved", "saved", "skipped"]
    best_line = next(line for line in lines if line.startswith("best"))
    assert best_line.split()[2:] == ["79.7", "0.7", "1"], best_line  # 100*0.7 + (10 - 0.3), epoch 1
    store = MlflowStore(sqlite_uri)
    versions = store.list_versions("cnn")
    assert all(v.category == "legacy" and v.monitor == "performance_score" for v in versions)
    assert float(store.alias_version("cnn").tags[tag("value")]) == 79.7
    # rotation keeps max_checkpoints_per_model scored versions plus the forced newest one
    assert len(versions) <= 3
    assert not (tmp_path / "NN").exists()  # nothing written to the old base_dir


def test_dqn_agent_roundtrip(sqlite_uri: str, tmp_path: Path) -> None:
    from mlruns_fixtures.legacy_models import TinyDQNAgent

    agent = TinyDQNAgent(3)
    manager = CheckpointManager(tracking_uri=sqlite_uri, cache_dir=tmp_path / "cache")
    meta = manager.save_checkpoint(agent, "dqn", "rl", {"reward": 5.0, "pnl": 1.0})
    assert meta is not None and meta.performance_score == 6.0
    path, loaded_meta = manager.load_best_checkpoint("dqn")
    raw = torch.load(path, weights_only=True)
    for key, value in agent.policy_net.state_dict().items():
        assert torch.equal(raw["policy_net"][key], value)
    assert raw["epsilon"] == agent.epsilon and loaded_meta.reward == 5.0
