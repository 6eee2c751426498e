"""Exact resume: `run --until-step N` killed with SIGKILL at chosen points and restarted ends bitwise where a
run that was never interrupted ends, and its episode store holds the same episodes.

The reference is a separate, uninterrupted run in its own store: the comparison never uses the code's own
idea of what the state should be. Each round's kill points are drawn from a seed, not from the clock: a point
is a place in the run's logical sequence (after bar B with everything before it stored; a cut's member
written, or registered, or K of its completion markers written; start-up before or after the restore), and
the child kills itself with SIGKILL when it gets there (tests/trading/kill_point_proc.py). The seed of each
round is printed with its kill points and named in every assertion message; MLFLOW_PERSIST_EXACT_RESUME_SEED=S
replays the round of seed S (the same points, and at each kill the same cuts, complete or not, in the store). Without it the first
round's seed is random and printed: every run of the suite tries another schedule, and a failing one can be
replayed. MLFLOW_PERSIST_EXACT_RESUME_ROUNDS (1 in CI, times MLFLOW_PERSIST_SOAK_FACTOR) interrupted runs,
seeds S, S+1, ..., are compared with the reference. The runs are forked from a pre-imported Python
(tests/zygote.py).

Both runs use the default configuration: the trading system's serving cuts wait for a writer that fell behind
instead of being skipped (a skipped one would keep older weights serving, so even two uninterrupted runs of one
seed could end apart on a loaded machine).

Besides the end state, each resume is checked against the registry itself: after every kill, the newest cut
whose members are all registered and marked complete (read from the version tags with MlflowClient) is the
one the kill point leaves; and the last run registers exactly the system checkpoints a resume from that cut
takes (the version numbers MLflow gave out count them, also those that retention deleted since).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from zygote import Zygote

pytestmark = [pytest.mark.slow, pytest.mark.soak]

N = 600
SEED = 5
MODELS = ("dqn", "cnn", "cob_rl", "extrema")
MEMBERS = (*MODELS, "system")  # the members of every cut: the four models and the system's own state
HORIZON = 4
CUT_EVERY = 100  # bars between two periodic cuts (the run's default)
SEED_ENV = "MLFLOW_PERSIST_EXACT_RESUME_SEED"
KILL_AT_ENV = "MLFLOW_PERSIST_TEST_KILL_AT"
KILL_PROC = Path(__file__).resolve().parent / "kill_point_proc.py"
KILL_TIMEOUT = 240.0  # a kill point never reached leaves the child waiting: fail instead of hanging
TAG = "mlflow_persist."


def _env(kill_at: str | None = None) -> dict[str, str]:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "PYTHONUNBUFFERED": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop(KILL_AT_ENV, None)
    if kill_at is not None:
        env[KILL_AT_ENV] = kill_at
    return env


def _arguments(workdir: Path) -> list[str]:
    return [
        "run",
        "--until-step",
        str(N),
        "--seed",
        str(SEED),
        "--no-progress",
        "--tracking-uri",
        f"sqlite:///{workdir}/mlflow.db",
    ]


def _workdir(path: Path) -> Path:
    """A run's directory (the default configuration)."""
    path.mkdir()
    return path


