"""Pure scanner/planner tests: every fixture variant classified, path joins, timestamps, the old score, best."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import torch
from legacy_support import LEGACY_FULL, LEGACY_NOMETA, WHOLE_MODULE, snapshot

from mlflow_persist.errors import ConfigError, NotFoundError
from mlflow_persist.legacy.classify import classify_bytes
from mlflow_persist.legacy.metadata import parse_legacy_time, read_metadata, split_legacy_path
from mlflow_persist.legacy.plan import ExistingModel, build_plan, parse_renames
from mlflow_persist.legacy.scan import model_name_for, scan_legacy_dir
from mlflow_persist.legacy.score import performance_score

EXPECTED = {  # rel path -> (model, shape or problem kind, created_at source)
    "cnn/cnn_20250601_101500.pt": ("cnn", "state_dict_dict", "metadata"),
    "cnn/cnn_20250615_120000.pt": ("cnn", "state_dict_dict", "metadata"),
    "cnn/cnn_20250620_080000.pt": ("cnn", "bare_state_dict", "mtime"),
    "dqn/dqn_20250610_090000.pt": ("dqn", "dqn_dict", "metadata"),
    "dqn/dqn_20250612_093000.pt": ("dqn", "dqn_dict", "metadata"),
    "cob_rl/cob_rl_20250605_110000.pt": ("cob_rl", "untrusted_pickle", "metadata"),
    "extrema/extrema_20250607_150000.pt": ("extrema", "truncated", "metadata"),
    "extrema/extrema_20250608_150000.pt": ("extrema", "empty", "metadata"),
    "extrema/extrema_20250609_150000.pt": ("extrema", "state_dict_dict", "metadata"),
    "extrema/extrema_20250610_150000.pt": ("extrema", "not_torch", "mtime"),
    "dqn_agent_best.pt": ("dqn_agent", "dqn_dict", "mtime"),
    "cnn_model_final.pt": ("cnn_model", "bare_state_dict", "mtime"),
    "extrema_3.pt": ("extrema", "state_dict_dict", "mtime"),
}


def test_every_fixture_variant_is_classified_and_the_directory_is_untouched() -> None:
    before = snapshot(LEGACY_FULL)
    scan = scan_legacy_dir(LEGACY_FULL)
    assert snapshot(LEGACY_FULL) == before
    got = {f.rel: (f.model_name, f.shape or f.problem_kind, f.created_at_source) for f in scan.files}
    assert got == EXPECTED
    assert [s.entry.checkpoint_id for s in scan.stale] == ["dqn_20250501_000000"]
    assert scan.metadata.present
    for f in scan.files:
        if f.created_at_source == "mtime":
            assert f.created_at == datetime.fromtimestamp(f.path.stat().st_mtime_ns / 1e9, tz=UTC)
        assert f.created_at.tzinfo is not None


def test_windows_absolute_and_relative_paths_join_their_files() -> None:
    scan = scan_legacy_dir(LEGACY_FULL)
    joined = {f.rel: f.entry.file_path for f in scan.files if f.entry is not None}
    assert joined["dqn/dqn_20250612_093000.pt"].startswith("C:\\Users")
    assert joined["dqn/dqn_20250610_090000.pt"].startswith("/home/trader")
    assert "\\" in joined["cnn/cnn_20250615_120000.pt"]
    dqn = next(f for f in scan.files if f.rel == "dqn/dqn_20250612_093000.pt")
    assert dqn.metrics["win_rate"] == 0.58 and dqn.metrics["reward"] == 20.0  # unknown fields are kept
    assert split_legacy_path("C:\\a\\NN\\models\\saved\\dqn\\x.pt") == ("a", "NN", "models", "saved", "dqn", "x.pt")
    assert split_legacy_path("./NN//models/saved/x.pt") == ("NN", "models", "saved", "x.pt")


def test_missing_metadata_is_not_fatal() -> None:
    scan = scan_legacy_dir(LEGACY_NOMETA)
    assert not scan.metadata.present and "no checkpoint_metadata.json" in (scan.metadata.problem or "")
    assert {f.rel: (f.model_name, f.shape) for f in scan.files} == {
        "cnn/cnn_20250101_000000.pt": ("cnn", "state_dict_dict"),
        "dqn/dqn_20250102_000000.pt": ("dqn", "dqn_dict"),
        "cob_rl_1.pt": ("cob_rl", "bare_state_dict"),
    }
    cnn = next(f for f in scan.files if f.model_name == "cnn")
    assert cnn.step == 7 and cnn.metrics["performance_score"] == pytest.approx(
        performance_score({"accuracy": 0.5, "loss": 0.7})
    )


def test_unreadable_metadata_is_reported(tmp_path: Path) -> None:
    (tmp_path / "checkpoint_metadata.json").write_text("{not json")
    index = read_metadata(tmp_path)
    assert not index.present and "unreadable" in (index.problem or "")


def test_created_at_with_and_without_microseconds() -> None:
    utc = UTC
    assert parse_legacy_time("2025-06-01T10:15:00.123456", utc) == datetime(2025, 6, 1, 10, 15, 0, 123456, utc)
    assert parse_legacy_time("2025-06-15T12:00:00", utc) == datetime(2025, 6, 15, 12, 0, tzinfo=utc)
    east = timezone(timedelta(hours=3))
    assert parse_legacy_time("2025-06-15T12:00:00", east) == datetime(2025, 6, 15, 9, 0, tzinfo=utc)
    assert parse_legacy_time("yesterday") is None and parse_legacy_time(None) is None


def test_old_performance_score_formula() -> None:
    assert performance_score({}) == 0.1
    assert performance_score(
        {"accuracy": 0.5, "val_accuracy": 0.25, "loss": 12.0, "val_loss": 1.0, "reward": 2.0, "pnl": -1.0}
    ) == pytest.approx(50 + 25 + 0 + 9 + 2 - 1)
    assert performance_score({"loss": None, "reward": 3.0}) == 3.0


def test_loose_file_names() -> None:
    assert model_name_for(("dqn_agent_best.pt",)) == "dqn_agent"
    assert model_name_for(("cnn_model_final.pt",)) == "cnn_model"
    assert model_name_for(("extrema_3.pt",)) == "extrema"
    assert model_name_for(("cnn", "cnn_20250101_000000.pt")) == "cnn"


def test_whole_module_only_loads_when_trusted() -> None:
    data = WHOLE_MODULE.read_bytes()
    refused = classify_bytes(data)
    assert refused.payload is None and refused.kind == "untrusted_pickle" and "--trust" in (refused.problem or "")
    trusted = classify_bytes(data, trusted=True)
    assert trusted.payload is not None and trusted.payload.shape == "whole_module"
    module = torch.load(WHOLE_MODULE, weights_only=False)
    for key, tensor in module.state_dict().items():
        assert torch.equal(trusted.payload.model_state[key], tensor)


def test_plan_orders_oldest_first_and_picks_best_by_metric() -> None:
    scan = scan_legacy_dir(LEGACY_FULL, trusted=[WHOLE_MODULE])
    plan = build_plan(scan, {})
    imports = plan.imports
    assert [i.file.created_at for i in imports] == sorted(i.file.created_at for i in imports)
    assert len(imports) == 10  # 13 files - truncated - empty - text
    best = {i.model: i.file.rel for i in imports if i.becomes_best}
    assert best == {
        "cnn": "cnn/cnn_20250615_120000.pt",
        "dqn": "dqn/dqn_20250612_093000.pt",
        "cob_rl": "cob_rl/cob_rl_20250605_110000.pt",
        "extrema": "extrema/extrema_20250609_150000.pt",
    }
    by_loss = build_plan(scan, {}, metric="loss", mode="min")
    assert {i.model: i.file.rel for i in by_loss.imports if i.becomes_best}[
        "extrema"
    ] == "extrema/extrema_20250609_150000.pt"
    refused = {i.label: i.reason for i in plan.by_action("refuse")}
    assert set(refused) == {
        "extrema/extrema_20250607_150000.pt",
        "extrema/extrema_20250608_150000.pt",
        "extrema/extrema_20250610_150000.pt",
    }


def test_plan_skips_what_the_store_has_and_keeps_an_existing_best() -> None:
    scan = scan_legacy_dir(LEGACY_FULL)
    first = next(f for f in scan.files if f.rel == "cnn/cnn_20250615_120000.pt")
    plan = build_plan(scan, {"cnn": ExistingModel({first.sha256: 7}, has_best=True)})
    item = next(i for i in plan.items if i.file is first)
    assert item.action == "skip" and "v7" in item.reason
    assert not any(i.becomes_best for i in plan.items if i.model == "cnn")


def test_renames_and_prefix() -> None:
    scan = scan_legacy_dir(LEGACY_FULL)
    plan = build_plan(scan, {}, renames=parse_renames(["dqn_agent=dqn"]), prefix="prod-")
    loose = next(i for i in plan.items if i.file is not None and i.file.rel == "dqn_agent_best.pt")
    assert loose.model == "prod-dqn"
    with pytest.raises(ConfigError):
        parse_renames(["nonsense"])


def test_missing_directory_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        scan_legacy_dir(tmp_path / "nope")
