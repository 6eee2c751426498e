"""Paths of the committed legacy fixtures and a snapshot helper for the legacy tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # mlruns_fixtures (the whole-module pickle's class lives there)
    sys.path.insert(0, str(REPO_ROOT))

FIXTURES = REPO_ROOT / "mlruns_fixtures"
LEGACY_FULL = FIXTURES / "legacy_full" / "NN" / "models" / "saved"
LEGACY_NOMETA = FIXTURES / "legacy_nometa" / "saved"
WHOLE_MODULE = LEGACY_FULL / "cob_rl" / "cob_rl_20250605_110000.pt"


def snapshot(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under `directory` with its bytes, size and mtime_ns (directories' mtimes too)."""
    out: dict[str, tuple[bytes, int, int]] = {}
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            path = Path(root) / name
            stat = path.stat()
            data = path.read_bytes() if path.is_file() else b""
            out[path.relative_to(directory).as_posix()] = (data, stat.st_size, stat.st_mtime_ns)
    out["."] = (b"", 0, directory.stat().st_mtime_ns)
    return out
