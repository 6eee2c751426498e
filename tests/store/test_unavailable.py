"""Out of reach is not damaged (issue "Trust, round 3", defect 1), on the real embedded store.

A project folder moved with `mv` or copied with `cp -r`, an artifact root that cannot be reached: no version is
tagged corrupt, no file is deleted, restore says what is wrong (or starts fresh when configured to), and once
the files are back the same `best` is restored. The records checked are independent of the code under test:
the tensors this test kept, the files on disk, and the registry's tags read with a plain MlflowClient.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient
from reliability.support import digest, make_model, train_step

import mlflow_persist as mp
from mlflow_persist.errors import CheckpointUnavailableError

NAME = "net"
LOSSES = (5.0, 4.0, 3.0, 2.0)


def _config(project: Path, **fields: object) -> mp.PersistConfig:
    return mp.PersistConfig(
        tracking_uri=f"sqlite:///{project / 'mlflow.db'}",
        experiment_name="moved",
        log_system_metrics=False,
        partial_sweep_age_seconds=0.0,
        **fields,  # type: ignore[arg-type]
    )


def _train_project(project: Path, template_db: Path) -> dict[int, str]:
    """A project with four performance checkpoints; returns the model digest the test kept per step."""
    project.mkdir(parents=True)
    shutil.copy(template_db, project / "mlflow.db")
    model, opt = make_model(3)
    kept: dict[int, str] = {}
    with mp.Persistence(_config(project), install_signal_handlers=False) as persist:
        handle = persist.track(NAME, model, optimizer=opt)
        for step, loss in enumerate(LOSSES, start=1):
            train_step(model, opt)
            handle.step(step, loss=loss)
            assert persist.flush(timeout=60)
            kept[step] = digest(model.state_dict())
        persist.close(final_checkpoints=False)
    return kept


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def _corrupt_tags(project: Path) -> list[int]:
    uri = f"sqlite:///{project / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return sorted(
        int(v.version)
        for v in client.search_model_versions(f"name = '{NAME}'")
        if v.tags.get("mlflow_persist.corrupt") == "true"
    )


def _restore(project: Path, **fields: object) -> tuple[mp.RestoreInfo | None, str, Path]:
    """Restore into a fresh model; returns what restore said, the restored weights' digest and the artifact
    directory a new checkpoint of this process lands in."""
    model, opt = make_model(99)
    with mp.Persistence(_config(project, **fields), install_signal_handlers=False) as persist:
        handle = persist.track(NAME, model, optimizer=opt)
        info = handle.restore()
        restored = digest(model.state_dict())
        train_step(model, opt)
        handle.save("periodic")
        assert persist.flush(timeout=60)
        newest = persist.store.list_versions(NAME)[-1]
        persist.close(final_checkpoints=False)
    return info, restored, Path(newest.source.removeprefix("file://"))


def test_a_moved_project_folder_restores_the_same_best_and_writes_inside_itself(
    tmp_path: Path, template_db: Path
) -> None:
    original = tmp_path / "project"
    kept = _train_project(original, template_db)
    moved = tmp_path / "renamed"
    shutil.move(original, moved)

    info, restored, written = _restore(moved)

    assert _corrupt_tags(moved) == []
    assert info is not None and info.version == 4 and info.skipped_corrupt == ()
    assert restored == kept[4]
    assert written.is_dir() and moved in written.parents, written

    shutil.move(moved, original)  # and back again
    info, restored, written = _restore(original)
    assert _corrupt_tags(original) == []
    assert info is not None and restored == digest_of_version(original, info.version)
    assert original in written.parents


def digest_of_version(project: Path, version: int) -> str:
    state = mp.load_checkpoint(f"models:/{NAME}/{version}", tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    return digest(dict(state.model_state))


def test_a_copied_project_folder_writes_its_checkpoints_into_the_copy(tmp_path: Path, template_db: Path) -> None:
    original = tmp_path / "project"
    kept = _train_project(original, template_db)
    before = _files(original)
    copy = tmp_path / "copy"
    shutil.copytree(original, copy)

    info, restored, written = _restore(copy)

    assert info is not None and info.version == 4 and restored == kept[4]
    assert copy in written.parents, f"the copy wrote its checkpoint outside itself: {written}"
    assert _files(original) == before, "the copy changed files of the original project"
    assert _corrupt_tags(copy) == [] and _corrupt_tags(original) == []


def test_an_artifact_root_out_of_reach_tags_nothing_deletes_nothing_and_says_so(
    tmp_path: Path, template_db: Path
) -> None:
    project = tmp_path / "project"
    kept = _train_project(project, template_db)
    artifacts = project / "mlruns"
    aside = tmp_path / "elsewhere"
    shutil.move(artifacts, aside)  # a mount that is not there, a folder another user moved away
    files_before = _files(aside)

    model, opt = make_model(99)
    untouched = digest(model.state_dict())
    with mp.Persistence(_config(project), install_signal_handlers=False) as persist:
        handle = persist.track(NAME, model, optimizer=opt)
        with pytest.raises(CheckpointUnavailableError) as raised:
            handle.restore()
        persist.close(final_checkpoints=False)
    message = str(raised.value)
    assert str(artifacts) in message and "on_unavailable" in message, message
    assert digest(model.state_dict()) == untouched
    assert _corrupt_tags(project) == []

    with mp.Persistence(_config(project, on_unavailable="fresh"), install_signal_handlers=False) as persist:
        handle = persist.track(NAME, model, optimizer=opt)
        assert handle.restore() is None
        persist.close(final_checkpoints=False)
    assert _corrupt_tags(project) == []

    shutil.rmtree(artifacts, ignore_errors=True)  # whatever the fresh start left there goes; ours come back
    shutil.move(aside, artifacts)
    assert _files(artifacts) == files_before, "a file of an unavailable version was deleted"
    info, restored, _ = _restore(project)
    assert info is not None and info.version == 4 and restored == kept[4]
    assert _corrupt_tags(project) == []


def test_a_file_that_cannot_be_read_is_unavailable_not_damaged(
    tmp_path: Path, template_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A permission error (as root, chmod does not bite, so the read itself is made to fail) or a full temp
    dir: the bytes were never checked, so nothing is tagged."""
    project = tmp_path / "project"
    _train_project(project, template_db)
    import errno

    from mlflow_persist._format import payload

    def refuse(*args: object, **kwargs: object) -> object:
        raise PermissionError(errno.EACCES, "Permission denied", str(args[0]) if args else "?")

    monkeypatch.setattr(payload, "digest_file", refuse)
    model, opt = make_model(99)
    with mp.Persistence(_config(project), install_signal_handlers=False) as persist:
        handle = persist.track(NAME, model, optimizer=opt)
        with pytest.raises(CheckpointUnavailableError, match="Permission denied"):
            handle.restore()
        persist.close(final_checkpoints=False)
    assert _corrupt_tags(project) == []


