"""Write the committed fixtures: two legacy CheckpointManager directories and a format-1 MLflow store.

Usage (from the repository root):

    MLFLOW_DISABLE_TELEMETRY=true .venv/bin/python -m mlruns_fixtures.generate [--out mlruns_fixtures]

Everything is deterministic (fixed seeds, fixed timestamps), so a rerun rewrites the same tensors.

`legacy_full/NN/models/saved/` (the deployment root is `legacy_full/`) covers every variant of
LEGACY_FORMAT.md:

| file                                   | payload shape               | metadata entry                      |
|----------------------------------------|-----------------------------|-------------------------------------|
| cnn/cnn_20250601_101500.pt             | 1: dict with model_state_dict | relative POSIX path, microseconds |
| cnn/cnn_20250615_120000.pt             | 1                           | relative Windows path, no micros    |
| cnn/cnn_20250620_080000.pt             | 2: bare state dict          | none (orphan file)                  |
| dqn/dqn_20250610_090000.pt             | 3: DQN agent dict           | absolute POSIX path (other machine) |
| dqn/dqn_20250612_093000.pt             | 3                           | absolute Windows path, extra fields |
| (dqn/dqn_20250501_000000.pt)           | file missing                | stale entry                         |
| cob_rl/cob_rl_20250605_110000.pt       | 4: whole pickled nn.Module  | relative POSIX path                 |
| extrema/extrema_20250607_150000.pt     | 5: truncated torch file     | present                             |
| extrema/extrema_20250608_150000.pt     | 5: empty file               | present                             |
| extrema/extrema_20250609_150000.pt     | 1, numpy scalars + datetime | present                             |
| extrema/extrema_20250610_150000.pt     | 5: not a torch file (text)  | none                                |
| dqn_agent_best.pt (loose)              | 3                           | none                                |
| cnn_model_final.pt (loose)             | 2                           | none                                |
| extrema_3.pt (loose)                   | 1, legacy (pre-zip) format  | none                                |

`legacy_nometa/saved/` has no checkpoint_metadata.json at all (a custom base_dir).

`format1_store/` is an MLflow sqlite store (gzipped as mlflow.db.gz, its artifacts under mlruns/) whose versions hold checkpoint format 1 (see
`mlflow_persist/legacy/formats.py` for the v1 layout); its paths are written under the
placeholder root `FORMAT1_PLACEHOLDER_ROOT`; `materialize_format1_store` copies it somewhere and rewrites them.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import os
import shutil
import sqlite3
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from mlruns_fixtures.legacy_models import (  # noqa: E402
    TinyCNN,
    TinyCOBPolicy,
    TinyDQNAgent,
    TinyExtrema,
)

FIXTURES_DIR = Path(__file__).resolve().parent
LEGACY_FULL_ROOT = "legacy_full"
LEGACY_FULL_BASE = "legacy_full/NN/models/saved"
LEGACY_NOMETA_BASE = "legacy_nometa/saved"
FORMAT1_STORE = "format1_store"
FORMAT1_PLACEHOLDER_ROOT = "/__mlflow_persist_format1_fixture__"
FORMAT1_EXPERIMENT = "mlflow_persist"
# File times the generator gives the legacy files (seconds since the epoch, UTC); git checkouts
# do not keep them, so tests read the real mtime instead of assuming these.
_BASE_MTIME = 1_750_000_000


def legacy_score(metrics: dict[str, Any]) -> float:
    """The old manager's performance_score (LEGACY_FORMAT.md), used to fill the fixture metadata."""
    score = 0.0
    seen = False
    if metrics.get("accuracy") is not None:
        score += 100.0 * float(metrics["accuracy"]); seen = True
    if metrics.get("val_accuracy") is not None:
        score += 100.0 * float(metrics["val_accuracy"]); seen = True
    if metrics.get("loss") is not None:
        score += max(0.0, 10.0 - float(metrics["loss"])); seen = True
    if metrics.get("val_loss") is not None:
        score += max(0.0, 10.0 - float(metrics["val_loss"])); seen = True
    if metrics.get("reward") is not None:
        score += float(metrics["reward"]); seen = True
    if metrics.get("pnl") is not None:
        score += float(metrics["pnl"]); seen = True
    return score if seen else 0.1


def _trained(model: torch.nn.Module, seed: int, steps: int = 2) -> torch.optim.Optimizer:
    """Give a model distinct weights and an optimizer with real state."""
    torch.manual_seed(seed)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = sum((p**2).sum() for p in model.parameters())
        loss.backward()
        opt.step()
    return opt


