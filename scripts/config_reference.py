"""Print the configuration reference table of the README from the typed config itself.

Usage: python scripts/config_reference.py  (tests/public/test_docs.py checks the README holds this table)
"""

from __future__ import annotations

from mlflow_persist.config import ENV_PREFIX, ModelSettings, PersistConfig


def default_text(name: str) -> str:
    field = PersistConfig.model_fields[name]
    if name == "tracking_uri":
        return "`MLFLOW_TRACKING_URI`, else `sqlite:///<cwd>/mlflow.db`"
    if name == "models":
        return "`{}`"
    return f"`{field.default!r}`".replace("'", '"') if field.default is not None else "`None`"


def reference_rows() -> list[str]:
    rows = ["| field | default | environment variable | per model | meaning |", "|---|---|---|---|---|"]
    for name, field in PersistConfig.model_fields.items():
        env = f"`{ENV_PREFIX}MODELS__<NAME>__<FIELD>`" if name == "models" else f"`{ENV_PREFIX}{name.upper()}`"
        per_model = "yes" if name in ModelSettings.model_fields else "no"
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{name}` | {default_text(name)} | {env} | {per_model} | {description} |")
    return rows


if __name__ == "__main__":
    print("\n".join(reference_rows()))
