"""The fault matrix (issue 11): every stage of a save x {raises once, raises always, hangs, process killed
there}, on a real sqlite store. Each cell is a test of its own, `test_fault_cell[<stage>-<fault>]`, so a failure
names its stage and fault.

Each cell forks a trainer (the parent's imports are reused) on its own copy of the store; a separate checker
process then reads the store. The trainer trains with Adam under a learning-rate scheduler (the lr in the
optimizer's param groups changes every step) and tracks an application state as `extra`. It saves explicitly
(`save("periodic")`) every few steps, and its loss falls every step, so every `step()` saves an improvement too.
It keeps its own record: for each acknowledged save of either kind (job outcome `saved`), digests of every field
it handed over, taken from its live state when the save was asked for: model, optimizer (state and param
groups), scheduler, extra, step, metrics, category and the torch and numpy RNG (`support.full_digest` sees every
leaf, not only tensors).
Each cell checks:
- training went on: every step ran and the fault fired; after a kill, a restarted trainer restores and trains
  on, and its live state right after `restore()` is exactly the version it restored;
- every acknowledged checkpoint is in the store and loads with exactly the recorded fields;
- every registered version loads, and the newest also through `load_checkpoint("models:/net/latest")`;
- hang column: once the fault is armed, the stage hangs from its first call until the trainer lifts the hang
  (at the latest HANG_S after it began). Meanwhile the trainer keeps training and saving and times each
  `step()` and `save()` that ran while the store hung: none may take longer than `max_training_wait_seconds`
  plus a scheduling margin (a bound on a hang, not a speed benchmark). The trainer lifts the hang while a call
  stuck in it would still outlast that bound, so the bound cannot hold by accident. A hang in the snapshot is
  the exception: the snapshot is the training thread's own copy of the state and blocks it by design
  (docs/reliability.md); that hang lasts TRAINING_THREAD_HANG_S, and the cell checks that the training thread
  met it and reports how long its call took.

When the module ends it prints the fault matrix of docs/reliability.md (a cell that failed says so)."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from store_support import copy_template_store

import mlflow_persist as mp
from mlflow_persist.errors import FinalCheckpointError
from reliability.support import (
    LineLog,
    differing_fields,
    field_digests,
    fork_child,
    make_model,
    train_step,
    warm_up_torch,
)

pytestmark = pytest.mark.slow
warm_up_torch()

STAGES = ("snapshot", "serialize", "digest", "write", "fsync", "rename", "register", "alias", "retention", "metrics")
FAULTS = ("once", "always", "hang", "kill")
CELLS = [pytest.param(stage, fault, id=f"{stage}-{fault}") for stage in STAGES for fault in FAULTS]
# Stages that run on the training thread: a hang there blocks it by design, so the hang bound does not apply.
TRAINING_THREAD_STAGES = frozenset({"snapshot"})

# The trainer saves explicitly every SAVE_EVERY steps; the fault is armed once the warm-up's saves are acknowledged.
SAVE_EVERY = 4
WARM_UP_STEPS, FAULTED_STEPS = SAVE_EVERY, 3 * SAVE_EVERY
STEPS = WARM_UP_STEPS + FAULTED_STEPS
# The longest any step() or save() may take while the store hangs: the longest a training call waits for the
# writer (max_training_wait_seconds; the trainer runs with the default) plus a margin for scheduling on a busy
# 2-core machine.
TRAINING_WAIT_S: float = mp.PersistConfig.model_fields["max_training_wait_seconds"].default
SCHEDULING_MARGIN_S = 1.0
HANG_BOUND_S = TRAINING_WAIT_S + SCHEDULING_MARGIN_S
# A hang ends when the trainer lifts it, at the latest HANG_S after it began (a trainer stuck in it cannot lift
# it). The trainer calls step()/save() under the hang only until HUNG_CALLS_UNTIL_S after it began, while more
# than HANG_BOUND_S (and half a second to spare) of it are left: a call stuck in the hang would outlast the bound.
HANG_S = 4.5
HUNG_CALLS_UNTIL_S = HANG_S - HANG_BOUND_S - 0.5
# A hang on the training thread is waited out by the trainer itself; no bound applies, so it need not be long.
TRAINING_THREAD_HANG_S = 1.0
HANG_ENTRY_TIMEOUT_S = 10.0  # how long the trainer trains on, waiting for the armed stage to be reached
MIN_HUNG_SAVES = 2  # save() calls that must run under the hang (the second waits for the writer's slot)
CHILD_TIMEOUT_S = 300.0
CATEGORIES = ("performance", "periodic", "final")  # of step()'s saves, save()'s, close()'s


def _target(stage: str) -> tuple[Any, str]:
    """Where each stage lives: the object and attribute a fault replaces."""

    from mlflow_persist._format import atomic, payload
    from mlflow_persist._runtime import handle, pipeline
    from mlflow_persist._store import mlflow_artifacts
    from mlflow_persist._store import mlflow_store as store_module

    return {
        "snapshot": (handle, "build_payload"),
        "serialize": (payload, "_save_zip"),
        "digest": (payload._DigestingWriter, "digest"),
        "write": (mlflow_artifacts, "write_checkpoint_dir"),
        "fsync": (atomic, "fsync_path"),
        "rename": (atomic.os, "rename"),
        "register": (store_module.MlflowStore, "register_version"),
        "alias": (store_module.MlflowStore, "set_alias"),
        "retention": (pipeline, "prune"),
        "metrics": (store_module.MlflowStore, "log_metrics"),
    }[stage]


# ---------------------------------------------------------------------------------------------- the faults


class StageHang:
    """A store hanging in one stage: from the first call into it, every call blocks until `lift()`, at the
    latest `limit_s` after the first. Records when and on which thread it was entered."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self.entered_at: float | None = None
        self.entered_on: str | None = None
        self._lifted_at: float | None = None
        self._lifted = threading.Event()
        self._lock = threading.Lock()

    @property
    def entered(self) -> bool:
        return self.entered_at is not None

    def block(self) -> None:
        with self._lock:
            if self.entered_at is None:
                self.entered_at = time.monotonic()
                self.entered_on = threading.current_thread().name
            expires_at = self.entered_at + self.limit_s
        self._lifted.wait(max(0.0, expires_at - time.monotonic()))

    def lift(self) -> None:
        with self._lock:
            if self._lifted_at is None:
                self._lifted_at = time.monotonic()
        self._lifted.set()

    @property
    def lifted(self) -> bool:
        return self._lifted.is_set()

    def age(self) -> float:
        """Seconds since the hang began (0 before)."""
        return 0.0 if self.entered_at is None else time.monotonic() - self.entered_at

    def ended_at(self) -> float | None:
        if self.entered_at is None:
            return None
        expires_at = self.entered_at + self.limit_s
        return expires_at if self._lifted_at is None else min(expires_at, self._lifted_at)

    def overlaps(self, start: float, end: float) -> bool:
        """Whether a call that ran from `start` to `end` ran (at least in part) while the stage hung."""
        ended_at = self.ended_at()
        return self.entered_at is not None and ended_at is not None and start < ended_at and end > self.entered_at


