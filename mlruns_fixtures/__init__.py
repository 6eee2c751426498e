"""Committed test fixtures: a legacy CheckpointManager directory and a format-1 MLflow store.

`generate.py` writes them; `legacy_models.py` defines the tiny modules they hold (a whole pickled
module needs its class importable to be loaded, and only when the operator trusts the file).
"""