def _dqn_agent(seed: int) -> TinyDQNAgent:
    agent = TinyDQNAgent(seed)
    opt = _trained(agent.policy_net, seed)
    agent.optimizer = opt
    agent.target_net.load_state_dict(agent.policy_net.state_dict())
    with torch.no_grad():
        for p in agent.target_net.parameters():
            p.add_(0.01)
    agent.epsilon = 0.9 - seed / 100.0
    agent.steps_done = 1000 + seed
    return agent


def _dqn_dict(agent: TinyDQNAgent, with_extras: bool) -> dict[str, Any]:
    d: dict[str, Any] = {
        "policy_net": agent.policy_net.state_dict(),
        "target_net": agent.target_net.state_dict(),
        "optimizer": agent.optimizer.state_dict(),
        "epsilon": agent.epsilon,
    }
    if with_extras:
        d["memory_size"] = 512
        d["steps_done"] = agent.steps_done
    return d


def _shape1(model: torch.nn.Module, opt: torch.optim.Optimizer | None, model_type: str, epoch: int,
            metrics: dict[str, Any], saved_at: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "model_state_dict": model.state_dict(),
        "model_type": model_type,
        "saved_at": saved_at,
        "epoch": epoch,
        "history": {"loss": [1.0, 0.8, 0.6][: 1 + epoch % 3]},
        "performance_metrics": metrics,
        "training_metadata": {"epoch": epoch, "lr": 1e-2},
    }
    if opt is not None:
        d["optimizer_state_dict"] = opt.state_dict()
    return d


def _entry(model_name: str, model_type: str, checkpoint_id: str, file_path: str, created_at: str,
           file: Path | None, metrics: dict[str, Any], **extra: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "checkpoint_id": checkpoint_id,
        "model_name": model_name,
        "model_type": model_type,
        "file_path": file_path,
        "created_at": created_at,
        "file_size_mb": round(file.stat().st_size / 1024 / 1024, 4) if file is not None and file.exists() else 0.01,
        "performance_score": legacy_score(metrics),
    }
    for key in ("accuracy", "loss", "val_accuracy", "val_loss", "reward", "pnl", "epoch"):
        e[key] = metrics.get(key)
    e.update(extra)
    return e


