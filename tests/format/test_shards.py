"""The shard files of a sharded checkpoint: moved into the version, recorded by digest, and every kind of
damage (a changed, missing, extra or truncated file) refused on read, with real files."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlflow_persist._format.payload import build_payload, read_checkpoint_dir, write_checkpoint_dir
from mlflow_persist._format.shards import SHARDS_DIR, SHARDS_KEY
from mlflow_persist.errors import CheckpointCorruptError, PersistError

SHARD_BYTES = {".metadata": b"layout", "__0_0.distcp": b"rank zero " * 50, "__1_0.distcp": b"rank one " * 70}


def _staged(root: Path) -> Path:
    staging = root / ".tmp-net-0000000007-0123abcd"
    staging.mkdir(parents=True)
    for name, data in SHARD_BYTES.items():
        (staging / name).write_bytes(data)
    return staging


def _written(tmp_path: Path) -> Path:
    staging = _staged(tmp_path / "checkpoints")
    payload = build_payload(
        model_name="net", model_state={SHARDS_KEY: str(staging)}, step=7, metrics={}, category="periodic"
    )
    directory = tmp_path / "checkpoints" / "net-0000000007-0123abcd"
    write_checkpoint_dir(payload, directory)
    assert not staging.exists()  # moved, not copied: the staged folder is adopted once
    return directory


def test_the_shards_move_into_the_version_and_read_back_with_their_folder(tmp_path: Path) -> None:
    directory = _written(tmp_path)
    assert {p.name: p.read_bytes() for p in (directory / SHARDS_DIR).iterdir()} == SHARD_BYTES
    state = read_checkpoint_dir(directory)
    loaded = state.model_state[SHARDS_KEY]
    assert loaded["directory"] == str(directory / SHARDS_DIR)
    assert {name: entry[2] for name, entry in loaded["files"].items()} == {k: len(v) for k, v in SHARD_BYTES.items()}


@pytest.mark.parametrize("damage", ["flipped", "missing", "extra", "truncated"])
def test_every_damage_to_a_shard_file_is_refused(tmp_path: Path, damage: str) -> None:
    directory = _written(tmp_path)
    shard = directory / SHARDS_DIR / "__1_0.distcp"
    if damage == "flipped":
        data = bytearray(shard.read_bytes())
        data[10] ^= 0x01
        shard.write_bytes(bytes(data))
    elif damage == "missing":
        shard.unlink()
    elif damage == "extra":
        (directory / SHARDS_DIR / "__2_0.distcp").write_bytes(b"planted")
    else:
        shard.write_bytes(shard.read_bytes()[:-1])
    with pytest.raises(CheckpointCorruptError, match="distcp"):
        read_checkpoint_dir(directory)


def test_a_save_whose_shards_were_never_completed_writes_no_checkpoint(tmp_path: Path) -> None:
    staging = _staged(tmp_path / "checkpoints")
    (staging / ".metadata").unlink()  # a rank died before DCP finished: no metadata
    payload = build_payload(
        model_name="net", model_state={SHARDS_KEY: str(staging)}, step=7, metrics={}, category="final"
    )
    with pytest.raises(PersistError, match="incomplete"):
        write_checkpoint_dir(payload, tmp_path / "checkpoints" / "net-0000000007-0123abcd")


def test_export_of_a_sharded_checkpoint_says_how_to_convert_it(tmp_path: Path) -> None:
    from mlflow_persist._format.export import export_checkpoint
    from mlflow_persist.errors import ConfigError

    state = read_checkpoint_dir(_written(tmp_path))
    with pytest.raises(ConfigError, match="dcp_to_torch_save"):
        export_checkpoint(state, tmp_path / "exported", "safetensors")
    assert not (tmp_path / "exported").exists()
