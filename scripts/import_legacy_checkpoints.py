#!/usr/bin/env python3
"""Import a legacy CheckpointManager directory into MLflow (same as `mlflow-persist import-legacy`).

    python scripts/import_legacy_checkpoints.py NN/models/saved [--dry-run] [--trust FILE]... [--json]

Exit codes as `mlflow-persist`: 0 ok, 1 error, 2 usage (one line on stderr, no traceback), 4 store unreachable.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow_persist.legacy.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:], command="import-legacy"))
