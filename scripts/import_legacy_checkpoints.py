#!/usr/bin/env python3
"""Import a legacy CheckpointManager directory into MLflow (same as `mlflow-persist import-legacy`).

    python scripts/import_legacy_checkpoints.py NN/models/saved [--dry-run] [--trust FILE]... [--json]
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from mlflow_persist.legacy.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main(["import-legacy", *sys.argv[1:]]))
