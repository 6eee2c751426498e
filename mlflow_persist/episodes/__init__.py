"""Complete training episodes stored as Parquet artifacts of an MLflow run, replayable exactly.

recorder = EpisodeRecorder(client, run_id)          # record() on the decision path, cheap
recorder.record(episode)                            # Episode, dict of its fields, or obj.to_dict()
recorder.flush()                                    # e.g. from the scheduler job; close() at shutdown
store = EpisodeStore(client, run_id)                # list / get / in_range / sample / verify
report = replay(store.load(store.sample(25)), target, tracking_uri=uri)
"""

from __future__ import annotations

from mlflow_persist.episodes.errors import EpisodeEncodingError, EpisodeFormatError
from mlflow_persist.episodes.frames import assert_frames_identical, frame_fingerprint
from mlflow_persist.episodes.model import SCHEMA_VERSION, Episode, new_episode_id
from mlflow_persist.episodes.recorder import EpisodeRecorder, RecorderStats
from mlflow_persist.episodes.replay import (
    ReplayReport,
    ReplayTarget,
    RetrainSummary,
    iter_training_cases,
    replay,
    replay_ids,
    retrain_range,
)
from mlflow_persist.episodes.store import EpisodeFailure, EpisodeStore
from mlflow_persist.episodes.tensors import state_fingerprint, tensors_identical

__all__ = [
    "SCHEMA_VERSION",
    "Episode",
    "EpisodeEncodingError",
    "EpisodeFailure",
    "EpisodeFormatError",
    "EpisodeRecorder",
    "EpisodeStore",
    "RecorderStats",
    "ReplayReport",
    "ReplayTarget",
    "RetrainSummary",
    "assert_frames_identical",
    "frame_fingerprint",
    "iter_training_cases",
    "new_episode_id",
    "replay",
    "replay_ids",
    "retrain_range",
    "state_fingerprint",
    "tensors_identical",
]