class InjectedFault:
    """One cell's fault in one stage. Off until `armed`; then every call into the stage counts in `fired` and:
    `kill` SIGKILLs the process, `hang` blocks (StageHang), `once` raises on the first call, `always` on each."""

    def __init__(self, stage: str, kind: str) -> None:
        self.stage, self.kind = stage, kind
        self.armed = False
        self.fired = 0
        limit_s = TRAINING_THREAD_HANG_S if stage in TRAINING_THREAD_STAGES else HANG_S
        self.hang = StageHang(limit_s) if kind == "hang" else None
        self._lock = threading.Lock()

    def install(self) -> None:
        owner, name = _target(self.stage)
        original: Callable[..., Any] = getattr(owner, name)

        def faulty(*args: Any, **kwargs: Any) -> Any:
            self.on_call()
            return original(*args, **kwargs)

        setattr(owner, name, faulty)

    def on_call(self) -> None:
        if not self.armed:
            return
        with self._lock:
            self.fired += 1
            first = self.fired == 1
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.hang is not None:
            self.hang.block()
        if self.kind == "always" or (self.kind == "once" and first):
            raise OSError(errno.EIO, f"injected {self.stage} fault")


# ---------------------------------------------------------------------------------------------- the trainer


class TrainingProgress:
    """The application's own state, tracked as `extra`: what a restart needs besides model and optimizer."""

    def __init__(self) -> None:
        self.batches = 0
        self.recent_losses: list[float] = []
        self.phase = "warm-up"

    def record(self, loss: float) -> None:
        self.batches += 1
        self.recent_losses = [*self.recent_losses[-7:], loss]

    def state_dict(self) -> dict[str, Any]:
        return {"batches": self.batches, "recent_losses": list(self.recent_losses), "phase": self.phase}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.batches = int(state["batches"])
        self.recent_losses = [float(loss) for loss in state["recent_losses"]]
        self.phase = str(state["phase"])


