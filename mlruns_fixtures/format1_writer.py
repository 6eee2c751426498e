"""Write an MLflow store whose checkpoints use format 1 (the committed fixture `mlruns_fixtures/format1_store`)."""

from __future__ import annotations

from pathlib import Path

import torch

from mlflow_persist.legacy.formats import FORMAT_1, format1_payload
from mlflow_persist._format.payload import CHECKPOINT_FILE, sha256_file
from mlflow_persist._store.mlflow_store import BEST_ALIAS, MlflowStore, tag

# (model, step, category, loss): cnn's best is step 20, dqn's best is step 5.
FORMAT1_VERSIONS = (
    ("cnn", 10, "performance", 0.5), ("cnn", 20, "performance", 0.3), ("cnn", 30, "periodic", 0.35),
    ("dqn", 5, "performance", 1.0), ("dqn", 8, "final", 1.2),
)


def _model(name: str, seed: int) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from mlruns_fixtures.legacy_models import TinyCNN, TinyQNet

    torch.manual_seed(seed)
    model = TinyCNN() if name == "cnn" else TinyQNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(2):
        optimizer.zero_grad()
        sum((p ** 2).sum() for p in model.parameters()).backward()
        optimizer.step()
    return model, optimizer


def write_format1_store(tracking_uri: str, artifact_dir: Path, experiment: str) -> None:
    """Create runs, format-1 checkpoint directories, versions and `best` aliases like format 1 did."""
    del artifact_dir  # MlflowStore puts artifacts next to the sqlite file (./mlruns)
    store = MlflowStore(tracking_uri, experiment)
    best: dict[str, tuple[float, int]] = {}
    for index, (name, step, category, loss) in enumerate(FORMAT1_VERSIONS):
        run_id = store.ensure_run(name, tags={tag("registered_model"): name})
        model, optimizer = _model(name, 100 + index)
        payload = format1_payload(model.state_dict(), optimizer.state_dict(), step, {"loss": loss})
        source, written = store.write_checkpoint(run_id, name, step, payload)
        store.log_metrics(run_id, [("loss", loss, 1_735_689_600_000 + index * 60_000, step)])
        info = store.register_version(name, source, run_id, {
            tag("category"): category, tag("step"): step, tag("monitor"): "loss", tag("value"): loss,
            tag("sha256"): sha256_file(written.directory / CHECKPOINT_FILE), tag("format_version"): FORMAT_1,
            tag("created_at"): f"2025-01-01T00:{index:02d}:00+00:00",
        })
        if category == "performance" and (name not in best or loss < best[name][0]):
            best[name] = (loss, info.version)
    for name, (_, version) in best.items():
        store.client.set_registered_model_alias(name, BEST_ALIAS, str(version))
    for name in {n for n, *_ in FORMAT1_VERSIONS}:
        run_id = store.find_run(name)
        if run_id:
            store.finish_run(run_id)