def test_system_checkpoints_of_a_moved_folder_restore_and_an_unreachable_member_stops_them(
    tmp_path: Path, template_db: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(template_db, project / "mlflow.db")
    nets = {name: make_model(seed) for name, seed in (("a", 1), ("b", 2))}
    with mp.Persistence(_config(project), install_signal_handlers=False) as persist:
        handles = {name: persist.track(name, m, optimizer=o) for name, (m, o) in nets.items()}
        for name, (m, o) in nets.items():
            train_step(m, o)
            handles[name].step(1, loss=1.0)
        persist.save_all()
        assert persist.flush(timeout=60)
        persist.close(final_checkpoints=False)
    kept = {name: digest(m.state_dict()) for name, (m, _) in nets.items()}
    moved = tmp_path / "moved"
    shutil.move(project, moved)

    fresh = {name: make_model(50 + i) for i, name in enumerate(nets)}
    with mp.Persistence(_config(moved), install_signal_handlers=False) as persist:
        for name, (m, o) in fresh.items():
            persist.track(name, m, optimizer=o)
        restored = persist.restore_all()
        persist.close(final_checkpoints=False)
    assert sorted(restored) == ["a", "b"]
    assert {name: digest(m.state_dict()) for name, (m, _) in fresh.items()} == kept

    shutil.move(moved / "mlruns", tmp_path / "away")
    again = {name: make_model(70 + i) for i, name in enumerate(nets)}
    untouched = {name: digest(m.state_dict()) for name, (m, _) in again.items()}
    with mp.Persistence(_config(moved), install_signal_handlers=False) as persist:
        for name, (m, o) in again.items():
            persist.track(name, m, optimizer=o)
        with pytest.raises(CheckpointUnavailableError, match="on_unavailable"):
            persist.restore_all()
        persist.close(final_checkpoints=False)
    assert {name: digest(m.state_dict()) for name, (m, _) in again.items()} == untouched
    uri = f"sqlite:///{moved / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    tagged = [
        v
        for n in ("a", "b")
        for v in client.search_model_versions(f"name = '{n}'")
        if v.tags.get("mlflow_persist.corrupt") == "true"
    ]
    assert tagged == []


def test_restore_logic_on_the_memory_store_never_tags_an_unreachable_version() -> None:
    from mlflow_persist.testing import MemoryStore

    store = MemoryStore()
    model, opt = make_model(5)
    cfg = mp.PersistConfig(log_system_metrics=False)
    with mp.Persistence(cfg, store=store, install_signal_handlers=False) as persist:
        handle = persist.track(NAME, model, optimizer=opt)
        for step, loss in enumerate(LOSSES, start=1):
            handle.step(step, loss=loss)
            assert persist.flush(timeout=30)
        persist.close(final_checkpoints=False)
    assert [v.version for v in store.list_versions(NAME)] == [2, 3, 4]  # keep_best=3

    for on_unavailable, expect_raise in (("fail", True), ("fresh", False)):
        store.fail("load", times=None, error=CheckpointUnavailableError("the files of net are out of reach"))
        cfg = mp.PersistConfig(log_system_metrics=False, on_unavailable=on_unavailable)
        fresh, fresh_opt = make_model(6)
        with mp.Persistence(cfg, store=store, install_signal_handlers=False) as persist:
            handle = persist.track(NAME, fresh, optimizer=fresh_opt)
            if expect_raise:
                with pytest.raises(CheckpointUnavailableError, match="on_unavailable='fresh'"):
                    handle.restore()
            else:
                assert handle.restore() is None
            store.heal()
            persist.close(final_checkpoints=False)
        assert [v.version for v in store.list_versions(NAME) if v.corrupt] == []
        assert store.calls["load"] >= 1