def _rng_now() -> dict[str, Any]:
    """The torch and numpy generators as they are now (a restore sets them too). Python's `random` is left out:
    MLflow's threads draw from it (run names, sqlite retry jitter), so it may move between the snapshot and the
    trainer's own look at it."""
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state()}


@dataclass
class Trainee:
    """The objects under training: an MLP with Adam, an lr scheduler stepped every step, the progress."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    progress: TrainingProgress

    @classmethod
    def create(cls, seed: int) -> Trainee:
        model, optimizer = make_model(seed)
        scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.97)
        return cls(model, optimizer, scheduler, TrainingProgress())

    def train(self) -> None:
        self.progress.record(train_step(self.model, self.optimizer))
        self.scheduler.step()

    def live_fields(self, step: int) -> dict[str, Any]:
        """What a checkpoint of the live state holds that the trainer knows without the library: every tracked
        object's state dict, the step and the RNG."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "extra": self.progress.state_dict(),
            "step": step,
            "rng": _rng_now(),
        }


@dataclass
class HungCalls:
    """The step() and save() calls that ran while the stage hung: how many, and the slowest of each."""

    steps: int = 0
    saves: int = 0
    slowest_step_s: float = 0.0
    slowest_save_s: float = 0.0

    def note(self, call: str, seconds: float) -> None:
        if call == "step":
            self.steps += 1
            self.slowest_step_s = max(self.slowest_step_s, seconds)
        else:
            self.saves += 1
            self.slowest_save_s = max(self.slowest_save_s, seconds)


def _config(uri: str) -> mp.PersistConfig:
    return mp.PersistConfig(
        tracking_uri=uri,
        keep_best=1000,
        keep_periodic=1000,
        keep_final=1000,
        min_free_disk_mb=0,
        min_free_disk_percent=0,
        log_system_metrics=False,
        scheduler_interval_seconds=0.2,
        save_retry_attempts=4,
        save_retry_max_wait_seconds=0.05,
        failure_alert_threshold=3,
    )


