"""`mlflow-persist run ...` that SIGKILLs itself at one chosen point of its work (tests/trading/test_exact_resume.py).

Usage: `python kill_point_proc.py run --until-step N ...` (the `mlflow-persist` arguments) with
MLFLOW_PERSIST_TEST_KILL_AT set to one kill point; without it the command runs as `mlflow-persist` does.
The point is a position in the run's logical sequence, not a moment on the clock, so the same point lands at
the same place of every replay:

- `startup:restore`: at start-up, with every model tracked, just before the newest complete cut is restored;
- `startup:restored`: right after it was restored, before the first bar;
- `bar:B`: after bar B (bars counted across restarts), once every save taken so far is written and every cut
  taken so far is complete (the store then holds exactly what bars 1..B produce);
- `cut:CATEGORY@B:written:MEMBER`: the cut taken at bar B (`periodic`, or the `final` one of close()): when the
  writer has written MEMBER's checkpoint files, before they are registered;
- `cut:CATEGORY@B:registered:MEMBER`: when MEMBER's version of that cut is registered, before its marker;
- `cut:CATEGORY@B:marked:K`: when the cut keeper has written K of the cut's completion markers.

For a `cut:` point, every save and cut taken before that cut is stored first; for a periodic cut, training then
stops right after the cut is taken (the main thread waits): what the store holds at the kill does not depend on
how fast the writer, the cut keeper or training happened to be.

At the point the process writes `KILL-POINT <point>` to stderr and sends itself SIGKILL (no handler, no
`finally`, no atexit: as a kill from outside at that instant). Only test code: the hooks wrap library
methods from outside; no library file knows about them.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

KILL_AT_ENV = "MLFLOW_PERSIST_TEST_KILL_AT"
MARKER = "KILL-POINT"
SETTLE_SECONDS = 120.0


def _die(point: str) -> None:
    os.write(2, f"\n{MARKER} {point}\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)
    threading.Event().wait()  # not reached: the process ends as the signal is delivered


def _settle(persistence: Any, point: str) -> None:
    """Wait until every save taken so far is written and every cut taken so far has ended (complete unless a
    member's save failed or was skipped)."""
    if not persistence.flush(timeout=SETTLE_SECONDS) or not persistence.cuts.wait(SETTLE_SECONDS):
        os.write(2, f"\n{MARKER} not settled within {SETTLE_SECONDS:.0f} s: {point}\n".encode())
        os._exit(70)


def _install(point: str) -> None:
    from mlflow_persist._policy.cuts import CUT_COMPLETE_TAG, CUT_TAG
    from mlflow_persist._policy.versions import tag
    from mlflow_persist._runtime import cut_keeper, pipeline, system_checkpoints
    from mlflow_persist._store.mlflow_store import MlflowStore
    from mlflow_persist.trading.system import SYSTEM_STATE, EnhancedRealtimeTrainingSystem

    kind, _, rest = point.partition(":")
    local = threading.local()  # per thread: the save (writer) or the cut (keeper) being worked on
    labels: dict[str, str] = {}  # cut id -> "CATEGORY@BAR", recorded when save_all() makes the id
    making: list[str] = []  # the label of the cut save_all() is taking right now

    if kind == "startup":
        original_restore = system_checkpoints.SystemCheckpoints.restore_all

        def restore_all(self: Any, *args: Any, **kwargs: Any) -> Any:
            if rest == "restore":
                _die(point)
            restored = original_restore(self, *args, **kwargs)
            _die(point)
            return restored

        system_checkpoints.SystemCheckpoints.restore_all = restore_all  # type: ignore[method-assign]
        return

    if kind == "bar":
        bar = int(rest)
        original_after_bar = EnhancedRealtimeTrainingSystem._after_bar

        def after_bar(self: Any) -> None:
            original_after_bar(self)
            if self.steps_done == bar:
                _settle(self.persistence, point)
                _die(point)

        EnhancedRealtimeTrainingSystem._after_bar = after_bar  # type: ignore[method-assign]
        return

    if kind != "cut":
        raise SystemExit(f"{KILL_AT_ENV}: unknown kill point {point!r}")
    label, stage, which = rest.split(":")

    original_new_cut_id = system_checkpoints.new_cut_id

    def new_cut_id(sequence: int) -> str:
        cut_id = original_new_cut_id(sequence)
        if making:
            labels[cut_id] = making[-1]
        return cut_id

    system_checkpoints.new_cut_id = new_cut_id  # type: ignore[assignment]

    original_save_all = system_checkpoints.SystemCheckpoints.save_all

    def save_all(self: Any, category: str = "periodic", **kwargs: Any) -> str:
        taking = f"{category}@{self._state_steps[SYSTEM_STATE]()}"
        if taking == label:
            _settle(self, point)  # every earlier cut complete: the kill leaves the same store in every replay
        making.append(taking)
        try:
            cut_id = original_save_all(self, category, **kwargs)
        finally:
            taken = making.pop()
        if taken == label and category != "final":
            threading.Event().wait()  # training stops here; the writer and the keeper reach the point
        return cut_id

    system_checkpoints.SystemCheckpoints.save_all = save_all  # type: ignore[method-assign]

    def targeted(job: Any) -> bool:
        return job is not None and job.model == which and labels.get(job.tags.get(CUT_TAG, "")) == label

    original_execute = pipeline.SavePipeline.execute

    def execute(self: Any, job: Any) -> Any:
        local.job = job
        try:
            return original_execute(self, job)
        finally:
            local.job = None

    pipeline.SavePipeline.execute = execute  # type: ignore[method-assign]

    if stage == "written":
        original_write = MlflowStore.write_checkpoint

        def write_checkpoint(self: Any, *args: Any, **kwargs: Any) -> Any:
            written = original_write(self, *args, **kwargs)
            if targeted(getattr(local, "job", None)):
                _die(point)
            return written

        MlflowStore.write_checkpoint = write_checkpoint  # type: ignore[method-assign]
    elif stage == "registered":
        original_register = MlflowStore.register_version

        def register_version(self: Any, name: str, source: str, run_id: str | None, tags: Any, **kw: Any) -> Any:
            info = original_register(self, name, source, run_id, tags, **kw)
            job = getattr(local, "job", None)
            if targeted(job) and tags.get(tag("category")) == job.category:  # its own category comes last
                _die(point)
            return info

        MlflowStore.register_version = register_version  # type: ignore[method-assign]
    elif stage == "marked":
        markers = int(which)
        original_advance = cut_keeper.CutKeeper._advance
        original_set_tag = MlflowStore.set_version_tag
        written: set[tuple[str, int]] = set()  # a marker written again after a failed pass counts once

        def advance(self: Any, cut: Any) -> str:
            local.cut = cut
            try:
                return original_advance(self, cut)
            finally:
                local.cut = None

        def set_version_tag(self: Any, name: str, version: Any, key: str, value: str) -> Any:
            result = original_set_tag(self, name, version, key, value)
            cut = getattr(local, "cut", None)
            if cut is not None and key == CUT_COMPLETE_TAG and value == "true" and labels.get(cut.id) == label:
                written.add((name, int(version)))
                if len(written) == markers:
                    _die(point)
            return result

        cut_keeper.CutKeeper._advance = advance  # type: ignore[method-assign]
        MlflowStore.set_version_tag = set_version_tag  # type: ignore[method-assign]
    else:
        raise SystemExit(f"{KILL_AT_ENV}: unknown stage {stage!r} in {point!r}")


def main() -> None:
    point = os.environ.get(KILL_AT_ENV)
    if point:
        _install(point)
    from mlflow_persist.cli.main import main as cli_main

    cli_main(sys.argv[1:])


if __name__ == "__main__":
    main()
