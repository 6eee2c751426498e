from __future__ import annotations

import hashlib
import os
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from mlflow_persist import CheckpointCorruptError
from mlflow_persist._format.digest import Digest
from mlflow_persist._format.payload import (
    CHECKPOINT_FILE,
    build_payload,
    capture_rng_state,
    read_checkpoint_dir,
    restore_rng_state,
    write_checkpoint_dir,
)


class Agent:
    def __init__(self) -> None:
        self.epsilon = 0.3
        self.buffer_summary = np.arange(6, dtype=np.uint32).reshape(2, 3)

    def state_dict(self) -> dict:
        return {"epsilon": self.epsilon, "summary": self.buffer_summary, "counts": (1, 2), "name": "x"}


def _payload() -> dict:
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, 10)
    return build_payload(
        model_name="m",
        model_state=model.state_dict(),
        optimizer_state=opt.state_dict(),
        scheduler_state=sched.state_dict(),
        extra_state=Agent().state_dict(),
        step=17,
        metrics={"loss": 0.5},
        category="performance",
    )


def test_round_trip_preserves_every_field(tmp_path: Path) -> None:
    payload = _payload()
    written = write_checkpoint_dir(payload, tmp_path / "ck")
    state = read_checkpoint_dir(tmp_path / "ck")
    assert (
        state.digest == written.digest
        and state.digest.algorithm == "xxh3-128"
        and state.step == 17
        and state.metrics == {"loss": 0.5}
    )
    for key, tensor in payload["model_state"].items():
        assert torch.equal(state.model_state[key], tensor)
    assert state.optimizer_state["state"][0]["exp_avg"].equal(payload["optimizer_state"]["state"][0]["exp_avg"])
    assert state.extra_state["epsilon"] == 0.3 and state.extra_state["counts"] == (1, 2)
    assert state.extra_state["summary"].dtype == np.uint32
    assert np.array_equal(state.extra_state["summary"], Agent().buffer_summary)


def test_snapshot_is_a_copy_not_a_view() -> None:
    model = torch.nn.Linear(2, 2)
    payload = build_payload(model_name="m", model_state=model.state_dict(), step=0, metrics={}, category="final")
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not torch.equal(payload["model_state"]["weight"], model.weight)


def test_rng_states_round_trip() -> None:
    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()
    restore_rng_state(state)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]


@pytest.mark.parametrize("damage", ["flip", "truncate", "delete", "empty"])
def test_damaged_files_are_refused(tmp_path: Path, damage: str) -> None:
    write_checkpoint_dir(_payload(), tmp_path / "ck")
    path = tmp_path / "ck" / CHECKPOINT_FILE
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(bytes(data[: len(data) // 3]))
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
    with pytest.raises(CheckpointCorruptError):
        read_checkpoint_dir(tmp_path / "ck")


class Exploit:
    def __reduce__(self):  # noqa: ANN204
        return (Path.touch, (Path("/tmp/mlflow-persist-pwned"),))


def test_checkpoint_cannot_execute_code(tmp_path: Path) -> None:
    marker = Path("/tmp/mlflow-persist-pwned")
    marker.unlink(missing_ok=True)
    directory = tmp_path / "evil"
    write_checkpoint_dir(_payload(), directory)
    hostile = pickle.dumps({"model_state": Exploit()}, protocol=2)
    (directory / CHECKPOINT_FILE).write_bytes(hostile)
    with pytest.raises(CheckpointCorruptError, match="cannot be loaded safely"):
        read_checkpoint_dir(directory, expected=Digest("sha256", hashlib.sha256(hostile).hexdigest()))
    assert not marker.exists()


def test_format_1_payload_is_upgraded(tmp_path: Path) -> None:
    import json

    model = torch.nn.Linear(2, 1)
    directory = tmp_path / "v1"
    directory.mkdir()
    torch.save(
        {
            "format_version": 1,
            "model_state": model.state_dict(),
            "optimizer_state": None,
            "step": 3,
            "metrics": {"loss": 1.0},
        },
        directory / CHECKPOINT_FILE,
    )
    digest = hashlib.sha256((directory / CHECKPOINT_FILE).read_bytes()).hexdigest()
    (directory / "manifest.json").write_text(json.dumps({"format_version": 1, "sha256": digest}))
    state = read_checkpoint_dir(directory)
    assert state.format_version == 1 and state.step == 3 and state.rng_state is None and state.extra_state is None
    assert torch.equal(state.model_state["weight"], model.weight)


def test_checkpoints_are_written_without_zip_crc_and_leave_torch_settings_alone(tmp_path: Path) -> None:
    import zipfile

    before = torch.serialization.get_crc32_options()
    written = write_checkpoint_dir(_payload(), tmp_path / "ck")
    assert torch.serialization.get_crc32_options() is before  # other torch.save calls of the process keep theirs
    with zipfile.ZipFile(written.directory / CHECKPOINT_FILE) as archive:
        assert all(info.CRC == 0 for info in archive.infolist() if info.file_size)  # the digest covers the bytes
    plain = torch.load(written.directory / CHECKPOINT_FILE, weights_only=True)  # still a normal torch file
    assert plain["step"] == 17


def test_a_sha256_recorded_by_older_versions_is_still_verified(tmp_path: Path) -> None:
    import json

    directory = tmp_path / "old"
    write_checkpoint_dir(_payload(), directory)
    recorded = hashlib.sha256((directory / CHECKPOINT_FILE).read_bytes()).hexdigest()
    (directory / "manifest.json").write_text(json.dumps({"format_version": 2, "sha256": recorded}))
    assert read_checkpoint_dir(directory).digest == Digest("sha256", recorded)
    with open(directory / CHECKPOINT_FILE, "r+b") as handle:  # one flipped byte in the middle of the file
        handle.seek(os.path.getsize(directory / CHECKPOINT_FILE) // 2)
        byte = handle.read(1)
        handle.seek(-1, 1)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CheckpointCorruptError, match="sha256"):
        read_checkpoint_dir(directory)
    with pytest.raises(CheckpointCorruptError, match="xxh3-128"):
        read_checkpoint_dir(directory, expected=Digest("xxh3-128", "0" * 32))


def test_a_filesystem_that_cannot_map_files_is_read_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno
    import mmap

    from mlflow_persist._format import digest

    written = write_checkpoint_dir(_payload(), tmp_path / "ck")

    def no_mmap(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENODEV, "No such device")  # what a FUSE mount with direct_io answers

    monkeypatch.setattr(digest.mmap, "mmap", no_mmap)
    assert mmap.mmap is no_mmap
    state = read_checkpoint_dir(tmp_path / "ck")
    assert state.digest == written.digest and state.step == 17
