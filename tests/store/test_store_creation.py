"""A process killed during its very first start leaves an embedded store that the next start can open.

MLflow creates and migrates a new sqlite database in many steps that are not one transaction; a kill in
between left a `mlflow.db` that MLflow could never open again ("table ... already exists"), so the project
folder had to be repaired by hand. The record checked: the next process opens the store, writes and reads
a checkpoint, and the folder holds the database and nothing half-made under its name.
"""

from __future__ import annotations

import signal
import sys
import textwrap
from pathlib import Path

import pytest
from reliability.support import make_model
from zygote import Zygote

import mlflow_persist as mp

# Dies (SIGKILL) in the middle of MLflow's migrations: right after the one that creates the `datasets` table,
# before alembic records that it ran.
KILLED_IN_SCHEMA_CREATION = textwrap.dedent(
    """
    import os, signal, sys
    from alembic.runtime import migration

    original = migration.HeadMaintainer.update_to_step

    def update_to_step(self, step):
        if step.revision.revision == "7f2a7d5fae7d":
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, step)

    migration.HeadMaintainer.update_to_step = update_to_step
    from mlflow_persist._store.mlflow_store import MlflowStore
    MlflowStore(f"sqlite:///{sys.argv[1]}/mlflow.db", "first-start")
    """
)


@pytest.mark.slow  # a child process and a fresh store's migrations: seconds
def test_a_kill_during_the_first_start_leaves_a_store_the_next_start_opens(tmp_path: Path, zygote: Zygote) -> None:
    project = tmp_path / "project"
    project.mkdir()
    killed = zygote.run([sys.executable, "-c", KILLED_IN_SCHEMA_CREATION, str(project)], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    uri = f"sqlite:///{project / 'mlflow.db'}"
    model, opt = make_model(3, width=8)
    with mp.Persistence(
        mp.PersistConfig(tracking_uri=uri, log_system_metrics=False), install_signal_handlers=False
    ) as persist:
        handle = persist.track("net", model, optimizer=opt)
        handle.step(1, loss=1.0)
        assert persist.flush(timeout=60)
        persist.close()
    state = mp.load_checkpoint("models:/net/latest", tracking_uri=uri)
    for key, tensor in model.state_dict().items():
        assert state.model_state[key].equal(tensor)
    assert (project / "mlflow.db").is_file()
