"""Import of the committed legacy fixture into a real sqlite store: outcomes, weights, idempotency, read-only."""

from __future__ import annotations

from datetime import UTC

import torch
from legacy_support import LEGACY_FULL, WHOLE_MODULE, snapshot

import mlflow_persist as mp
from mlflow_persist._policy.versions import digest_tags
from mlflow_persist._store.alias_log import alias_moves
from mlflow_persist._store.mlflow_store import tag
from mlflow_persist.legacy.importer import execute_plan, plan_import


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_import_fixture_end_to_end(store, sqlite_uri) -> None:
    before = snapshot(LEGACY_FULL)
    report = execute_plan(store, plan_import(store, LEGACY_FULL, trusted=[WHOLE_MODULE]))
    assert snapshot(LEGACY_FULL) == before  # bytes and times unchanged
    status = {r.item.label: r.status for r in report.results}
    assert status.pop("NN/models/saved/dqn/dqn_20250501_000000.pt") == "skipped"
    assert sorted(k for k, v in status.items() if v == "refused") == [
        "extrema/extrema_20250607_150000.pt",
        "extrema/extrema_20250608_150000.pt",
        "extrema/extrema_20250610_150000.pt",
    ]
    assert report.count("imported") == 10 and not report.failed
    assert all(r.reason for r in report.results)

    # Oldest first: the newest legacy checkpoint is each model's newest version.
    for model in ("cnn", "dqn", "extrema"):
        versions = store.list_versions(model)
        created = [v.created_at for v in versions]
        assert created == sorted(created)
        assert all(v.category == "legacy" for v in versions)

    # Weights after import and load_checkpoint equal the legacy weights tensor for tensor.
    for result in report.results:
        if result.status != "imported":
            continue
        file = result.item.file
        raw = torch.load(file.path, weights_only=False)  # the test's own committed fixture
        state = mp.load_checkpoint(f"models:/{result.item.model}/{result.version}", tracking_uri=sqlite_uri)
        if isinstance(raw, torch.nn.Module):
            assert _equal(dict(state.model_state), dict(raw.state_dict()))
        elif "policy_net" in raw:
            assert _equal(dict(state.model_state), dict(raw["policy_net"]))
            assert _equal(dict(state.extra_state["target_net"]), dict(raw["target_net"]))
            assert state.extra_state["epsilon"] == raw["epsilon"]
        elif "model_state_dict" in raw:
            assert _equal(dict(state.model_state), dict(raw["model_state_dict"]))
            assert state.optimizer_state["state"].keys() == raw["optimizer_state_dict"]["state"].keys()
        else:
            assert _equal(dict(state.model_state), dict(raw))
        info = store.get_version(result.item.model, result.version)
        assert info.tags[tag("legacy_path")] == file.path.as_posix()
        assert info.tags[tag("legacy_checkpoint_id")] == file.checkpoint_id
        assert info.tags[tag("created_at")] == file.created_at.isoformat(timespec="microseconds")
        assert info.tags["mlflow_persist.legacy_sha256"] == file.sha256

    # best: by performance_score; recorded as an alias move.
    best = store.alias_version("cnn")
    assert best.tags[tag("legacy_checkpoint_id")] == "cnn_20250615_120000"
    assert [m.to_version for m in alias_moves(store.client, "cnn")] == [best.version]

    # Metrics on the model's run at their original time.
    run_id = store.find_run("dqn")
    history = store.client.get_metric_history(run_id, "reward")
    stamps = sorted(m.timestamp for m in history)
    dqn_files = sorted(
        (r.item.file for r in report.results if r.item.model == "dqn" and r.status == "imported"),
        key=lambda f: f.created_at,
    )
    assert stamps == [int(f.created_at.astimezone(UTC).timestamp() * 1000) for f in dqn_files]

    # A second import adds nothing.
    counts = {m: len(store.list_versions(m)) for m in ("cnn", "dqn", "extrema", "cob_rl", "dqn_agent", "cnn_model")}
    again = execute_plan(store, plan_import(store, LEGACY_FULL, trusted=[WHOLE_MODULE]))
    assert again.count("imported") == 0 and again.count("skipped") == 11
    assert {m: len(store.list_versions(m)) for m in counts} == counts
    assert len(store.client.get_metric_history(run_id, "reward")) == len(history)
    assert snapshot(LEGACY_FULL) == before


def test_dry_run_writes_nothing_and_best_is_kept(store) -> None:
    report = execute_plan(store, plan_import(store, LEGACY_FULL), dry_run=True)
    assert report.count("planned") == 9 and report.count("refused") == 4
    assert store.client.search_registered_models() == []
    # A model that already has `best` keeps it.
    run_id = store.ensure_run("cnn")
    model = torch.nn.Linear(2, 2)
    from mlflow_persist._format.payload import build_payload

    source, written = store.write_checkpoint(
        run_id,
        "cnn",
        1,
        build_payload(
            model_name="cnn", model_state=model.state_dict(), step=1, metrics={"loss": 0.1}, category="performance"
        ),
    )
    info = store.register_version(
        "cnn",
        source,
        run_id,
        {tag("category"): "performance", **digest_tags(written.digest), tag("monitor"): "loss", tag("value"): 0.1},
    )
    store.set_best("cnn", info.version)
    execute_plan(store, plan_import(store, LEGACY_FULL))
    assert store.alias_version("cnn").version == info.version
    assert len(store.list_versions("cnn")) == 4
