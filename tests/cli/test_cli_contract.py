"""The command line's contract, as docs/cli.md documents it, on real sqlite stores:
`--config` and the tracking URI's env var on every subcommand (and the URI's precedence), one JSON style with
`schema_version` and the documented top-level keys for every `--json` output, the exit codes 0/1/2/3/4, and
usage errors of the standalone legacy script (one line, exit 2, no traceback)."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
import typer

import mlflow_persist as mp
from mlflow_persist._store.mlflow_store import MlflowStore
from mlflow_persist.cli import schema as cli_schema
from mlflow_persist.cli.main import app, main

ROOT = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).with_name("mlflow-persist")
LEGACY_SCRIPT = ROOT / "scripts" / "import_legacy_checkpoints.py"
LEGACY_NOMETA = ROOT / "mlruns_fixtures" / "legacy_nometa" / "saved"
SUBCOMMANDS = ("run", "status", "history", "verify", "gc", "export", "rollback", "import-legacy", "migrate", "replay")
WITHOUT_JSON = {"run"}  # prints no data: a progress display and log lines


# ------------------------------------------------------------------------------------------------ helpers


def cli_docs() -> str:
    """docs/cli.md as written (the generated option reference is added at build time, not read here)."""
    return (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")


def _table_rows(section: str, header: str) -> list[list[str]]:
    lines = section.splitlines()
    first = next(i for i, line in enumerate(lines) if line.replace(" ", "") == header.replace(" ", ""))
    rows = []
    for line in lines[first + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def documented_json_keys() -> dict[str, list[str]]:
    """Per command, the top-level keys docs/cli.md's JSON table lists (after schema_version), in order."""
    out: dict[str, list[str]] = {}
    command = ""
    for cells in _table_rows(cli_docs(), "| command | key | meaning |"):
        command = cells[0].strip("`") or command
        key = re.fullmatch(r"`([a-z_]+)`", cells[1])
        assert key, f"docs/cli.md JSON table: the key cell {cells[1]!r} is not one backticked name"
        out.setdefault(command, []).append(key.group(1))
    return out


def documented_exit_codes() -> set[int]:
    return {int(cells[0]) for cells in _table_rows(cli_docs(), "| exit code | meaning |")}


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    captured = capsys.readouterr()
    return int(exit_info.value.code or 0), captured.out, captured.err


def closed_port_uri() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there any more: connection refused


def fresh_store(template_db: Path, directory: Path) -> str:
    directory.mkdir(parents=True)
    shutil.copy(template_db, directory / "mlflow.db")
    return f"sqlite:///{directory / 'mlflow.db'}"


@pytest.fixture
def populated(sqlite_uri: str) -> str:
    cfg = mp.PersistConfig(
        tracking_uri=sqlite_uri,
        keep_best=5,
        keep_periodic=5,
        periodic_every_steps=2,
        min_free_disk_mb=1,
        min_free_disk_percent=0,
        log_system_metrics=False,
    )
    with mp.Persistence(cfg) as persist:
        for name in ("dqn", "cnn"):
            handle = persist.track(name, torch.nn.Linear(3, 2))
            for value in (5.0, 4.0, 4.5, 3.0):
                handle.step(loss=value)
                persist.flush(timeout=30)
    return sqlite_uri


