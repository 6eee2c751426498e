"""The legacy commands through the real command line (subprocesses, and the `mlflow-persist` entry point
in-process for the error paths), error paths included."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from legacy_support import LEGACY_FULL, LEGACY_NOMETA, REPO_ROOT, WHOLE_MODULE, snapshot
from zygote import Zygote

from mlflow_persist._format.payload import FORMAT_VERSION

TAG = "mlflow_persist."


def _run(zygote: Zygote, args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    """`python ARGS` as a child of a pre-imported Python (tests/zygote.py)."""
    return zygote.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=400)


def _registry(uri: str) -> dict[str, Any]:
    """What the registry holds, read with MLflow's own client: per registered model its aliases and, per
    version, its source and tags."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    return {
        model.name: {
            "aliases": dict(model.aliases),
            "versions": {
                int(v.version): {"source": v.source, **v.tags}
                for v in client.search_model_versions(f"name='{model.name}'")
            },
        }
        for model in client.search_registered_models()
    }


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _check_imported(registry: dict[str, Any], report: dict[str, Any], base: Path) -> None:
    """Every version the report calls imported is in the registry as a `legacy` version of that model, made
    from a file under `base` whose bytes have the recorded sha256; and the registry holds no other."""
    claimed = {(item["model"], item["version"]) for item in report["items"] if item["status"] == "imported"}
    legacy = {
        (name, version): tags
        for name, model in registry.items()
        for version, tags in model["versions"].items()
        if tags.get(f"{TAG}category") == "legacy"
    }
    assert set(legacy) == claimed, (sorted(legacy), sorted(claimed))
    for (name, version), tags in legacy.items():
        path = Path(tags[f"{TAG}legacy_path"])
        assert path.is_relative_to(base), (name, version, path)
        assert tags[f"{TAG}legacy_sha256"] == _sha256(path), (name, version, path)


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
    assert _registry(sqlite_uri) == {}  # a dry run registers nothing

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
    imported = _registry(sqlite_uri)
    _check_imported(imported, data, LEGACY_FULL)
    assert sum(len(model["versions"]) for model in imported.values()) == 10

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
    assert "refused (--strict)" in table.stderr  # the refusal's message: what the operator reads
    assert _registry(sqlite_uri) == imported  # refused: the registry is as the first import left it

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
    cnn = _registry(sqlite_uri)["cnn"]
    new_versions = set(cnn["versions"]) - set(imported["cnn"]["versions"])
    assert len(new_versions) == 1, new_versions  # one new version, on v1's files, and `best` points at it
    rolled = cnn["versions"][new_versions.pop()]
    assert rolled[f"{TAG}category"] == "rollback" and rolled[f"{TAG}rollback_of"] == "1"
    assert rolled["source"] == cnn["versions"][1]["source"]
    assert int(cnn["aliases"]["best"]) == max(cnn["versions"])

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
    steps = json.loads(dry.stdout)["steps"]
    assert len(steps) == 5
    before = _registry(uri)
    best_before = {name: _load(uri, f"models:/{name}@best") for name in ("cnn", "dqn")}
    assert all(state.format_version == 1 for state in best_before.values())
    assert {(s["model"], s["old_version"]) for s in steps} <= {
        (name, version) for name, model in before.items() for version in model["versions"]
    }

    done = _run(zygote, ["-m", "mlflow_persist.legacy.cli", "migrate", "--tracking-uri", uri], env, tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    migrated = _registry(uri)
    _check_migrated(before, migrated, steps)
    for name, state in best_before.items():  # `best` moved to the migrated copy: the same tensors, new format
        after = _load(uri, f"models:/{name}@best")
        assert after.format_version == FORMAT_VERSION and after.step == state.step
        assert after.model_state.keys() == state.model_state.keys()
        assert all(torch.equal(after.model_state[k], v) for k, v in state.model_state.items()), name

    again = _run(zygote, ["-m", "mlflow_persist.legacy.cli", "migrate", "--tracking-uri", uri], env, tmp_path)
    assert again.returncode == 0 and "Nothing to migrate" in again.stdout  # what the operator is told
    assert _registry(uri) == migrated  # and nothing was done
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
    imported = _registry(uri)
    _check_imported(imported, data, LEGACY_NOMETA)
    grown = {name for name, model in imported.items() if len(model["versions"]) > len(_versions_of(migrated, name))}
    assert grown == {"cnn", "dqn", "cob"}  # `--rename cob_rl=cob`: registered under the new name


def _versions_of(registry: dict[str, Any], name: str) -> dict[int, dict[str, str]]:
    return registry[name]["versions"] if name in registry else {}


def _load(uri: str, model_uri: str) -> Any:
    import mlflow_persist as mp

    return mp.load_checkpoint(model_uri, tracking_uri=uri, experiment_name="mlflow_persist")


def _check_migrated(before: dict[str, Any], after: dict[str, Any], steps: list[dict[str, Any]]) -> None:
    """Each planned step made one new version in the current format from its old version, which is kept and
    points at it; nothing else changed."""
    new = {
        (name, version): tags
        for name, model in after.items()
        for version, tags in model["versions"].items()
        if version not in _versions_of(before, name)
    }
    assert len(new) == len(steps), sorted(new)
    assert {(name, int(tags[f"{TAG}migrated_from"])) for (name, _), tags in new.items()} == {
        (s["model"], s["old_version"]) for s in steps
    }
    for (name, version), tags in new.items():
        assert tags[f"{TAG}format_version"] == str(FORMAT_VERSION), (name, version, tags)
        old = after[name]["versions"][int(tags[f"{TAG}migrated_from"])]
        assert old[f"{TAG}migrated_to"] == str(version), (name, version, old)
    for name, model in before.items():
        kept = {v: t for v, t in after[name]["versions"].items() if v in model["versions"]}
        assert kept.keys() == model["versions"].keys(), name  # the old versions are kept
        assert {v: t["source"] for v, t in kept.items()} == {v: t["source"] for v, t in model["versions"].items()}
        best = after[name]["aliases"].get("best")
        if best is not None:
            assert (name, int(best)) in new, (name, best)  # `best` moved to a migrated version
