"""The MLflow store's runs: one continuous run per model key, its metrics, tags and artifact location."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, RunStatus, RunTag
from mlflow.exceptions import MlflowException

from mlflow_persist._format.atomic import durable_directory
from mlflow_persist._policy.versions import RUN_KEY_TAG, RunSummary, tag
from mlflow_persist._store.mlflow_connection import MlflowConnection
from mlflow_persist._store.sqlite import sqlite_dir
from mlflow_persist._store.translate import local_path, translated
from mlflow_persist.errors import NotFoundError, StoreError

__all__ = ["MlflowRuns"]


#: How often `ensure_run` settles again when the run it chose was deleted by a process that found an older one.
RUN_SETTLE_ATTEMPTS = 5


class MlflowRuns(MlflowConnection):
    """Runs, their metrics and tags, and where their artifacts live."""

    def _runs_for_key(self, key: str) -> list[Any]:
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{RUN_KEY_TAG}` = '{key}'",
            order_by=["attributes.start_time ASC"],
            max_results=50,
        )
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    def find_run(self, key: str) -> str | None:
        runs = self._runs_for_key(key)
        return runs[0].info.run_id if runs else None

    @translated("open the model's run")
    def ensure_run(
        self,
        key: str,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        previous_key: str | None = None,
        run_id: str | None = None,
    ) -> str:
        """The one run for `key`, resumed (status RUNNING again) if it exists, created otherwise.

        `previous_key`: the key an older version gave this run; a run with it whose tags include all of `tags`
        is taken over (keyed `key` from then on) instead of a new one being created.

        `run_id`: use that existing run instead (`_adopt`).

        Processes on other machines do not share our file lock, so two of them may both create a run for a
        new key. After creating one, each settles on the oldest run with the key and deletes its own if it
        lost, so every process ends up logging to the same run."""
        if run_id is not None:
            return self._adopt(run_id, tags or {})
        with self.lock(f"run-{key}"):
            for _ in range(RUN_SETTLE_ATTEMPTS):
                run_id = self.find_run(key)
                if run_id is None and previous_key is not None:
                    run_id = self._take_over(previous_key, key, tags or {})
                if run_id is None:
                    run = self.client.create_run(
                        self.experiment_id,
                        run_name=run_name or key,
                        tags={RUN_KEY_TAG: key, "mlflow.runName": run_name or key, **(tags or {})},
                    )
                    run_id = run.info.run_id
                    oldest = self.find_run(key)
                    if oldest is None or oldest == run_id:
                        return str(run_id)
                    self.client.delete_run(run_id)
                    run_id = oldest
                if self._resume(run_id):
                    return str(run_id)
                # the run settled on was deleted meanwhile (its creator found an older one): settle again
        raise StoreError(f"Could not settle on one run for {key!r}: other processes kept replacing it; start again.")

    def _adopt(self, run_id: str, tags: Mapping[str, str]) -> str:
        """A run another tool opened (a logger's), in any experiment of this store: checked and given `tags`.
        It is not keyed (a later `ensure_run` of the key must not resume the logger's run) and its status is
        left alone (its owner ends it)."""
        try:
            run = self.client.get_run(run_id)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            run = None
        if run is None or run.info.lifecycle_stage == "deleted":
            raise NotFoundError(f"The store at {self.description} has no run {run_id!r}.")
        if tags:
            self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)
        return str(run.info.run_id)

    def _resume(self, run_id: str) -> bool:
        """Mark the run RUNNING again; False when another process deleted it in the meantime."""
        try:
            self.client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        except MlflowException:
            if self.client.get_run(run_id).info.lifecycle_stage == "deleted":
                return False
            raise
        return True

    def _take_over(self, previous_key: str, key: str, tags: Mapping[str, str]) -> str | None:
        for run in self._runs_for_key(previous_key):
            if all(run.data.tags.get(k) == v for k, v in tags.items()):
                self.client.set_tag(run.info.run_id, RUN_KEY_TAG, key)
                self.client.update_run(run.info.run_id, status=RunStatus.to_string(RunStatus.RUNNING))
                return str(run.info.run_id)
        return None

    @translated("mark the run finished")
    def finish_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    @translated("read the run's artifact location")
    def artifact_uri(self, run_id: str) -> str:
        if run_id not in self._artifact_uris:
            self._artifact_uris[run_id] = self.relocate_uri(self.client.get_run(run_id).info.artifact_uri)
        return self._artifact_uris[run_id]

    def local_artifact_dir(self, run_id: str) -> Path | None:
        return local_path(self.artifact_uri(run_id))

    @translated("log metrics")
    def log_metrics(self, run_id: str, rows: Sequence[tuple[str, float, int, int]]) -> None:
        """rows: (key, value, timestamp_ms, step); sent in batches MLflow accepts (1000 metrics a call)."""
        metrics = [Metric(key, float(value), int(ts), int(step)) for key, value, ts, step in rows]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[start : start + 1000], synchronous=True)

    @translated("set run tags")
    def set_run_tags(self, run_id: str, tags: Mapping[str, str]) -> None:
        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)

    @translated("read the run")
    def run_summary(self, run_id: str) -> RunSummary | None:
        """Status, tags and latest metrics of a run (None when it was deleted)."""
        try:
            run = self.client.get_run(run_id)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return RunSummary(run.info.status, dict(run.data.tags), dict(run.data.metrics))

    @translated("read the metric history")
    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float, int]]:
        """(step, value, timestamp_ms) of every value of `key` logged to the run."""
        return [(m.step, m.value, m.timestamp) for m in self.client.get_metric_history(run_id, key)]

    def registered_models_for_run(self, run_id: str) -> list[str]:
        run = self.client.get_run(run_id)
        name = run.data.tags.get(tag("registered_model"))
        return [name] if name else []

    def checkpoint_disk_path(self, run_id: str | None = None) -> Path | None:
        """The local disk that receives checkpoints (for free-space checks): the run's artifact directory,
        else the directory of an sqlite store; None when checkpoints leave this machine."""
        if run_id is not None:
            local = self.local_artifact_dir(run_id)
            if local is not None:
                return durable_directory(local)
            return None
        db_dir = sqlite_dir(self.tracking_uri)
        return db_dir if db_dir is not None and db_dir.exists() else None
