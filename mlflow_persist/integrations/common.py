"""What every framework callback shares: the persistence it opens, the framework logger's run it may share,
numeric metrics out of a framework's log dict, and several optimizers or schedulers tracked as one stateful
object."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from mlflow_persist._observe.logs import package_logger
from mlflow_persist._store.protocol import CheckpointStore
from mlflow_persist.config import PersistConfig
from mlflow_persist.errors import PersistError, redact_credentials
from mlflow_persist.integrations.distributed import DistributedPersistence

__all__ = [
    "StatefulList",
    "close_persistence",
    "numeric_metrics",
    "one_or_list",
    "open_persistence",
    "same_store",
    "shared_run",
    "store_identity",
]

log = package_logger("mlflow_persist.integrations")


def open_persistence(
    config: PersistConfig | None, store: CheckpointStore | None, options: Mapping[str, Any]
) -> DistributedPersistence:
    """The persistence a callback writes through: one `Persistence`, on rank 0 only under torch.distributed."""
    return DistributedPersistence(config, store=store, **options)


def close_persistence(persistence: DistributedPersistence | None, name: str, final_checkpoints: bool = True) -> None:
    """Take the final checkpoints and finish the run. A checkpoint that could never be written is logged, not
    raised: training is over and the model in memory is intact."""
    if persistence is None:
        return
    try:
        persistence.close(final_checkpoints=final_checkpoints)
    except PersistError as exc:
        log.error("%s: %s", name, exc)


#: The port a URI of each scheme means when it names none.
DEFAULT_PORTS = {"http": 80, "https": 443, "postgresql": 5432, "mysql": 3306, "mssql": 1433}


def store_identity(uri: str) -> str:
    """What identifies the store a tracking URI opens, so that two spellings of one store compare equal: an
    sqlite database or a local folder by its resolved path, a server or database by scheme, host, port and
    path (credentials, the database driver and the query left out); any other URI as written."""
    uri = uri.strip()
    parts = urlsplit(uri)
    scheme = parts.scheme.lower().split("+", 1)[0]
    if scheme == "sqlite":
        path = uri.split("://", 1)[-1].split("?", 1)[0]
        path = path[1:] if path.startswith("/") else path  # sqlite:///relative.db, sqlite:////absolute.db
        return f"sqlite:{os.path.realpath(path)}" if path not in ("", ":memory:") else uri
    if scheme == "file" or (not scheme and uri != "databricks"):  # MLflow's one bare word that is no path
        return f"file:{os.path.realpath(parts.path if scheme else uri)}"
    if scheme in DEFAULT_PORTS:
        try:
            port = parts.port or DEFAULT_PORTS[scheme]
        except ValueError:  # a port that is not a number: the URI compares as written
            return uri
        return f"{scheme}://{(parts.hostname or '').lower()}:{port}{parts.path.rstrip('/')}"
    return uri


def same_store(first: str, second: str) -> bool:
    """Whether two tracking URIs open the same store (`store_identity`)."""
    return store_identity(first) == store_identity(second)


def shared_run(
    name: str, persistence: DistributedPersistence, owner: str, run_id: str | None, tracking_uri: str | None
) -> str | None:
    """The run of a framework's MLflow logger (`owner`, for messages) to give to `track(run_id=...)`, so that the
    model has one run: `run_id` when the logger writes to the persistence's store; None off rank 0, without a
    run, for a store that is not MLflow's (a test's `MemoryStore`), or for a logger of another store (then with
    a one-line warning: the checkpoints go to the model's own run of the configured store)."""
    writer = persistence.persistence
    store_uri = getattr(writer.store, "tracking_uri", None) if writer is not None else None
    if writer is None or run_id is None or tracking_uri is None or not isinstance(store_uri, str):
        return None
    if same_store(tracking_uri, store_uri):
        return run_id
    log.warning(
        "%s: %s logs to %s, not to the checkpoint store %s; the checkpoints go to the model's own run there "
        "(set the same tracking URI on both for one run)",
        name,
        owner,
        redact_credentials(tracking_uri),
        writer.store.description,
    )
    return None


def numeric_metrics(values: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers among `values` (Python numbers, numpy scalars, one-element tensors), as floats."""
    metrics: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, bool):
            continue
        try:
            if hasattr(value, "numel") and value.numel() != 1:
                continue
            number = float(value.item() if hasattr(value, "item") else value)
        except (TypeError, ValueError, RuntimeError):
            continue
        if math.isfinite(number):
            metrics[str(key)] = number
    return metrics


class StatefulList:
    """Several optimizers (or schedulers) as one `state_dict`/`load_state_dict` object, in order."""

    def __init__(self, items: Sequence[Any]) -> None:
        self.items = list(items)

    def state_dict(self) -> list[Any]:
        return [item.state_dict() for item in self.items]

    def load_state_dict(self, state: list[Any]) -> None:
        if len(state) != len(self.items):
            raise ValueError(f"the checkpoint holds {len(state)} states, the trainer has {len(self.items)}")
        for item, saved in zip(self.items, state):
            item.load_state_dict(saved)


def one_or_list(items: Sequence[Any]) -> Any | None:
    """None for no items, the item itself for one, a `StatefulList` for several."""
    if not items:
        return None
    return items[0] if len(items) == 1 else StatefulList(items)
