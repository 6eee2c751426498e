"""The legacy commands through the real command line (subprocesses, and the `mlflow-persist` entry point
in-process for the error paths), error paths included."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from legacy_support import LEGACY_FULL, LEGACY_NOMETA, REPO_ROOT, WHOLE_MODULE, snapshot
from zygote import Zygote


def _run(zygote: Zygote, args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """`python ARGS` as a child of a pre-imported Python (tests/zygote.py)."""
    return zygote.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=400)


@pytest.mark.slow
def test_cli_import_rollback_and_errors(
    tmp_path: Path, sqlite_uri: str, subprocess_env: dict, capsys: pytest.CaptureFixture[str], zygote: Zygote
) -> None:
    script = str(REPO_ROOT / "scripts" / "import_legacy_checkpoints.py")
    before = snapshot(LEGACY_FULL)
    dry = _run(
        zygote,
        [script, str(LEGACY_FULL), "--dry-run", "--json", "--tracking-uri", sqlite_uri],
        subprocess_env,
        tmp_path,
    )
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert json.loads(dry.stdout)["counts"]["planned"] == 9

    trust_list = tmp_path / "trusted.txt"
    trust_list.write_text(f"# operator-reviewed\n{WHOLE_MODULE}\n")
    out = _run(
        zygote,
        [script, str(LEGACY_FULL), "--trust-list", str(trust_list), "--json", "--tracking-uri", sqlite_uri],
        subprocess_env,
        tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.loads(out.stdout)
    assert data["counts"] == {"planned": 0, "imported": 10, "skipped": 1, "refused": 3, "failed": 0}
    assert all(item["reason"] for item in data["items"])
    assert snapshot(LEGACY_FULL) == before

    table = _run(
        zygote,
        [
            "-m",
            "mlflow_persist.legacy.cli",
            "import-legacy",
            str(LEGACY_FULL),
            "--strict",
            "--tracking-uri",
            sqlite_uri,
        ],
        subprocess_env,
        tmp_path,
    )
    assert table.returncode == 1 and "skipped 11" in " ".join(table.stdout.split()), table.stdout[-3000:]
    assert "refused (--strict)" in table.stderr

    ok = _run(
        zygote,
        [
            "-m",
            "mlflow_persist.cli",
            "rollback",
            "cnn",
            "--to",
            "1",
            "--best",
            "--reason",
            "test",
            "--json",
            "--tracking-uri",
            sqlite_uri,
        ],
        subprocess_env,
        tmp_path,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads(ok.stdout)["rollback_of"] == 1

    from mlflow_persist.cli.main import main

    for args, message in (
        (["rollback", "nosuchmodel", "--to", "1"], "no versions"),
        (["rollback", "cnn", "--to", "99"], "no version 99"),
        (["rollback", "cnn", "--back", "0"], "--back 0"),
        (["rollback", "cnn", "--to", "1", "--back", "1"], "exactly one"),
        (["import-legacy", str(tmp_path / "missing")], "does not exist"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([*args, "--tracking-uri", sqlite_uri])
        stderr = capsys.readouterr().err
        assert exit_info.value.code == 1 and message in stderr, (args, stderr[-2000:])
        assert len(stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_cli_migrate_and_nometa_import(tmp_path: Path, subprocess_env: dict, zygote: Zygote) -> None:
    from mlruns_fixtures.generate import materialize_format1_store

    uri = materialize_format1_store(tmp_path / "store")
    env = dict(subprocess_env, MLFLOW_PERSIST_EXPERIMENT_NAME="mlflow_persist")
    dry = _run(
        zygote,
        ["-m", "mlflow_persist.legacy.cli", "migrate", "--dry-run", "--json", "--tracking-uri", uri],
        env,
        tmp_path,
    )
    assert dry.returncode == 0, dry.stderr[-2000:]
    assert len(json.loads(dry.stdout)["steps"]) == 5
    done = _run(zygote, ["-m", "mlflow_persist.legacy.cli", "migrate", "--tracking-uri", uri], env, tmp_path)
    assert done.returncode == 0 and "migration to checkpoint format" in done.stdout
    again = _run(zygote, ["-m", "mlflow_persist.legacy.cli", "migrate", "--tracking-uri", uri], env, tmp_path)
    assert again.returncode == 0 and "Nothing to migrate" in again.stdout
    nometa = _run(
        zygote,
        [
            "-m",
            "mlflow_persist.legacy.cli",
            "import-legacy",
            str(LEGACY_NOMETA),
            "--rename",
            "cob_rl=cob",
            "--json",
            "--tracking-uri",
            uri,
        ],
        env,
        tmp_path,
    )
    assert nometa.returncode == 0, nometa.stderr[-2000:]
    data = json.loads(nometa.stdout)
    assert data["counts"]["imported"] == 3 and "no checkpoint_metadata.json" in data["metadata_problem"]
    assert {i["model"] for i in data["items"]} == {"cnn", "dqn", "cob"}