def _trainer(events: LineLog, uri: str, stage: str, kind: str, restart: bool) -> None:
    """Train STEPS steps (more while waiting for a hang) with the fault in `stage` armed after the warm-up, or,
    as the `restart` after a kill, without a fault from what restore() finds. Events: RESTORED (restart), ACK per
    acknowledged save (of step() or save()) with its recorded field digests, ALERT, GAVE_UP, DONE."""
    fault = InjectedFault(stage, kind)
    if not restart:
        fault.install()
    hang = fault.hang if not restart else None
    trainee = Trainee.create(seed=11)
    persist = mp.Persistence(
        _config(uri), install_signal_handlers=False, alert_sinks=[lambda alert: events.emit("ALERT", alert.kind)]
    )
    handle = persist.track(
        "net", trainee.model, optimizer=trainee.optimizer, scheduler=trainee.scheduler, extra=trainee.progress
    )
    restored = handle.restore()
    first_step = handle.current_step
    if restart:
        events.emit(
            "RESTORED",
            {
                "version": restored.version if restored is not None else None,
                "fields": field_digests(trainee.live_fields(handle.current_step)),
            },
        )
    hung = HungCalls()
    pending: list[tuple[Any, dict[str, Any]]] = []
    steps_run = 0
    metrics: dict[str, float] = {}

    def timed(call: str, run: Callable[[], Any]) -> Any:
        started = time.monotonic()
        result = run()
        ended = time.monotonic()
        if hang is not None and hang.overlaps(started, ended):
            hung.note(call, ended - started)
        return result

    def report_acks() -> None:
        waiting = []
        for job, record in pending:
            if not job.done.is_set():
                waiting.append((job, record))
            elif job.outcome == "saved":
                events.emit("ACK", {**record, "version": job.result.version})
        pending[:] = waiting

    def record(category: str) -> dict[str, Any]:
        """The digests of what a `category` save asked for now holds: the live state as its snapshot sees it
        (save() takes the snapshot first thing; the RNG is the process's) and the last metrics step() had."""
        fields = {**trainee.live_fields(handle.current_step), "metrics": metrics, "category": category}
        return {"step": handle.current_step, "category": category, "fields": field_digests(fields)}

    def train_one(save: bool) -> None:
        nonlocal steps_run, metrics
        trainee.train()
        metrics = {"loss": 1.0 / (handle.current_step + 2)}  # falls every step: step() saves each improvement
        timed("step", lambda: handle.step(**metrics))
        steps_run += 1
        # step()'s performance save is in the handle's claims: no public API hands it out
        performance_save = next((job for step, job in handle._claims if step == handle.current_step), None)
        if performance_save is not None:
            pending.append((performance_save, record("performance")))
        if save:
            periodic = record("periodic")
            job = timed("save", lambda: handle.save("periodic"))
            if job is not None:
                pending.append((job, periodic))
        report_acks()

    for i in range(WARM_UP_STEPS):  # unarmed and flushed: some saves are acknowledged before the fault
        train_one(save=i == WARM_UP_STEPS - 1)
        persist.flush(timeout=30)
    trainee.progress.phase = "faulted"
    fault.armed = True
    if hang is not None:  # train on until the store hangs (the metrics flush, say, waits for the next tick)
        give_up_at = time.monotonic() + HANG_ENTRY_TIMEOUT_S
        while not hang.entered and time.monotonic() < give_up_at:
            train_one(save=False)
            time.sleep(0.01)

    def too_few_hung_calls() -> bool:
        """Whether the hang is still on with fewer calls under it than the bound needs (a fast machine ran the
        FAULTED_STEPS before they could pile up): training goes on until they did, or the hang grew too old."""
        return (
            hang is not None
            and hang.entered
            and not hang.lifted
            and hang.age() < HUNG_CALLS_UNTIL_S
            and (hung.saves < MIN_HUNG_SAVES or hung.steps < 1)
        )

    i = 0
    while i < FAULTED_STEPS or too_few_hung_calls():
        if hang is not None and hang.age() >= HUNG_CALLS_UNTIL_S:
            hang.lift()  # a call stuck in the hang from here on might not outlast the bound
        train_one(save=i % SAVE_EVERY == SAVE_EVERY - 1)
        i += 1
    if hang is not None:
        hang.lift()
    if kind == "always":
        persist.flush_metrics()  # while still broken: the metric flush meets the fault too (it returns False)
        fault.armed = False  # heals here, before close(), so the final checkpoint can be written
    persist.flush(timeout=60)
    report_acks()
    final = record("final")
    try:
        report: Any = persist.close()
    except FinalCheckpointError as exc:  # saves given up earlier: the final one may still be stored
        events.emit("GAVE_UP", str(exc)[:200])
        report = exc.report
    stored_final = report.finals["net"]
    if stored_final.outcome == "registered":
        events.emit("ACK", {**final, "version": stored_final.version})
    ended_at = hang.ended_at() if hang is not None else None
    events.emit(
        "DONE",
        {
            "first_step": first_step,
            "steps": handle.current_step,
            "steps_run": steps_run,
            "failures": handle.failures,
            "skipped": persist.writer.skipped,
            "fired": fault.fired,
            "training_thread": threading.current_thread().name,
            "hang": None
            if hang is None
            else {
                "entered_on": hang.entered_on,
                "lasted_s": round(ended_at - hang.entered_at, 3)
                if ended_at is not None and hang.entered_at is not None
                else None,
                "steps": hung.steps,
                "saves": hung.saves,
                "slowest_step_s": round(hung.slowest_step_s, 3),
                "slowest_save_s": round(hung.slowest_save_s, 3),
            },
        },
    )


# ---------------------------------------------------------------------------------------------- the checker


def _stored_fields(state: mp.CheckpointState) -> dict[str, str]:
    """The field digests of a loaded checkpoint, named as the trainer names its own; the RNG as a restore from
    it leaves the generators."""
    from mlflow_persist._format.payload import restore_rng_state

    restore_rng_state(state.rng_state)
    return field_digests(
        {
            "model": state.model_state,
            "optimizer": state.optimizer_state,
            "scheduler": state.scheduler_state,
            "extra": state.extra_state,
            "step": state.step,
            "rng": _rng_now(),
            "metrics": state.metrics,
            "category": state.category,
        }
    )