def _run_to_end(zygote: Zygote, workdir: Path, where: str = "") -> None:
    command = [sys.executable, "-m", "mlflow_persist.cli", *_arguments(workdir)]
    result = zygote.run(command, cwd=workdir, env=_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{where}: exit {result.returncode}\n{result.stderr[-4000:]}"
    assert "Traceback" not in result.stderr, f"{where}\n{result.stderr[-4000:]}"


def _run_and_kill(zygote: Zygote, workdir: Path, point: str, where: str) -> None:
    """Run until the child reaches kill point `point` and SIGKILLs itself there."""
    proc = zygote.popen(
        [sys.executable, str(KILL_PROC), *_arguments(workdir)],
        cwd=workdir,
        env=_env(point),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    started = time.monotonic()
    try:
        _, err = proc.communicate(timeout=KILL_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"{where}: kill point {point} not reached in {KILL_TIMEOUT:.0f} s\n{err[-4000:]}")
    print(f"  {point}: exit {proc.returncode} after {time.monotonic() - started:.1f} s")
    assert proc.returncode == -signal.SIGKILL and f"KILL-POINT {point}\n" in err, (
        f"{where}: the run was to be killed at {point}, it ended with exit {proc.returncode}\n{err[-4000:]}"
    )


def kill_schedule(seed: int) -> list[str]:
    """The kill points of one round (see kill_point_proc.py for their meaning), in the order they are hit.

    Three of the six 100-bar windows get one point each: after a bar of the window, or in the writer or the cut
    keeper at the cut that ends the window (the last window's cut is the periodic one at bar N or the final one
    of close()). Each point lies beyond the cut the previous one leaves as the newest complete, so every
    restarted run reaches its point. Sometimes a start-up point comes in between."""
    rng = random.Random(seed)
    points = []
    for window in sorted(rng.sample(range(1, N // CUT_EVERY + 1), 3)):
        kind = rng.choice(("bar", "written", "registered", "marked"))
        end = window * CUT_EVERY
        if kind == "bar":
            points.append(f"bar:{rng.randint(end - CUT_EVERY + 1, end)}")
            continue
        category = "final" if end == N and rng.random() < 0.5 else "periodic"
        which = str(rng.randint(1, len(MEMBERS))) if kind == "marked" else rng.choice(MEMBERS)
        points.append(f"cut:{category}@{end}:{kind}:{which}")
    if rng.random() < 0.3:
        points.insert(rng.randrange(len(points) + 1), rng.choice(("startup:restore", "startup:restored")))
    return points


def resume_bar_after(point: str, before: int) -> int:
    """The bar of the newest complete cut once a run resumed from the cut at bar `before` is killed at `point`.

    Before a `cut:` point's cut is taken, every earlier cut is complete (kill_point_proc.py waits for it)."""
    kind, _, rest = point.partition(":")
    if kind == "startup":
        return before
    if kind == "bar":
        return max(before, int(rest) // CUT_EVERY * CUT_EVERY)
    label, stage, which = rest.split(":")
    category, bar = label.split("@")
    if category == "final":
        return int(bar)  # the periodic cut at bar N is complete before the final one is taken
    complete = stage == "marked" and int(which) == len(MEMBERS)
    return int(bar) if complete else int(bar) - CUT_EVERY


def _registry(workdir: Path) -> dict[str, list[Any]]:
    """Every registered version of each cut member, with its tags, as MLflow reports them."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    found = {}
    for name in MEMBERS:
        try:
            found[name] = list(client.search_model_versions(f"name='{name}'"))
        except mlflow.exceptions.MlflowException:
            found[name] = []
    return found


def _newest_complete_bar(registry: dict[str, list[Any]]) -> int:
    """The system's bar in the newest cut whose declared members all have a version of that cut marked
    complete (0: none): computed from the version tags alone."""
    marked: dict[str, dict[str, Any]] = {}
    declared: dict[str, set[str]] = {}
    for name, versions in registry.items():
        for v in versions:
            cut = v.tags.get(f"{TAG}cut")
            if not cut:
                continue
            declared.setdefault(cut, set()).update(n for n in v.tags.get(f"{TAG}cut_members", "").split(",") if n)
            if v.tags.get(f"{TAG}cut_complete") == "true":
                marked.setdefault(cut, {})[name] = v
    complete = [cut for cut, members in marked.items() if declared[cut] <= set(members) and "system" in members]
    if not complete:
        return 0
    newest = max(complete, key=lambda cut: int(cut.split("-", 1)[0]))
    return int(marked[newest]["system"].tags[f"{TAG}step"])


def _newest_version(registry: dict[str, list[Any]], name: str) -> int:
    """MLflow numbers a model's versions max + 1 over every version ever made (a deleted one included), and
    retention never deletes the newest: the newest number counts the versions ever registered."""
    return max((int(v.version) for v in registry[name]), default=0)


def _finals(workdir: Path) -> dict[str, Any]:
    from mlflow_persist._store.mlflow_store import MlflowStore

    store = MlflowStore(f"sqlite:///{workdir}/mlflow.db", "mlflow-persist", None)
    out = {}
    for name in MODELS:
        final = [v for v in store.list_versions(name) if v.category == "final"][-1]
        out[name] = store.load_version(final)
    return out


def _episodes(workdir: Path) -> dict[str, tuple[float, str]]:
    """Per episode id, the newest record's reward and action (a re-recorded id replaces the older record)."""
    import mlflow

    from mlflow_persist.episodes import EpisodeStore

    client = mlflow.MlflowClient(f"sqlite:///{workdir}/mlflow.db")
    experiment = client.get_experiment_by_name("mlflow-persist")
    run = next(
        r
        for r in client.search_runs([experiment.experiment_id])
        if r.data.tags.get("mlflow_persist.run_key") == "trading-system"
    )
    index = EpisodeStore(client, run.info.run_id).index.sort_values(["flush_seq", "row"])
    newest = index.drop_duplicates("episode_id", keep="last")
    return {row.episode_id: (row.reward, row.action) for row in newest.itertuples()}


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def first_seed() -> int:
    """The first round's seed: MLFLOW_PERSIST_EXACT_RESUME_SEED, else a random one (printed)."""
    given = os.environ.get(SEED_ENV)
    return int(given) if given else random.SystemRandom().randrange(1_000_000)


def test_kill_schedules_reach_beyond_each_resume() -> None:
    """Every drawn schedule is one a restarted run can follow: each point lies beyond the cut the previous one
    leaves, and the points and resume bars are the same for the same seed."""
    for seed in range(300):
        points = kill_schedule(seed)
        assert points == kill_schedule(seed)
        assert sum(not p.startswith("startup") for p in points) == 3, points
        resume = 0
        for point in points:
            kind, _, rest = point.partition(":")
            if kind != "startup":
                reached = int(rest) if kind == "bar" else int(rest.split(":")[0].split("@")[1])
                assert reached > resume, (seed, points)
            after = resume_bar_after(point, resume)
            assert after >= resume, (seed, points)
            resume = after


def test_sigkilled_and_resumed_run_ends_bitwise_where_an_uninterrupted_run_ends(
    tmp_path: Path, zygote: Zygote, soak_count: Callable[[str, int], int]
) -> None:
    base = first_seed()
    rounds = soak_count("MLFLOW_PERSIST_EXACT_RESUME_ROUNDS", 1)
    print(f"kill schedule seeds {base}..{base + rounds - 1} (replay a round with {SEED_ENV}=<its seed>)")
    reference = _workdir(tmp_path / "reference")
    _run_to_end(zygote, reference, "reference run")
    expected, episodes_expected = _finals(reference), _episodes(reference)
    assert len(episodes_expected) == N - HORIZON
    for round_ in range(rounds):
        seed = base + round_
        where = f"round {round_}, seed {seed} (replay: {SEED_ENV}={seed})"
        points = kill_schedule(seed)
        print(f"{where}: kill points {points}")
        interrupted = _workdir(tmp_path / f"interrupted-{round_}")
        resume = 0
        for point in points:
            _run_and_kill(zygote, interrupted, point, where)
            resume = resume_bar_after(point, resume)
            found = _newest_complete_bar(_registry(interrupted))
            assert found == resume, f"{where}: after {point} the newest complete cut is at bar {found}, not {resume}"
        before = _newest_version(_registry(interrupted), "system")
        _run_to_end(zygote, interrupted, where)
        registered = _newest_version(_registry(interrupted), "system") - before
        cuts = len(range(resume + CUT_EVERY, N + 1, CUT_EVERY)) + 1  # the periodic ones after the resume, the final
        assert registered == cuts, (
            f"{where}: the last run registered {registered} system checkpoints; resumed at bar {resume} it takes {cuts}"
        )
        actual = _finals(interrupted)
        for name in MODELS:
            assert actual[name].step == expected[name].step == N - HORIZON, f"{where}: {name}"
            assert _same(dict(actual[name].model_state), dict(expected[name].model_state)), (
                f"{where}: {name} weights differ"
            )
            assert _same(actual[name].optimizer_state, expected[name].optimizer_state), (
                f"{where}: {name} optimizer differs"
            )
            assert _same(actual[name].extra_state, expected[name].extra_state), f"{where}: {name} extra state differs"
        # no bar recorded twice, none lost, the same outcomes
        assert _episodes(interrupted) == episodes_expected, f"{where}: the episodes differ"
