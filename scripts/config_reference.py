"""The configuration reference table, generated from the typed config itself.

`make docs` puts it into docs/configuration.md at build time (docs/hooks.py replaces the page's
`<!-- config-reference -->` marker with `reference_markdown()`), so the page cannot drift from the code.
`undocumented()` names every field that lacks a description or a default; the build and
tests/public/test_docs.py fail while any does.

Usage: python scripts/config_reference.py  (prints the table)
"""

from __future__ import annotations

from typing import Any

from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from mlflow_persist.config import ENV_PREFIX, ModelSettings, PersistConfig

__all__ = ["MARKER", "default_text", "reference_markdown", "reference_rows", "undocumented"]

#: The line of docs/configuration.md that the build replaces with the table.
MARKER = "<!-- config-reference -->"
#: Defaults that are computed at run time, described in words.
COMPUTED_DEFAULTS = {"tracking_uri": "`MLFLOW_TRACKING_URI`, else `sqlite:///<cwd>/mlflow.db`"}


def _has_default(field: FieldInfo) -> bool:
    return field.default is not PydanticUndefined or field.default_factory is not None


def _default_value(field: FieldInfo) -> Any:
    return field.get_default(call_default_factory=True, validated_data={})


def default_text(name: str) -> str:
    """The default of field `name` as the table shows it."""
    if name in COMPUTED_DEFAULTS:
        return COMPUTED_DEFAULTS[name]
    field = PersistConfig.model_fields[name]
    if not _has_default(field):
        return "(none: required)"
    value = _default_value(field)
    return "`None`" if value is None else f"`{value!r}`".replace("'", '"')


def undocumented() -> list[str]:
    """Every config field without a description or without a default: each must have both."""
    problems = []
    for name, field in PersistConfig.model_fields.items():
        if not (field.description or "").strip():
            problems.append(f"{name}: no description")
        if not _has_default(field):
            problems.append(f"{name}: no default")
    return problems


def reference_rows() -> list[str]:
    rows = ["| field | default | environment variable | per model | meaning |", "|---|---|---|---|---|"]
    for name, field in PersistConfig.model_fields.items():
        env = f"`{ENV_PREFIX}MODELS__<NAME>__<FIELD>`" if name == "models" else f"`{ENV_PREFIX}{name.upper()}`"
        per_model = "yes" if name in ModelSettings.model_fields else "no"
        description = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{name}` | {default_text(name)} | {env} | {per_model} | {description} |")
    return rows


def reference_markdown() -> str:
    """The whole table; raises ValueError while a field lacks a description or a default."""
    problems = undocumented()
    if problems:
        raise ValueError("config fields without a documented default: " + "; ".join(problems))
    return "\n".join(reference_rows())


if __name__ == "__main__":
    print(reference_markdown())
