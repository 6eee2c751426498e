"""Damaged checkpoints (flipped bits, truncation, deleted artifacts): restore falls back to the next older
valid version each time, and `mlflow-persist verify` names every damaged version and exits 3."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import mlflow_persist as mp
from mlflow_persist._format.payload import CHECKPOINT_FILE
from mlflow_persist._store.mlflow_store import MlflowStore
from mlflow_persist._store.translate import local_path as _local_path
from mlflow_persist.cli.main import main as cli_main
from reliability.support import digest, make_model, train_step

NAME = "cnn"


def _config(uri: str) -> mp.PersistConfig:
    return mp.PersistConfig(
        tracking_uri=uri,
        keep_best=10,
        min_free_disk_mb=0,
        min_free_disk_percent=0,
        log_system_metrics=False,
        scheduler_interval_seconds=5,
    )


def _restore(uri: str) -> tuple[mp.RestoreInfo, str]:
    model, opt = make_model(99)
    with mp.Persistence(_config(uri), install_signal_handlers=False) as persist:
        info = persist.track(NAME, model, optimizer=opt).restore()
        persist.close(final_checkpoints=False)
    return info, digest(model.state_dict())


def _checkpoint_file(store: MlflowStore, version: int) -> Path:
    return _local_path(store.get_version(NAME, version).source) / CHECKPOINT_FILE


def _flip_bits(path: Path) -> None:
    data = bytearray(path.read_bytes())
    for offset in (len(data) // 3, len(data) // 2, 2 * len(data) // 3):
        data[offset] ^= 0b0010_0100
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


def test_damaged_versions_fall_back_and_verify_names_them(sqlite_uri: str, capsys: pytest.CaptureFixture[str]) -> None:
    model, opt = make_model(1)
    with mp.Persistence(_config(sqlite_uri), install_signal_handlers=False) as persist:
        handle = persist.track(NAME, model, optimizer=opt)
        for loss in (5.0, 4.0, 3.0, 2.0, 1.0):
            train_step(model, opt)
            handle.step(loss=loss)
            assert persist.flush(timeout=60)
        persist.close(final_checkpoints=False)
    store = MlflowStore(sqlite_uri)
    versions = [v.version for v in store.list_versions(NAME)]
    assert versions == [1, 2, 3, 4, 5]
    content = {
        v: digest(dict(mp.load_checkpoint(f"models:/{NAME}/{v}", tracking_uri=sqlite_uri).model_state))
        for v in versions
    }

    damages = [
        (5, "bit flips", lambda v: _flip_bits(_checkpoint_file(store, v))),
        (4, "truncated", lambda v: _truncate(_checkpoint_file(store, v))),
        (3, "artifact deleted", lambda v: shutil.rmtree(_checkpoint_file(store, v).parent)),
    ]
    for version, _, damage in damages:
        damage(version)
        info, restored = _restore(sqlite_uri)
        # Falls back to the next older valid version, with exactly its content.
        assert info.version == version - 1 and info.skipped_corrupt == (version,)
        assert restored == content[version - 1]
        assert store.get_version(NAME, version).corrupt

    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        cli_main(["verify", "--tracking-uri", sqlite_uri, "--json"])
    assert exited.value.code == 3
    report = json.loads(capsys.readouterr().out)
    assert report["checked"] == 5
    assert sorted(r["version"] for r in report["corrupt"]) == [3, 4, 5]
    with pytest.raises(SystemExit) as exited:
        cli_main(["verify", "--tracking-uri", sqlite_uri])
    out = capsys.readouterr().out
    assert exited.value.code == 3
    assert all(f"CORRUPT {NAME} v{v}:" in out for v in (3, 4, 5)) and "3 corrupt" in out
    # The newest valid version is intact and loadable.
    assert mp.load_checkpoint(f"models:/{NAME}/2", tracking_uri=sqlite_uri).step == 2
    print("\nFAULT damaged-artifacts trials=3 fallbacks_ok=3 verify_named=3 verify_exit=3")