def _save(obj: Any, path: Path, legacy_format: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if legacy_format:
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        torch.save(obj, path)
    return path


def _set_times(paths: list[Path]) -> None:
    for i, p in enumerate(sorted(paths)):
        os.utime(p, (_BASE_MTIME + 3600 * i, _BASE_MTIME + 3600 * i))


def write_legacy_full(out: Path) -> Path:
    """Write `legacy_full/` under `out`; return its base_dir."""
    root = out / LEGACY_FULL_ROOT
    if root.exists():
        shutil.rmtree(root)
    base = out / LEGACY_FULL_BASE
    files: list[Path] = []
    entries: dict[str, list[dict[str, Any]]] = {"cnn": [], "dqn": [], "cob_rl": [], "extrema": []}

    # cnn: two metadata entries (POSIX and Windows relative paths) and one orphan bare state dict.
    cnn_a = TinyCNN(); opt_a = _trained(cnn_a, 11)
    m_a = {"accuracy": 0.55, "loss": 0.61, "epoch": 4}
    f = _save(_shape1(cnn_a, opt_a, "cnn", 4, m_a, "2025-06-01T10:15:00.123456"), base / "cnn/cnn_20250601_101500.pt")
    files.append(f)
    entries["cnn"].append(_entry("cnn", "cnn", "cnn_20250601_101500", "NN/models/saved/cnn/cnn_20250601_101500.pt",
                                 "2025-06-01T10:15:00.123456", f, m_a, training_time_hours=0.5,
                                 total_parameters=sum(p.numel() for p in cnn_a.parameters()),
                                 wandb_run_id=None, wandb_artifact_name=None))
    cnn_b = TinyCNN(); opt_b = _trained(cnn_b, 12)
    m_b = {"accuracy": 0.62, "loss": 0.41, "val_accuracy": 0.6, "val_loss": 0.5, "epoch": 12}
    f = _save(_shape1(cnn_b, opt_b, "cnn", 12, m_b, "2025-06-15T12:00:00"), base / "cnn/cnn_20250615_120000.pt")
    files.append(f)
    entries["cnn"].append(_entry("cnn", "cnn", "cnn_20250615_120000", "NN\\models\\saved\\cnn\\cnn_20250615_120000.pt",
                                 "2025-06-15T12:00:00", f, m_b))
    cnn_c = TinyCNN(); _trained(cnn_c, 13)
    files.append(_save(cnn_c.state_dict(), base / "cnn/cnn_20250620_080000.pt"))

    # dqn: absolute POSIX path from another machine, absolute Windows path, and a stale entry.
    agent_a = _dqn_agent(21)
    m_da = {"reward": 12.5, "pnl": 3.2, "epoch": None}
    f = _save(_dqn_dict(agent_a, with_extras=False), base / "dqn/dqn_20250610_090000.pt")
    files.append(f)
    entries["dqn"].append(_entry("dqn", "rl", "dqn_20250610_090000",
                                 "/home/trader/gogo2/NN/models/saved/dqn/dqn_20250610_090000.pt",
                                 "2025-06-10T09:00:00", f, m_da))
    agent_b = _dqn_agent(22)
    m_db = {"reward": 20.0, "pnl": -1.5}
    f = _save(_dqn_dict(agent_b, with_extras=True), base / "dqn/dqn_20250612_093000.pt")
    files.append(f)
    entries["dqn"].append(_entry("dqn", "rl", "dqn_20250612_093000",
                                 "C:\\Users\\trader\\gogo2\\NN\\models\\saved\\dqn\\dqn_20250612_093000.pt",
                                 "2025-06-12T09:30:00.5", f, m_db, notes="field the spec does not list",
                                 win_rate=0.58))
    entries["dqn"].insert(0, _entry("dqn", "rl", "dqn_20250501_000000", "NN/models/saved/dqn/dqn_20250501_000000.pt",
                                    "2025-05-01T00:00:00", None, {"reward": 99.0}))

    # cob_rl: a whole pickled module (refused unless trusted).
    cob = TinyCOBPolicy(); _trained(cob, 31)
    cob.feature_mean.copy_(torch.arange(6, dtype=torch.float32) / 10)
    m_c = {"accuracy": 0.7, "loss": 0.3}
    f = _save(cob, base / "cob_rl/cob_rl_20250605_110000.pt")
    files.append(f)
    entries["cob_rl"].append(_entry("cob_rl", "cob_rl", "cob_rl_20250605_110000",
                                    "NN/models/saved/cob_rl/cob_rl_20250605_110000.pt",
                                    "2025-06-05T11:00:00.000001", f, m_c))

    # extrema: truncated, empty, valid (numpy scalars + datetime inside), and a text file.
    ext_t = TinyExtrema(); opt_t = _trained(ext_t, 41)
    full = base / "extrema/extrema_20250607_150000.pt"
    _save(_shape1(ext_t, opt_t, "extrema", 1, {"loss": 0.9}, "2025-06-07T15:00:00"), full)
    data = full.read_bytes()
    full.write_bytes(data[: len(data) // 2])
    files.append(full)
    entries["extrema"].append(_entry("extrema", "extrema", "extrema_20250607_150000",
                                     "NN/models/saved/extrema/extrema_20250607_150000.pt",
                                     "2025-06-07T15:00:00", full, {"loss": 0.9, "epoch": 1}))
    empty = base / "extrema/extrema_20250608_150000.pt"
    empty.parent.mkdir(parents=True, exist_ok=True)
    empty.write_bytes(b"")
    files.append(empty)
    entries["extrema"].append(_entry("extrema", "extrema", "extrema_20250608_150000",
                                     "NN/models/saved/extrema/extrema_20250608_150000.pt",
                                     "2025-06-08T15:00:00", empty, {"loss": 0.8, "epoch": 2}))
    ext_v = TinyExtrema(); opt_v = _trained(ext_v, 43)
    m_v = {"loss": np.float64(0.35), "accuracy": np.float32(0.66), "epoch": 3}
    f = _save(_shape1(ext_v, opt_v, "extrema", 3, m_v, dt.datetime(2025, 6, 9, 15, 0, 0)),
              base / "extrema/extrema_20250609_150000.pt")
    files.append(f)
    entries["extrema"].append(_entry("extrema", "extrema", "extrema_20250609_150000",
                                     "NN/models/saved/extrema/extrema_20250609_150000.pt",
                                     "2025-06-09T15:00:00", f, {"loss": 0.35, "accuracy": 0.66, "epoch": 3}))
    text = base / "extrema/extrema_20250610_150000.pt"
    text.write_text("partial write: the trainer was killed here\n")
    files.append(text)

    # Loose files in the base directory, no metadata.
    files.append(_save(_dqn_dict(_dqn_agent(51), with_extras=True), base / "dqn_agent_best.pt"))
    cnn_f = TinyCNN(); _trained(cnn_f, 52)
    files.append(_save(cnn_f.state_dict(), base / "cnn_model_final.pt"))
    ext_l = TinyExtrema(); opt_l = _trained(ext_l, 53)
    files.append(_save(_shape1(ext_l, opt_l, "extrema", 3, {"loss": 0.5}, "2025-05-20T08:00:00"),
                       base / "extrema_3.pt", legacy_format=True))

    meta = {"last_updated": "2025-06-15T12:00:00.654321", "checkpoints": entries}
    meta_path = base / "checkpoint_metadata.json"
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    files.append(meta_path)
    _set_times(files)
    return base


def write_legacy_nometa(out: Path) -> Path:
    """Write `legacy_nometa/` under `out` (no checkpoint_metadata.json); return its base_dir."""
    root = out / LEGACY_NOMETA_BASE.split("/")[0]
    if root.exists():
        shutil.rmtree(root)
    base = out / LEGACY_NOMETA_BASE
    files: list[Path] = []
    cnn = TinyCNN(); opt = _trained(cnn, 61)
    files.append(_save(_shape1(cnn, opt, "cnn", 7, {"accuracy": 0.5, "loss": 0.7}, "2025-01-01T00:00:00"),
                       base / "cnn/cnn_20250101_000000.pt"))
    files.append(_save(_dqn_dict(_dqn_agent(62), with_extras=False), base / "dqn/dqn_20250102_000000.pt"))
    cob = TinyCOBPolicy(); _trained(cob, 63)
    files.append(_save(cob.state_dict(), base / "cob_rl_1.pt"))
    _set_times(files)
    return base


def _rewrite_paths(db: Path, old: str, new: str) -> None:
    """Replace the path prefix `old` with `new` in every text column of an MLflow sqlite store."""
    con = sqlite3.connect(db)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        for table in tables:
            cols = [r[1] for r in con.execute(f'PRAGMA table_info("{table}")')
                    if any(t in (r[2] or "").upper() for t in ("CHAR", "TEXT", "CLOB"))]
            for col in cols:
                con.execute(f'UPDATE "{table}" SET "{col}" = REPLACE("{col}", ?, ?) WHERE instr("{col}", ?) > 0',
                            (old, new, old))
        con.commit()
        con.execute("VACUUM")
    finally:
        con.close()


def materialize_format1_store(dest: Path, source: Path | None = None) -> str:
    """Copy the committed format-1 store to `dest`, point its paths there; return its tracking URI."""
    source = source or FIXTURES_DIR / FORMAT1_STORE
    dest = Path(dest).resolve()
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns("mlflow.db.gz"))
    with gzip.open(source / "mlflow.db.gz", "rb") as packed, open(dest / "mlflow.db", "wb") as db:
        shutil.copyfileobj(packed, db)
    _rewrite_paths(dest / "mlflow.db", FORMAT1_PLACEHOLDER_ROOT, str(dest))
    return f"sqlite:///{dest / 'mlflow.db'}"


def write_format1_store(out: Path) -> Path:
    """Write `format1_store/` under `out` with checkpoint format-1 versions; return its directory."""
    import tempfile

    from mlruns_fixtures.format1_writer import write_format1_store as _write

    target = out / FORMAT1_STORE
    if target.exists():
        shutil.rmtree(target)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp).resolve() / "store"
        work.mkdir()
        _write(f"sqlite:///{work / 'mlflow.db'}", work / "mlartifacts", FORMAT1_EXPERIMENT)
        _rewrite_paths(work / "mlflow.db", str(work), FORMAT1_PLACEHOLDER_ROOT)
        shutil.copytree(work, target, ignore=shutil.ignore_patterns(".mlflow_persist_locks", "mlflow.db"))
        # gzip: an empty MLflow schema is ~1 MB of sqlite pages but compresses to ~20 KB.
        with open(work / "mlflow.db", "rb") as db, gzip.GzipFile(target / "mlflow.db.gz", "wb", mtime=0) as packed:
            shutil.copyfileobj(db, packed)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=FIXTURES_DIR, help="where to write the fixtures")
    parser.add_argument("--skip-store", action="store_true", help="write only the legacy directories")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    args.out.mkdir(parents=True, exist_ok=True)
    print(write_legacy_full(args.out))
    print(write_legacy_nometa(args.out))
    if not args.skip_store:
        print(write_format1_store(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
