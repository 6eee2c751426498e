"""The registered-directory marker: written by one spelling of a path, read by any other."""

from __future__ import annotations

import shutil
from pathlib import Path

from mlflow_persist._store.registered_marker import is_marked, mark_registered


def test_a_marked_directory_reads_as_marked_by_path_string_and_trailing_slash(tmp_path: Path) -> None:
    directory = tmp_path / "ckpt-000001"
    directory.mkdir()
    assert not is_marked(directory)
    mark_registered(directory)
    assert is_marked(directory)
    assert is_marked(str(directory))
    assert is_marked(str(directory) + "/")
    assert [p.name for p in directory.iterdir()] == [".registered-ckpt-000001"]


def test_a_copy_under_another_name_is_not_marked(tmp_path: Path) -> None:
    directory = tmp_path / "ckpt-000001"
    directory.mkdir()
    mark_registered(directory)
    copy = tmp_path / "ckpt-000002"
    shutil.copytree(directory, copy)
    assert not is_marked(copy)


def test_marking_a_missing_directory_creates_nothing(tmp_path: Path) -> None:
    mark_registered(tmp_path / "gone")
    assert not (tmp_path / "gone").exists()
