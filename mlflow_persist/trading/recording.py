"""Episode recording for `mlflow-persist run`: every decision, with its complete inputs, stored in the
`trading-system` run as Parquet (see ``mlflow_persist.episodes``).

``open_recorder(persistence)`` is the ``recorder_factory`` of ``run_trading``. The orchestrator calls
``record(episode)`` once per trained decision; that only queues the episode (no copy: the orchestrator
builds fresh frames and tensors per decision and never changes them afterwards). The recorder's
background thread writes every ``flush_rows`` episodes and every ``flush_seconds``; ``close()`` stores
the rest and marks the run finished.

Each episode names the registered version whose frozen serving copy decided (``checkpoint_versions``)
and carries ``model_fingerprints``: a ``state_fingerprint`` of those serving weights, taken once per
(model, version) while that version serves, so replay proves it loaded exactly those weights.
Those weights are also kept once in the run (``episodes/weights/``): retention deletes old registered
versions, and replay then loads the kept copy instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from mlflow_persist._observe.logs import package_logger
from mlflow_persist.episodes import EpisodeRecorder, RecorderStats, state_fingerprint

from .episode import TradingEpisode
from .serving import ServingModel

__all__ = [
    "FLUSH_ROWS",
    "FLUSH_SECONDS",
    "RUN_DESCRIPTION",
    "RUN_KEY",
    "NewWeights",
    "ServingFingerprints",
    "TradingRecorder",
    "open_recorder",
]

#: A serving version seen for the first time: (model, version, fingerprint, CPU copy of its weights).
NewWeights = tuple[str, int | None, str, dict[str, Any]]

log = package_logger("mlflow_persist.trading.recording")

#: Run key (tag ``mlflow_persist.run_key``) and run name of the run that holds the episodes.
RUN_KEY = "trading-system"
#: Episodes written per part file by the background thread (one episode per bar).
FLUSH_ROWS = 256
#: Buffered episodes older than this are written even when fewer than FLUSH_ROWS are waiting.
FLUSH_SECONDS = 60.0
RUN_DESCRIPTION = (
    "Episodes of the reference trading system: every decision with the frames, tensors, outputs, "
    "reward and checkpoint versions behind it, under episodes/ (replay with `mlflow-persist replay`)."
)


class ServingFingerprints:
    """``state_fingerprint`` of each serving model, per (model, version), taken while that version serves.

    ``observe()`` must run before every decision (at start, then after each bar): the serving copies
    only change between bars, so every version that decides is fingerprinted before it decides.
    It returns the newly seen (name, version, fingerprint, weights) with a CPU copy of the weights.
    """

    def __init__(self) -> None:
        self._serving: Mapping[str, ServingModel] = {}
        self._known: dict[tuple[str, int | None], str] = {}

    def attach(self, serving: Mapping[str, ServingModel]) -> list[NewWeights]:
        self._serving = serving
        return self.observe()

    def observe(self) -> list[NewWeights]:
        new: list[NewWeights] = []
        for name, model in self._serving.items():
            key = (name, model.version)
            if key not in self._known:
                state = {k: v.detach().to("cpu", copy=True) for k, v in model.module.state_dict().items()}
                self._known[key] = state_fingerprint(state)
                new.append((name, model.version, self._known[key], state))
        return new

    def of(self, versions: Mapping[str, int | None]) -> dict[str, str]:
        """The fingerprints of the weights that decided, for the models seen serving at those versions."""
        return {
            name: self._known[(name, version)] for name, version in versions.items() if (name, version) in self._known
        }


class TradingRecorder:
    """The trading system's episode recorder: adds fingerprints, never raises into the trading loop."""

    def __init__(self, recorder: EpisodeRecorder, run_id: str, store: Any | None = None) -> None:
        self.recorder = recorder
        self.run_id = run_id
        self.store = store
        self.fingerprints = ServingFingerprints()
        self.failed = 0

    def attach(self, serving: Mapping[str, ServingModel]) -> None:
        """Start fingerprinting the orchestrator's serving copies (call after the system started)."""
        self._keep(self.fingerprints.attach(serving))

    def after_bar(self) -> None:
        """Call after each bar: fingerprints (and keeps) a serving version switched in during that bar."""
        self._keep(self.fingerprints.observe())

    def _keep(self, new: list[NewWeights]) -> None:
        """Registered versions' weights go into the episode run too: retention may delete the version later."""
        for name, version, fingerprint, state in new:
            if version is not None:  # the initial weights are rebuilt from the seed
                self.recorder.record_weights(name, fingerprint, state)

    def record(self, episode: TradingEpisode) -> None:
        data = episode.to_dict()
        data["model_fingerprints"] = self.fingerprints.of(episode.checkpoint_versions)
        try:
            self.recorder.record(data)
        except Exception as exc:  # noqa: BLE001 - a recording problem must not stop training
            self.failed += 1
            if self.failed == 1 or self.failed % 100 == 0:
                log.error(
                    "episode %s (step %d) was not recorded (%d so far): %s",
                    episode.episode_id,
                    episode.step,
                    self.failed,
                    exc,
                )

    def stored_marker(self) -> Callable[[], bool]:
        """True once every episode recorded so far is stored (see `EpisodeRecorder.stored_marker`)."""
        return self.recorder.stored_marker()

    def stats(self) -> RecorderStats:
        return self.recorder.stats()

    def close(self, timeout: float | None = 120.0) -> bool:
        """Store every buffered episode, then mark the run finished; True when nothing was lost."""
        ok = self.recorder.close(timeout=timeout)
        stats = self.recorder.stats()
        log.info(
            "episodes: %d recorded, %d stored (%d bytes; %d model weights, %d bytes) in run %s%s",
            stats.recorded,
            stats.stored,
            stats.bytes_written,
            stats.weights_stored,
            stats.weights_bytes,
            self.run_id,
            "" if ok else f"; not all stored: {stats.last_error}",
        )
        if self.store is not None:
            try:
                self.store.finish_run(self.run_id, status="FINISHED" if ok else "FAILED")
            except Exception as exc:  # noqa: BLE001 - the episodes are stored; the run status is cosmetic
                log.warning("could not mark the episode run %s finished: %s", self.run_id, exc)
        return ok and not self.failed


def open_recorder(
    persistence: Any, *, flush_rows: int = FLUSH_ROWS, flush_seconds: float | None = FLUSH_SECONDS
) -> TradingRecorder:
    """A TradingRecorder writing into the `trading-system` run of ``persistence.store`` (created or resumed)."""
    store = persistence.store
    run_id = store.ensure_run(RUN_KEY, run_name=RUN_KEY, tags={"mlflow.note.content": RUN_DESCRIPTION})
    recorder = EpisodeRecorder(
        store.client,
        run_id,
        flush_rows,
        flush_interval_s=flush_seconds,
        copy=False,
        worker=getattr(persistence, "worker", None),
        address=getattr(persistence, "store_address", None),
    )
    return TradingRecorder(recorder, run_id, store)