def _checker(events: LineLog, uri: str) -> None:
    """Load every registered version (and the newest through the public API); one STORE event."""
    from mlflow_persist._store.mlflow_store import MlflowStore

    store = MlflowStore(uri)
    versions = store.list_versions("net")
    found: dict[str, Any] = {}
    for info in versions:
        try:
            found[str(info.version)] = {"fields": _stored_fields(store.load_version(info))}
        except mp.CheckpointCorruptError as exc:
            found[str(info.version)] = {"error": str(exc)}
    try:
        latest = mp.load_checkpoint("models:/net/latest", tracking_uri=uri)
        public: dict[str, Any] = {"version": latest.version, "fields": _stored_fields(latest)}
    except mp.PersistError as exc:
        public = {"error": f"{type(exc).__name__}: {exc}"}
    events.emit(
        "STORE", {"versions": found, "newest": versions[-1].version if versions else None, "public_latest": public}
    )


# ---------------------------------------------------------------------------------------------- the cell


def _run(target: Callable[..., None], log: LineLog, *args: Any) -> int | None:
    """Run `target` in a forked child; its exit code (None: still running after CHILD_TIMEOUT_S, killed)."""
    proc = fork_child(target, log, *args)
    proc.join(timeout=CHILD_TIMEOUT_S)
    if proc.is_alive():
        proc.kill()
        proc.join(timeout=10)
        return None
    return proc.exitcode


@dataclass
class Training:
    """What the trainer (and, after a kill, the restarted one) reported."""

    done: dict[str, Any]
    acks: list[dict[str, Any]]
    alerted: bool
    restored: dict[str, Any] | None


def _train(cell: str, directory: Path, uri: str, stage: str, fault: str) -> Training:
    log = LineLog(directory / "train.events")
    code = _run(_trainer, log, uri, stage, fault, False)
    acks = log.all("ACK")
    if fault != "kill":
        assert code == 0, f"{cell}: the trainer failed (exit {code}): {log.all('ERROR')}"
        done = log.first("DONE")
        assert done["fired"] > 0, f"{cell}: the fault never fired; the stage is no longer where it was"
        return Training(done, acks, bool(log.all("ALERT")), None)
    assert code == -signal.SIGKILL, (
        f"{cell}: the trainer was not killed in that stage (exit {code}): {log.all('ERROR')}"
    )
    restart_log = LineLog(directory / "restart.events")
    code = _run(_trainer, restart_log, uri, stage, fault, True)
    assert code == 0, f"{cell}: the restarted trainer failed (exit {code}): {restart_log.all('ERROR')}"
    restored = restart_log.first("RESTORED")
    assert restored["version"] is not None, f"{cell}: the restarted trainer restored nothing"
    return Training(restart_log.first("DONE"), acks + restart_log.all("ACK"), bool(restart_log.all("ALERT")), restored)


def _check_training_went_on(cell: str, done: dict[str, Any]) -> None:
    assert done["steps_run"] >= STEPS and done["steps"] == done["first_step"] + done["steps_run"], (
        f"{cell}: training stopped: {done['steps_run']} of {STEPS}+ steps ran, the handle is at step "
        f"{done['steps']} (from {done['first_step']})"
    )


def _check_hang(cell: str, stage: str, done: dict[str, Any]) -> None:
    """The store hung while the trainer made its calls, and none of them waited for it past the bound."""
    hang = done["hang"]
    assert hang["entered_on"] is not None, (
        f"{cell}: the stage never hung within {HANG_ENTRY_TIMEOUT_S:g} s of arming; it is no longer where it was"
    )
    if stage in TRAINING_THREAD_STAGES:  # the training thread's own work: blocks it by design
        assert hang["entered_on"] == done["training_thread"], (
            f"{cell}: the {stage} stage hung on {hang['entered_on']}, not on the training thread"
        )
        return
    for call in ("step", "save"):
        slowest = hang[f"slowest_{call}_s"]
        assert slowest < HANG_BOUND_S, (
            f"{cell}: a {call}() call took {slowest:.2f} s while the store hung in {stage} (on "
            f"{hang['entered_on']}), over max_training_wait_seconds ({TRAINING_WAIT_S:g} s) + "
            f"{SCHEDULING_MARGIN_S:g} s"
        )
    assert hang["saves"] >= MIN_HUNG_SAVES and hang["steps"] >= 1, (
        f"{cell}: only {hang['saves']} save() and {hang['steps']} step() calls ran while the store hung "
        f"({hang['lasted_s']} s): too few for the bound to say anything"
    )


