from __future__ import annotations

from pathlib import Path

import pytest

from mlflow_persist import ConfigError, PersistConfig


def test_defaults_and_tracking_uri_fallbacks(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    cfg = PersistConfig()
    assert cfg.tracking_uri == f"sqlite:///{tmp_path.resolve().as_posix()}/mlflow.db"
    assert (cfg.experiment_name, cfg.monitor, cfg.mode, cfg.resume_from) == ("mlflow-persist", "loss", "min", "latest")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert PersistConfig().tracking_uri == "http://127.0.0.1:5999"


def test_environment_overrides_file_and_arguments_override_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    toml = tmp_path / "mlflow_persist.toml"
    toml.write_text(
        'monitor = "loss"\nkeep_best = 4\nperiodic_every_steps = 100\n'
        '[models.cnn]\nmonitor = "accuracy"\nmode = "max"\nmin_delta = 0.01\n'
    )
    monkeypatch.setenv("MLFLOW_PERSIST_KEEP_BEST", "7")
    monkeypatch.setenv("MLFLOW_PERSIST_PERIODIC_EVERY_MINUTES", "2.5")
    cfg = PersistConfig.load(toml, periodic_every_steps=None)
    assert cfg.keep_best == 7 and cfg.periodic_every_minutes == 2.5 and cfg.periodic_every_steps is None
    cnn, dqn = cfg.for_model("cnn"), cfg.for_model("dqn")
    assert (cnn.monitor, cnn.mode, cnn.min_delta, cnn.keep_best) == ("accuracy", "max", 0.01, 7)
    assert (dqn.monitor, dqn.mode) == ("loss", "min")
    monkeypatch.setenv("MLFLOW_PERSIST_PERIODIC_EVERY_STEPS", "none")
    assert PersistConfig().periodic_every_steps is None
    monkeypatch.setenv("MLFLOW_PERSIST_MONITOR", "None")
    assert PersistConfig().for_model("dqn").monitor is None


@pytest.mark.parametrize(
    "field,value",
    [
        ("mode", "sideways"),
        ("min_delta", -1),
        ("keep_best", 0),
        ("periodic_every_minutes", 0),
        ("resume_from", "oldest"),
    ],
)
def test_wrong_values_name_field_value_and_rule(field: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        PersistConfig(**{field: value})
    message = str(info.value)
    assert field in message and repr(value) in message


def test_wrong_per_model_override_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"models\.cnn.*mode"):
        PersistConfig(models={"cnn": {"mode": "up"}})
    with pytest.raises(ConfigError, match="unknown_field"):
        PersistConfig(models={"cnn": {"unknown_field": 1}})
    with pytest.raises(ConfigError, match="does not exist"):
        PersistConfig.load(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("keep_best = = 3")
    with pytest.raises(ConfigError, match="not valid TOML"):
        PersistConfig.load(broken)


def test_one_field_of_one_model_comes_from_the_environment_merged_with_the_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    toml = tmp_path / "mlflow_persist.toml"
    toml.write_text(
        'keep_best = 4\n[models.cnn]\nmonitor = "accuracy"\nmode = "max"\n[models.dqn]\nmonitor = "reward"\n'
    )
    monkeypatch.setenv("MLFLOW_PERSIST_MODELS__CNN__MONITOR", "heldout_loss")
    monkeypatch.setenv("MLFLOW_PERSIST_MODELS__CNN__MIN_DELTA", "0.25")
    monkeypatch.setenv("MLFLOW_PERSIST_MODELS__EXTREMA__PERIODIC_EVERY_STEPS", "none")
    cfg = PersistConfig.load(toml)
    cnn = cfg.for_model("cnn")
    # The variable replaced the file's monitor, added min_delta, and left the file's mode alone.
    assert (cnn.monitor, cnn.mode, cnn.min_delta, cnn.keep_best) == ("heldout_loss", "max", 0.25, 4)
    assert cfg.for_model("dqn").monitor == "reward"
    assert cfg.for_model("CNN").monitor == "heldout_loss"  # the environment's names arrive lower-cased
    assert cfg.for_model("extrema").periodic_every_steps is None
    # An explicit argument still beats the environment, field by field.
    explicit = PersistConfig.load(toml, models={"cnn": {"monitor": "loss"}})
    assert (explicit.for_model("cnn").monitor, explicit.for_model("cnn").min_delta) == ("loss", 0.25)


def test_a_wrong_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_PERSIST_KEEP_BEST", "seven")
    with pytest.raises(ConfigError, match=r"keep_best='seven' \(from MLFLOW_PERSIST_KEEP_BEST\)"):
        PersistConfig()
    monkeypatch.delenv("MLFLOW_PERSIST_KEEP_BEST")
    monkeypatch.setenv("MLFLOW_PERSIST_MODELS__CNN__MODE", "sideways")
    with pytest.raises(ConfigError, match=r"models\.cnn.*mode='sideways'"):
        PersistConfig()
    monkeypatch.delenv("MLFLOW_PERSIST_MODELS__CNN__MODE")
    monkeypatch.setenv("MLFLOW_PERSIST_MODELS", "{not json")
    with pytest.raises(ConfigError, match="environment"):
        PersistConfig()
