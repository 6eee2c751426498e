"""Dataset lineage: each flush's index is logged as an MLflow dataset input of the run."""

from __future__ import annotations

import logging
import warnings

import mlflow
import pandas as pd
from mlflow.entities import DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

__all__ = ["CONTEXT", "DATASET_NAME", "log_index_dataset"]

log = logging.getLogger(__name__)
DATASET_NAME = "episodes"
CONTEXT = "episodes"


def log_index_dataset(
    client: mlflow.MlflowClient,
    run_id: str,
    index: pd.DataFrame,
    source_uri: str,
    *,
    name: str = DATASET_NAME,
    context: str = CONTEXT,
) -> None:
    """Log `index` (the episodes just stored) as a dataset input of `run_id`, sourced at `source_uri`."""
    summary = index.drop(columns=["action", "checkpoint_versions"], errors="ignore")
    with warnings.catch_warnings():  # MLflow's schema-inference hints are noise here
        warnings.simplefilter("ignore", UserWarning)
        try:
            dataset = mlflow.data.from_pandas(summary, source=source_uri, name=name)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - an unrecognised URI scheme: keep lineage, drop the source link
            log.debug("dataset source %s not resolvable; logging the episode index without a source", source_uri)
            dataset = mlflow.data.from_pandas(summary, name=name)  # type: ignore[attr-defined]
        entity = dataset._to_mlflow_entity()
    client.log_inputs(
        run_id, datasets=[DatasetInput(dataset=entity, tags=[InputTag(key=MLFLOW_DATASET_CONTEXT, value=context)])]
    )