@pytest.fixture
def fast_http_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    """An unreachable server fails at the first refused connection instead of after the CLI's retries."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")


def _recorded_episodes(template_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A store with 3 toy episodes in the `trading-system` run, and the toy target installed as the replay
    target (as tests/episodes/test_replay.py does)."""
    from mlflow import MlflowClient

    import mlflow_persist.trading.cli as trading_cli
    from mlflow_persist.episodes import EpisodeRecorder

    monkeypatch.syspath_prepend(str(ROOT / "tests" / "episodes"))
    from episode_fixtures import ToyTarget, make_episode, register_toy_version

    uri = fresh_store(template_db, tmp_path / "episodes")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("mlflow-persist", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(experiment, tags={"mlflow_persist.run_key": "trading-system"}).info.run_id
    target = ToyTarget()
    model = target.build_model("toy")
    version = register_toy_version(client, run_id, model, tmp_path, step=10)
    recorder = EpisodeRecorder(client, run_id, flush_rows=5)
    for i in range(3):
        recorder.record(make_episode(i, target, {"toy": model}, {"toy": version}))
    assert recorder.close()
    module = types.ModuleType("cli_contract_replay_target")
    for name in ("features_from_frames", "build_model", "decide"):
        setattr(module, name, getattr(target, name))
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setattr(trading_cli, "replay_target", lambda: module)
    return uri


# ------------------------------------------------------------------------------------------------ options


def test_every_subcommand_takes_config_and_shows_the_tracking_uri_env_var(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0
    assert sorted(typer.main.get_command(app).commands) == sorted(SUBCOMMANDS)  # type: ignore[attr-defined]
    for command in SUBCOMMANDS:
        code, out, err = run_cli(capsys, command, "--help")
        assert code == 0, err
        flat = re.sub(r"[\s│╭╮╰╯─]+", "", out)  # the help is a rich panel; its lines wrap at any width
        assert "--config" in flat and "--tracking-uri" in flat, (command, out)
        assert "[envvar:MLFLOW_TRACKING_URI]" in flat, (command, out)
        assert ("--json" in flat) == (command not in WITHOUT_JSON), (command, out)
        assert f"`{command}" in cli_docs(), f"docs/cli.md's command table misses {command}"


def test_tracking_uri_precedence(
    template_db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--tracking-uri > MLFLOW_PERSIST_TRACKING_URI > the --config file > MLFLOW_TRACKING_URI > ./mlflow.db."""
    uris = {name: fresh_store(template_db, tmp_path / name) for name in ("flag", "persist_env", "file", "mlflow_env")}
    config = tmp_path / "persist.toml"
    config.write_text(f'tracking_uri = "{uris["file"]}"\n')
    cwd = tmp_path / "cwd"
    cwd_uri = fresh_store(template_db, cwd)
    monkeypatch.chdir(cwd)

    def used(*args: str) -> str:
        code, out, err = run_cli(capsys, "status", "--json", *args)
        assert code == 0, err
        return json.loads(out)["tracking_uri"]

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uris["mlflow_env"])
    monkeypatch.setenv("MLFLOW_PERSIST_TRACKING_URI", uris["persist_env"])
    assert used("--tracking-uri", uris["flag"], "--config", str(config)) == uris["flag"]
    assert used("--config", str(config)) == uris["persist_env"]
    assert used() == uris["persist_env"]
    monkeypatch.delenv("MLFLOW_PERSIST_TRACKING_URI")
    assert used("--config", str(config)) == uris["file"]
    assert used() == uris["mlflow_env"]
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert used() == cwd_uri.replace(str(cwd), str(cwd.resolve()))


# ------------------------------------------------------------------------------------------------ JSON


def test_docs_document_the_json_keys_of_cli_schema_and_every_exit_code() -> None:
    documented = documented_json_keys()
    assert documented == {command: list(keys) for command, keys in cli_schema.JSON_KEYS.items()}
    assert set(documented) == set(SUBCOMMANDS) - WITHOUT_JSON
    assert documented_exit_codes() == set(cli_schema.EXIT_CODES)
    assert "`schema_version`" in cli_docs() and f"now `{cli_schema.SCHEMA_VERSION}`" in cli_docs()


def test_every_json_output_has_schema_version_and_exactly_the_documented_keys(
    populated: str,
    template_db: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    documented = documented_json_keys()
    replay_uri = _recorded_episodes(template_db, tmp_path, monkeypatch)
    config = tmp_path / "gc.toml"
    config.write_text(f'tracking_uri = "{populated}"\nkeep_best = 1\nkeep_periodic = 1\nkeep_final = 1\n')
    runs: dict[str, tuple[str, ...]] = {
        "status": ("status", "--tracking-uri", populated),
        "history": ("history", "dqn", "--tracking-uri", populated),
        "verify": ("verify", "--tracking-uri", populated),
        "gc": ("gc", "--dry-run", "--config", str(config)),
        "export": (
            "export",
            "dqn",
            "--format",
            "safetensors",
            "--out",
            str(tmp_path / "export"),
            "--tracking-uri",
            populated,
        ),
        "rollback": (
            "rollback",
            "cnn",
            "--back",
            "1",
            "--best",
            "--reason",
            "contract test",
            "--tracking-uri",
            populated,
        ),
        "import-legacy": ("import-legacy", str(LEGACY_NOMETA), "--dry-run", "--tracking-uri", populated),
        "migrate": ("migrate", "--dry-run", "--tracking-uri", populated),
        "replay": ("replay", "--sample", "3", "--seed", "1", "--tracking-uri", replay_uri),
    }
    assert set(runs) == set(documented)
    outputs: dict[str, dict[str, Any]] = {}
    for command, args in runs.items():
        code, out, err = run_cli(capsys, *args, "--json")
        assert code == 0, (command, err)
        data = json.loads(out)
        assert isinstance(data["schema_version"], int) and data["schema_version"] == cli_schema.SCHEMA_VERSION
        assert list(data) == ["schema_version", *documented[command]], command
        outputs[command] = data
    # The outputs are about the store they ran on.
    assert {m["model"] for m in outputs["status"]["models"]} == {"dqn", "cnn"}
    assert outputs["verify"]["checked"] > 0 and outputs["verify"]["corrupt"] == []
    assert outputs["gc"]["dry_run"] is True and outputs["gc"]["deleted"]
    assert outputs["rollback"]["best_moved"]["alias"] == "best"
    assert outputs["import-legacy"]["counts"]["planned"] == 3
    assert outputs["replay"]["replayed"] == outputs["replay"]["reproduced"] == 3


# ------------------------------------------------------------------------------------------------ exit codes


def test_exit_codes_0_1_2_3(populated: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, _ = run_cli(capsys, "status", "--tracking-uri", populated)
    assert code == cli_schema.EXIT_OK == 0

    code, _, err = run_cli(capsys, "history", "nope", "--tracking-uri", populated)
    assert code == cli_schema.EXIT_ERROR == 1 and "has no checkpoints" in err and err.count("\n") == 1

    for args in (("status", "--bogus"), ("history",), ("rollback", "cnn", "--to", "one")):
        code, _, err = run_cli(capsys, *args, "--tracking-uri", populated)
        assert code == cli_schema.EXIT_USAGE == 2, (args, err)
        assert err.count("\n") == 1 and "Traceback" not in err and "--help" in err, (args, err)

    store = MlflowStore(populated)
    victim = store.list_versions("cnn")[0]
    with store.checkpoint_dir(victim) as directory:
        (directory / "checkpoint.pt").write_bytes(b"garbage")
    code, out, _ = run_cli(capsys, "verify", "--tracking-uri", populated, "--json")
    assert code == cli_schema.EXIT_CORRUPT == 3
    assert [(r["model"], r["version"]) for r in json.loads(out)["corrupt"]] == [("cnn", victim.version)]
    code, out, _ = run_cli(capsys, "verify", "cnn", "--tracking-uri", populated)
    assert code == 3 and f"CORRUPT cnn v{victim.version}" in out


@pytest.mark.slow  # a fresh interpreter (the console script): seconds of imports
def test_unreachable_server_exits_4_through_the_console_script(tmp_path: Path) -> None:
    uri = closed_port_uri()
    env = dict(
        os.environ,
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT="5",
        MLFLOW_DISABLE_TELEMETRY="true",
    )
    proc = subprocess.run(
        [str(CONSOLE_SCRIPT), "status", "--json", "--tracking-uri", uri],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == cli_schema.EXIT_UNREACHABLE == 4, proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert uri in proc.stderr and "connection refused or timed out" in proc.stderr


def test_unreachable_store_exits_4_for_every_reading_command(
    fast_http_failures: None, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = closed_port_uri()
    for args in (
        ("history", "dqn"),
        ("verify",),
        ("gc", "--dry-run"),
        ("rollback", "dqn", "--back", "1"),
        ("migrate", "--dry-run"),
        ("replay", "--sample", "1"),
    ):
        code, _, err = run_cli(capsys, *args, "--tracking-uri", uri)
        assert code == 4, (args, err)
        assert err.count("\n") == 1 and "connection refused or timed out" in err, (args, err)


@pytest.mark.slow  # a fresh interpreter (the console script): seconds of imports
def test_a_refused_database_exits_4_in_seconds_not_after_mlflows_engine_retries(tmp_path: Path) -> None:
    """MLflow retries a database it cannot open 10 times over about 100 s; the CLI answers within the
    subprocess timeout below (a hang guard: a run of MLflow's retries would exceed it)."""
    _, port = closed_port_uri().rsplit(":", 1)
    postgres = f"postgresql+psycopg2://trainer:s3cret@127.0.0.1:{port}/mlflow"
    env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
    proc = subprocess.run(
        [str(CONSOLE_SCRIPT), "status", "--tracking-uri", postgres],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=40,
    )
    assert proc.returncode == 4, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("mlflow-persist: ") and "connection refused or timed out" in last
    assert "s3cret" not in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------------ legacy script


@pytest.mark.slow  # two fresh interpreters: seconds of imports each
def test_legacy_script_usage_errors_exit_2_in_one_line(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        MLFLOW_DISABLE_TELEMETRY="true",
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    for args, message in ((["--bogus"], "No such option: --bogus"), ([], "Missing argument")):
        proc = subprocess.run(
            [sys.executable, str(LEGACY_SCRIPT), *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=120,
        )
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, (args, proc.stderr)
        assert proc.stderr.startswith("error: ") and message in proc.stderr, (args, proc.stderr)
        assert "import_legacy_checkpoints.py --help" in proc.stderr, proc.stderr


def test_legacy_standalone_main_uses_the_same_exit_codes(
    fast_http_failures: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlflow_persist.legacy.cli import main as legacy_main

    assert legacy_main(["rollback"]) == 2
    assert legacy_main(["migrate", "--nope"]) == 2
    assert legacy_main(["import-legacy", str(tmp_path / "missing")]) == 1
    assert legacy_main(["migrate", "--tracking-uri", closed_port_uri()]) == 4
    assert legacy_main(["--help"], command="import-legacy") == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 4
