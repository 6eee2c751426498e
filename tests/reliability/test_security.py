"""Security: unsafe names refused, hostile pickles never executed (and tagged corrupt), credentials in a
tracking URI never logged."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path

import pytest
import torch
from servers import free_port

import mlflow_persist as mp
from mlflow_persist._format.payload import CHECKPOINT_FILE, FORMAT_VERSION, MANIFEST_FILE, sha256_file
from mlflow_persist._observe.logs import configure_logging
from mlflow_persist._store.mlflow_store import MlflowStore, tag
from mlflow_persist.cli.main import main as cli_main
from reliability.support import ListHandler, capture_logs, digest, make_model

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize("name", ["..", "../dqn", "dqn/../../etc", "a/b", "/etc/passwd", "C:\\x", "dqn\\..", ""])
def test_unsafe_model_names_are_refused(sqlite_uri: str, name: str) -> None:
    cfg = mp.PersistConfig(tracking_uri=sqlite_uri, log_system_metrics=False)
    with mp.Persistence(cfg, install_signal_handlers=False) as persist:
        with pytest.raises(mp.ConfigError, match="not allowed"):
            persist.track(name, torch.nn.Linear(2, 2))
        with pytest.raises(mp.PersistError):
            mp.load_checkpoint(f"models:/{name}/1", tracking_uri=sqlite_uri)
        assert persist.handles == {}
        persist.close(final_checkpoints=False)


def test_unsafe_registered_model_prefix_is_refused(sqlite_uri: str) -> None:
    cfg = mp.PersistConfig(tracking_uri=sqlite_uri, registered_model_prefix="../", log_system_metrics=False)
    with mp.Persistence(cfg, install_signal_handlers=False) as persist:
        with pytest.raises(mp.ConfigError, match="not allowed"):
            persist.track("dqn", torch.nn.Linear(2, 2))
        persist.close(final_checkpoints=False)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_would_execute_code_is_refused_and_tagged_corrupt(sqlite_uri: str, tmp_path: Path) -> None:
    model, opt = make_model(7)
    cfg = mp.PersistConfig(
        tracking_uri=sqlite_uri, min_free_disk_mb=0, min_free_disk_percent=0, log_system_metrics=False
    )
    with mp.Persistence(cfg, install_signal_handlers=False) as persist:
        handle = persist.track("dqn", model, optimizer=opt)
        handle.step(loss=1.0)
        assert persist.flush(timeout=60)
        good = digest(model.state_dict())
        # An attacker with write access to the store registers a hostile checkpoint with a matching sha256.
        marker = tmp_path / "pwned"
        hostile = tmp_path / "hostile"
        hostile.mkdir()
        torch.save(
            {"format_version": FORMAT_VERSION, "model_state": _Exploit(marker), "step": 99}, hostile / CHECKPOINT_FILE
        )
        digest_hostile = sha256_file(hostile / CHECKPOINT_FILE)
        (hostile / MANIFEST_FILE).write_text(f'{{"format_version": 2, "sha256": "{digest_hostile}"}}')
        store = persist.store
        store.client.log_artifacts(handle.run_id, str(hostile), artifact_path="checkpoints/hostile")
        info = store.register_version(
            "dqn",
            f"{store.artifact_uri(handle.run_id)}/checkpoints/hostile",
            handle.run_id,
            {tag("category"): "periodic", tag("step"): 99, tag("sha256"): digest_hostile},
        )
        persist.close(final_checkpoints=False)
    # The payload is really hostile: an unsafe load would run its command.
    probe = tmp_path / "probe"
    torch.load(
        io.BytesIO((hostile / CHECKPOINT_FILE).read_bytes().replace(str(marker).encode(), str(probe).encode())),
        weights_only=False,
    )
    assert probe.exists()

    fresh, fresh_opt = make_model(8)
    with mp.Persistence(cfg, install_signal_handlers=False) as persist:
        restored = persist.track("dqn", fresh, optimizer=fresh_opt).restore()
        persist.close(final_checkpoints=False)
    assert not marker.exists(), "loading a checkpoint executed code"
    assert restored is not None and restored.skipped_corrupt == (info.version,) and restored.version == info.version - 1
    assert digest(fresh.state_dict()) == good
    tagged = MlflowStore(sqlite_uri).get_version("dqn", info.version)
    assert tagged.corrupt and "cannot be loaded safely" in tagged.tags[tag("corrupt_reason")]
    with pytest.raises(mp.CheckpointCorruptError):
        mp.load_checkpoint(f"models:/dqn/{info.version}", tracking_uri=sqlite_uri)
    assert not marker.exists()


def test_credentials_in_the_tracking_uri_are_never_logged(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = f"http://trader:{SECRET}@127.0.0.1:{free_port()}"
    stream = io.StringIO()
    handler = configure_logging("DEBUG", "text", stream=stream)
    root = ListHandler()
    logging.getLogger().addHandler(root)
    previous_root_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    try:
        with capture_logs() as records:
            cfg = mp.PersistConfig(tracking_uri=uri, log_system_metrics=False)
            with pytest.raises(mp.StoreUnavailableError) as error:
                mp.Persistence(cfg, install_signal_handlers=False)
        with pytest.raises(SystemExit) as exited:
            cli_main(["status", "--tracking-uri", uri])
        assert exited.value.code == 4  # store unreachable
        with pytest.raises(SystemExit):
            cli_main(["--log-level", "DEBUG", "status", "--tracking-uri", uri, "--json"])
    finally:
        logging.getLogger().removeHandler(root)
        logging.getLogger().setLevel(previous_root_level)
        logging.getLogger("mlflow_persist").removeHandler(handler)
    captured = capfd.readouterr()
    texts = {
        "exception": str(error.value),
        "mlflow_persist log": stream.getvalue(),
        "records": "\n".join(r.getMessage() for r in records.records),
        "all loggers": "\n".join(r.getMessage() + str(r.exc_info or "") for r in root.records),
        "cli stdout": captured.out,
        "cli stderr": captured.err,
    }
    assert "127.0.0.1" in captured.err  # the failure is reported...
    for where, text in texts.items():
        assert SECRET not in text, f"the password leaked into {where}: {text[-500:]}"


def test_library_log_lines_are_redacted_for_any_handler(caplog: pytest.LogCaptureFixture) -> None:
    """Regression (issue 11 #10): redaction lived only in the CLI formatter; an application's own handler got
    `user:password@` from the library's log lines."""
    from mlflow_persist.testing import MemoryStore

    store = MemoryStore()
    cfg = mp.PersistConfig(min_free_disk_mb=0, min_free_disk_percent=0, log_system_metrics=False)
    with mp.Persistence(cfg, store=store, install_signal_handlers=False) as persist:
        persist.track("net", torch.nn.Linear(2, 1)).step(loss=1.0)
    store.fail("load", times=1, error=mp.StoreError("GET http://alice:s3cr3t@127.0.0.1:5000/get-artifact failed"))
    with caplog.at_level(logging.INFO, logger="mlflow_persist"):
        with mp.Persistence(cfg, store=store, install_signal_handlers=False) as persist:
            assert persist.track("net", torch.nn.Linear(2, 1)).restore() is not None  # retried, then loaded
    assert "loading v" in caplog.text  # the retry warning carries the store's error text
    assert "alice:***@127.0.0.1" in caplog.text and "s3cr3t" not in caplog.text


def test_the_legacy_cache_is_private_and_a_tampered_file_is_never_reused(
    sqlite_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (issue 11 #10): a predictable shared /tmp cache whose files were reused unchecked."""
    from mlflow_persist.legacy import CheckpointManager

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    manager = CheckpointManager(tracking_uri=sqlite_uri)
    torch.manual_seed(8)
    model = torch.nn.Linear(3, 2)
    assert manager.save_checkpoint(model, "cnn", "cnn", {"accuracy": 0.5}) is not None
    path, _ = manager.load_best_checkpoint("cnn")
    cache = Path(path).parent.parent
    assert cache == tmp_path / "xdg" / "mlflow-persist" / "legacy"
    assert (cache.stat().st_mode & 0o777) == 0o700 and (Path(path).parent.stat().st_mode & 0o077) == 0
    planted = {"model_state_dict": {"weight": torch.full((2, 3), 666.0), "bias": torch.zeros(2)}}
    torch.save(planted, path)  # someone replaces the cached file
    again, _ = manager.load_best_checkpoint("cnn")
    loaded = torch.load(again, weights_only=True)["model_state_dict"]
    assert torch.equal(loaded["weight"], model.state_dict()["weight"])  # rewritten from the verified version


def test_deletions_never_leave_the_runs_checkpoint_folder(sqlite_uri: str, tmp_path: Path) -> None:
    """Regression (issue 11 #10): a version source outside the artifact root was removed with rmtree."""
    from mlflow_persist._store.mlflow_store import MlflowStore
    from mlflow_persist._store.prune import prune

    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "data.bin").write_bytes(b"keep me")
    store = MlflowStore(sqlite_uri)
    run_id = store.ensure_run("net")
    info = store.register_version("net", outside.as_uri(), run_id, {"mlflow_persist.category": "periodic"})
    result = prune(store, "net", lambda versions, best: [info.version])
    assert [v.version for v in result.deleted] == [info.version]
    assert (outside / "data.bin").read_bytes() == b"keep me"