def _check_store(cell: str, acks: list[dict[str, Any]], stored: dict[str, Any]) -> None:
    """Every acknowledged save is stored with exactly the recorded fields; every version loads, the newest
    through the public API too."""
    versions = stored["versions"]
    broken = {number: found["error"] for number, found in versions.items() if "error" in found}
    assert not broken, f"{cell}: registered versions that do not load: {broken}"
    for ack in acks:
        found = versions.get(str(ack["version"]))
        assert found is not None, f"{cell}: acknowledged v{ack['version']} (step {ack['step']}) is not in the store"
        differing = differing_fields(ack["fields"], found["fields"])
        assert not differing, (
            f"{cell}: acknowledged v{ack['version']} (step {ack['step']}) differs from what the trainer saved in: "
            f"{', '.join(differing)}"
        )
    newest, public = stored["newest"], stored["public_latest"]
    assert newest is not None, f"{cell}: the store holds no version"
    assert public.get("version") == newest, (
        f"{cell}: load_checkpoint('models:/net/latest') did not load the newest version v{newest}: {public}"
    )
    assert public["fields"] == versions[str(newest)]["fields"], (
        f"{cell}: load_checkpoint('models:/net/latest') differs from v{newest} loaded from the store in: "
        f"{', '.join(differing_fields(versions[str(newest)]['fields'], public['fields']))}"
    )


def _check_restored(cell: str, restored: dict[str, Any], stored: dict[str, Any]) -> None:
    """The restarted trainer's live state right after restore() is exactly the version it restored."""
    found = stored["versions"].get(str(restored["version"]))
    assert found is not None, f"{cell}: the restored v{restored['version']} is not in the store"
    expected = {name: value for name, value in found["fields"].items() if name in restored["fields"]}
    differing = differing_fields(expected, restored["fields"])
    assert not differing, (
        f"{cell}: after restore() of v{restored['version']}, the live state differs from it in: {', '.join(differing)}"
    )


def _summary(training: Training) -> str:
    """The cell's entry in the table of docs/reliability.md."""
    done = training.done
    made_by = {category: sum(1 for ack in training.acks if ack["category"] == category) for category in CATEGORIES}
    parts = [
        f"{len(training.acks)} acked ({made_by['performance']} step(), {made_by['periodic']} save(), "
        f"{made_by['final']} final), 0 lost",
        f"{done['failures']} failed attempts",
    ]
    if done["skipped"]:
        parts.append(f"{done['skipped']} skipped")
    if training.alerted:
        parts.append("alert")
    if done["hang"] is not None:
        hang = done["hang"]
        parts.append(f"slowest step {hang['slowest_step_s']:.2f} s, save {hang['slowest_save_s']:.2f} s")
    return ", ".join(parts)


@pytest.fixture(scope="module")
def fault_matrix(request: pytest.FixtureRequest) -> Iterator[dict[tuple[str, str], str]]:
    """Each cell's table entry; printed as the fault matrix of docs/reliability.md when the module ends."""
    cells: dict[tuple[str, str], str] = {}
    yield cells
    if not cells:
        return
    lines = [
        "| stage | raises once | raises always | hangs (until the trainer lifts it) | killed there |",
        "|---|---|---|---|---|",
    ]
    for stage in STAGES:
        if any((stage, fault) in cells for fault in FAULTS):
            lines.append(f"| {stage} | " + " | ".join(cells.get((stage, f), "not run") for f in FAULTS) + " |")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        print("\n" + "\n".join(lines))


@pytest.mark.parametrize(("stage", "fault"), CELLS)
def test_fault_cell(
    stage: str, fault: str, tmp_path: Path, template_db: Path, fault_matrix: dict[tuple[str, str], str]
) -> None:
    cell = f"{stage}/{fault}"
    fault_matrix[(stage, fault)] = "FAILED"
    uri = copy_template_store(template_db, tmp_path / "store")
    training = _train(cell, tmp_path, uri, stage, fault)
    _check_training_went_on(cell, training.done)
    if fault == "hang":
        _check_hang(cell, stage, training.done)
    check_log = LineLog(tmp_path / "check.events")
    code = _run(_checker, check_log, uri)
    assert code == 0, f"{cell}: the checker failed (exit {code}): {check_log.all('ERROR')}"
    stored = check_log.first("STORE")
    _check_store(cell, training.acks, stored)
    if training.restored is not None:
        _check_restored(cell, training.restored, stored)
    fault_matrix[(stage, fault)] = _summary(training)
