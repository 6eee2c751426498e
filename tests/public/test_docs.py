"""The README's configuration reference is the one the typed config generates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_documents_every_config_field_with_its_default() -> None:
    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [row for row in module.reference_rows() if row not in readme]
    assert not missing, "README is out of date; regenerate with scripts/config_reference.py:\n" + "\n".join(missing)
