"""Main-job overhead benchmark: trading-system training steps/s with persistence ON vs OFF.

What is measured
----------------
The reference trading system of ``mlflow-persist run`` (DQN, CNN, COB RL, Extrema on the bundled
EURUSD bars) is driven through the real entry point, ``mlflow_persist.trading.app.run_trading``, in
two variants with the same seed and the same number of bars (``--steps``):

* ``on``  -- exactly what ``mlflow-persist run --no-progress`` does with a default ``PersistConfig``
  on a fresh sqlite store (``sqlite:///<dir>/mlflow.db``) in its own directory: ``Persistence``,
  checkpoints (trading default: periodic every 100 steps; performance saves when the core's policy
  sees an improvement and when an episode's evaluation improves), metric logging, and episode
  recording (``open_recorder``, on by default in ``run``).
* ``off`` -- the same ``run_trading`` call with ``persistence_factory`` returning a null context
  (``persistence=None``) and no ``recorder_factory``: the same models, trainers, bars and training
  loop (``EnhancedRealtimeTrainingSystem.run``), but no Persistence at all -- no checkpoints, no
  metric logging, no episode recording. The trading code supports this as is; nothing in
  ``mlflow_persist`` is changed.

Each variant runs in its own subprocess (this script with the hidden ``--variant on|off``). The
child swaps ``EnhancedRealtimeTrainingSystem`` for a subclass whose ``run()`` records
``time.perf_counter()`` at entry and exit and after every bar (a list append per bar, in both
variants). The headline figure is ``steps / (exit - entry)``: the training loop only. Excluded:
interpreter start, imports, store creation, tracking/restore and recorder start-up (reported as
``startup_s``), and the shutdown after the loop (recorder close + final checkpoints + store close,
reported as ``shutdown_s``). A second rate, ``steady``, also drops the first ``W`` bars
(``W = min(50, steps // 10)``) as a warm-up, timed from the W-th bar's stamp to the last one.

Rounds alternate the order (on, off, off, on, on, off, ...) over ``--rounds`` pairs; the report
gives medians over rounds and the ratio ``median(on) / median(off)`` (issue target >= 95 %).

For the ``on`` runs a logging handler on the ``mlflow_persist`` logger collects every
``saved vN (... ms)`` event (its ``duration_s`` extra field, measured by the writer thread from
start of the save to registration). The report gives count, median, p90 and max over the
checkpoints decided during the loop (periodic and performance, including any the writer finished
only after the loop ended); the ``final`` checkpoints of the shutdown are counted separately.
Each run also records ``/proc/loadavg`` at its start: other jobs on the machine skew the rates.
With the default ``worker_process="auto"`` the ``on`` runs send metric batches to a persistence worker
process; its CPU (its whole life, imports included) is reported as ``cpu_worker_process_s`` beside the
training process's own, so work moved there is counted, not hidden.

Equal-work check: both variants must process the same bars and run the same number of optimizer
steps per model (Adam ``step`` counters, DQN updates). The CNN and Extrema weights depend only on
the bars (not on the actions), so their final weights must be bit-identical across all runs. DQN and
COB RL learn from the actions chosen by the *serving* copies, which with persistence on switch to each
system checkpoint's weights 10 bars after it (at fixed bars) and with persistence off never switch, so
their weights are expected to differ between variants (the compute per step is the same shape).

    MLFLOW_DISABLE_TELEMETRY=true .venv/bin/python scripts/bench_main_job.py [--steps N] [--rounds R] [--dir D]

The last line of the output is ``BENCH_JSON {...}`` with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench_common import cpu_model

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

DEFAULT_STEPS = 1500
DEFAULT_ROUNDS = 3
SEED = 0
TARGET_RATIO = 0.95
CHILD_TIMEOUT_S = 900


# ==================================================================================== child


@dataclass
class LoopProbe:
    """What the instrumented ``run()`` records in the child."""

    system: Any = None
    t_enter: float | None = None
    t_exit: float | None = None
    bar_times: list[float] = field(default_factory=list)
    cpu_process: float = 0.0
    cpu_main_thread: float = 0.0
    cpu_by_thread: dict[str, float] = field(default_factory=dict)


class SaveCollector(logging.Handler):
    """Collects the ``saved vN`` checkpoint events (``outcome == "saved"`` with ``duration_s``)."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.saves: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "outcome", None) != "saved" or getattr(record, "duration_s", None) is None:
            return
        self.saves.append(
            {
                "t": time.perf_counter(),
                "model": getattr(record, "model", None),
                "category": getattr(record, "category", None),
                "version": getattr(record, "version", None),
                "step": getattr(record, "step", None),
                "duration_s": float(record.duration_s),  # type: ignore[attr-defined]
                "thread": record.threadName,
            }
        )


def thread_cpu() -> dict[str, float]:
    """CPU seconds (user + system) so far of every live Python thread, by thread name (from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    usage: dict[str, float] = {}
    for thread in threading.enumerate():
        with contextlib.suppress(OSError, ValueError, IndexError, TypeError):
            fields = Path(f"/proc/self/task/{thread.native_id}/stat").read_text().rsplit(")", 1)[1].split()
            seconds = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14 and 15 of stat)
            usage[thread.name] = usage.get(thread.name, 0.0) + seconds
    return usage


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Per-thread CPU spent between two snapshots (threads started meanwhile count from zero)."""
    return {name: round(after[name] - before.get(name, 0.0), 3) for name in sorted(after)}


def install_probe(probe: LoopProbe) -> None:
    """Make ``run_trading`` build an ``EnhancedRealtimeTrainingSystem`` whose ``run()`` is timed."""
    from mlflow_persist.trading import system as system_module

    base = system_module.EnhancedRealtimeTrainingSystem

    class TimedSystem(base):  # type: ignore[misc, valid-type]
        def run(self, *args: Any, on_step: Any = None, **kwargs: Any) -> int:
            probe.system = self
            stamps = probe.bar_times

            def stamped(decision: Any) -> None:
                if on_step is not None:
                    on_step(decision)
                stamps.append(time.perf_counter())

            cpu0, thread0, threads0 = time.process_time(), time.thread_time(), thread_cpu()
            probe.t_enter = time.perf_counter()
            try:
                return super().run(*args, on_step=stamped, **kwargs)
            finally:
                probe.t_exit = time.perf_counter()
                probe.cpu_process = time.process_time() - cpu0
                probe.cpu_main_thread = time.thread_time() - thread0
                probe.cpu_by_thread = cpu_delta(threads0, thread_cpu())

    system_module.EnhancedRealtimeTrainingSystem = TimedSystem  # type: ignore[misc]


def weights_fingerprint(model: Any) -> str:
    """sha256 over the model's state_dict (names, dtypes, shapes and bytes), in key order."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()[:16]


def optimizer_steps(optimizer: Any) -> int:
    """The largest Adam ``step`` counter over the optimizer's parameters (one per optimizer.step())."""
    steps = [int(state["step"]) for state in optimizer.state.values() if "step" in state]
    return max(steps, default=0)


def work_summary(system: Any) -> dict[str, Any]:
    """Bars done, optimizer steps and weight fingerprints per model: the equal-work evidence."""
    summary: dict[str, Any] = {"steps_done": int(system.steps_done), "models": {}}
    for name, trainer in system.trainers.items():
        summary["models"][name] = {
            "optimizer_steps": optimizer_steps(trainer.optimizer),
            "fingerprint": weights_fingerprint(trainer.model),
        }
    dqn = system.trainers.get("dqn")
    if dqn is not None:
        summary["dqn_updates"] = int(dqn.updates)
    return summary


def steady_rate(bar_times: list[float], warmup: int) -> float | None:
    """Bars per second after the first ``warmup`` bars (timed from the warmup-th bar's stamp)."""
    if warmup < 1 or len(bar_times) <= warmup:
        return None
    span = bar_times[-1] - bar_times[warmup - 1]
    return (len(bar_times) - warmup) / span if span > 0 else None


def count_by(keys: Iterable[Any]) -> dict[str, int]:
    """How often each key occurs (keys as strings)."""
    counts: dict[str, int] = {}
    for key in keys:
        counts[str(key)] = counts.get(str(key), 0) + 1
    return counts


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages (other jobs on the machine skew the rates)."""
    with contextlib.suppress(OSError):
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    return None


def run_child(variant: str, steps: int, workdir: Path) -> dict[str, Any]:
    """One variant, in this process; returns its figures."""
    t_start = time.perf_counter()
    import mlflow
    import torch

    from mlflow_persist.cli.options import apply_logging, log_options
    from mlflow_persist.config import PersistConfig
    from mlflow_persist.trading.app import run_trading
    from mlflow_persist.trading.recording import open_recorder

    t_imported = time.perf_counter()
    probe = LoopProbe()
    install_probe(probe)
    collector = SaveCollector()
    workdir.mkdir(parents=True, exist_ok=True)
    config = PersistConfig(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    apply_logging(*log_options(config))  # the config's level and format (INFO, text), to stderr
    logging.getLogger("mlflow_persist").addHandler(collector)

    t_call = time.perf_counter()
    if variant == "on":
        run_trading(config, steps=steps, minutes=None, seed=SEED, progress=False, recorder_factory=open_recorder)
    else:
        run_trading(
            config,
            steps=steps,
            minutes=None,
            seed=SEED,
            progress=False,
            persistence_factory=lambda cfg: contextlib.nullcontext(None),
        )
    t_done = time.perf_counter()
    # The persistence worker process (closed with the Persistence, so waited for by now) burns CPU outside this
    # process: reported beside the training process's own, so that the work moved there is not hidden.
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert probe.t_enter is not None and probe.t_exit is not None and probe.system is not None

    loop_s = probe.t_exit - probe.t_enter
    warmup = min(50, steps // 10)
    training_saves = [s for s in collector.saves if s["category"] != "final"]
    return {
        "variant": variant,
        "steps": steps,
        "loop_s": loop_s,
        "steps_per_s": len(probe.bar_times) / loop_s if loop_s > 0 else None,
        "steady_steps_per_s": steady_rate(probe.bar_times, warmup),
        "warmup_bars": warmup,
        "import_s": t_imported - t_start,
        "startup_s": probe.t_enter - t_call,
        "shutdown_s": t_done - probe.t_exit,
        "cpu_process_s": probe.cpu_process,
        "cpu_main_thread_s": probe.cpu_main_thread,
        "cpu_worker_process_s": children.ru_utime + children.ru_stime,
        "cpu_by_thread_s": probe.cpu_by_thread,
        "save_durations_s": [round(s["duration_s"], 4) for s in training_saves],
        "saves_by_category": count_by(s["category"] for s in training_saves),
        "saves_after_loop": sum(s["t"] > probe.t_exit for s in training_saves),
        "final_saves": len(collector.saves) - len(training_saves),
        "loadavg_before": load_average(),
        "work": work_summary(probe.system),
        "torch": torch.__version__,
        "mlflow": mlflow.__version__,
        "torch_threads": torch.get_num_threads(),
    }


# ==================================================================================== parent


def spawn(variant: str, steps: int, workdir: Path) -> dict[str, Any]:
    """Run one variant in a fresh interpreter; its output goes to ``workdir/child.log``."""
    workdir.mkdir(parents=True, exist_ok=True)
    result_file = workdir / "result.json"
    log_file = workdir / "child.log"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--variant",
        variant,
        "--steps",
        str(steps),
        "--dir",
        str(workdir),
        "--result-file",
        str(result_file),
    ]
    with log_file.open("w") as log:
        proc = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, timeout=CHILD_TIMEOUT_S, check=False)
    if proc.returncode != 0 or not result_file.exists():
        tail = log_file.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"{variant} child failed (rc {proc.returncode}); log tail:\n{tail}")
    return json.loads(result_file.read_text())


def round_order(rounds: int) -> list[tuple[int, str]]:
    """(round, variant) in the alternating order on, off, off, on, on, off, ..."""
    order: list[tuple[int, str]] = []
    for index in range(rounds):
        pair = ("on", "off") if index % 2 == 0 else ("off", "on")
        order.extend((index, variant) for variant in pair)
    return order


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile ``q`` in [0, 100]."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median_of(results: list[dict[str, Any]], key: str) -> float | None:
    """Median of ``key`` over the runs that have it."""
    values = [r[key] for r in results if r.get(key) is not None]
    return statistics.median(values) if values else None


def equal_work_check(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Same bars and optimizer steps everywhere; CNN/Extrema weights identical; DQN/COB compared per variant."""
    works = [r["work"] for r in results]
    models = sorted(works[0]["models"])
    same_steps = len({w["steps_done"] for w in works}) == 1
    same_optimizer_steps = all(len({w["models"][m]["optimizer_steps"] for w in works}) == 1 for m in models)
    same_dqn_updates = len({w.get("dqn_updates") for w in works}) == 1
    fingerprints: dict[str, dict[str, list[str]]] = {}
    for model in models:
        fingerprints[model] = {
            variant: sorted({r["work"]["models"][model]["fingerprint"] for r in results if r["variant"] == variant})
            for variant in ("on", "off")
        }
    identical = {m: len(set(fingerprints[m]["on"]) | set(fingerprints[m]["off"])) == 1 for m in models}
    off_deterministic = all(len(fingerprints[m]["off"]) == 1 for m in models)
    return {
        "steps_done": sorted({w["steps_done"] for w in works}),
        "optimizer_steps": {m: sorted({w["models"][m]["optimizer_steps"] for w in works}) for m in models},
        "dqn_updates": sorted({w.get("dqn_updates") for w in works}),
        "same_bars": same_steps,
        "same_optimizer_steps": same_optimizer_steps and same_dqn_updates,
        "weights_identical_on_vs_off": identical,
        "off_runs_deterministic": off_deterministic,
        "fingerprints": fingerprints,
        "passed": same_steps
        and same_optimizer_steps
        and same_dqn_updates
        and identical.get("cnn", False)
        and identical.get("extrema", False),
    }


def save_stats(on_results: list[dict[str, Any]]) -> dict[str, Any]:
    """Checkpoints decided during the loop (periodic/performance; final ones excluded), over all on-runs."""
    durations = [d for r in on_results for d in r["save_durations_s"]]
    by_category: dict[str, int] = {}
    for r in on_results:
        for category, count in r["saves_by_category"].items():
            by_category[category] = by_category.get(category, 0) + count
    return {
        "saves_per_round": [len(r["save_durations_s"]) for r in on_results],
        "saves_finished_after_loop_per_round": [r["saves_after_loop"] for r in on_results],
        "final_saves_per_round": [r["final_saves"] for r in on_results],
        "saves_by_category_all_rounds": by_category,
        "save_duration_median_s": statistics.median(durations) if durations else None,
        "save_duration_p90_s": percentile(durations, 90),
        "save_duration_max_s": max(durations) if durations else None,
        "save_duration_n": len(durations),
    }


def thread_cpu_medians(results: list[dict[str, Any]]) -> dict[str, float]:
    """Median over runs of each thread's loop CPU seconds (a thread missing from a run counts 0)."""
    names = sorted({name for r in results for name in r["cpu_by_thread_s"]})
    return {name: round(statistics.median(r["cpu_by_thread_s"].get(name, 0.0) for r in results), 3) for name in names}


def rounded(value: Any, digits: int = 4) -> Any:
    """``value`` with every float rounded to ``digits`` decimals (for a readable BENCH_JSON line)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {key: rounded(item, digits) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item, digits) for item in value]
    return value


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def print_report(report: dict[str, Any]) -> None:
    print()
    print(f"Main-job overhead: {report['steps']} bars per run, {report['rounds']} rounds, seed {SEED}")
    print(f"  {report['cpu_model']} x{report['cpu_count']}, torch {report['torch']}, mlflow {report['mlflow']}")
    print()
    print(
        f"{'round':>5} {'variant':>7} {'steps/s':>9} {'steady':>9} {'loop s':>8} {'startup s':>9} "
        f"{'shutdown s':>10} {'cpu proc s':>10} {'cpu main s':>10} {'cpu wrk s':>9} {'saves':>5} {'load1':>5}"
    )
    for r in report["runs"]:
        print(
            f"{r['round']:>5} {r['variant']:>7} {fmt(r['steps_per_s']):>9} {fmt(r['steady_steps_per_s']):>9} "
            f"{fmt(r['loop_s'], '.2f'):>8} {fmt(r['startup_s'], '.2f'):>9} {fmt(r['shutdown_s'], '.2f'):>10} "
            f"{fmt(r['cpu_process_s'], '.2f'):>10} {fmt(r['cpu_main_thread_s'], '.2f'):>10} "
            f"{fmt(r['cpu_worker_process_s'], '.2f'):>9} "
            f"{len(r['save_durations_s']) if r['variant'] == 'on' else '':>5} "
            f"{fmt((r['loadavg_before'] or [None])[0], '.2f'):>5}"
        )
    m = report["medians"]
    print()
    print(
        f"median steps/s   on {fmt(m['on_steps_per_s'])}   off {fmt(m['off_steps_per_s'])}   "
        f"ratio on/off {fmt(100 * m['ratio'] if m['ratio'] else None)} %  (target >= {100 * TARGET_RATIO:.0f} %: "
        f"{'PASS' if m['ratio'] and m['ratio'] >= TARGET_RATIO else 'FAIL'})"
    )
    print(
        f"median steady    on {fmt(m['on_steady_steps_per_s'])}   off {fmt(m['off_steady_steps_per_s'])}   "
        f"ratio on/off {fmt(100 * m['steady_ratio'] if m['steady_ratio'] else None)} %  "
        f"(first {report['runs'][0]['warmup_bars']} bars excluded)"
    )
    print(f"per-round ratios {[round(x, 4) for x in report['per_round_ratio']]}")
    for variant in ("on", "off"):
        print(f"loop CPU by thread, {variant} (median s): {report['cpu_by_thread_median_s'][variant]}")
    s = report["saves"]
    ms = lambda v: fmt(v * 1000 if v is not None else None, ".0f")  # noqa: E731
    print(
        f"training saves (on): per round {s['saves_per_round']} {s['saves_by_category_all_rounds']}; "
        f"duration median {ms(s['save_duration_median_s'])} ms, p90 {ms(s['save_duration_p90_s'])} ms, "
        f"max {ms(s['save_duration_max_s'])} ms (n={s['save_duration_n']}); finished after the loop "
        f"{s['saves_finished_after_loop_per_round']}; final saves {s['final_saves_per_round']}"
    )
    c = report["equal_work"]
    print(
        f"equal work: bars {c['steps_done']}, optimizer steps {c['optimizer_steps']}, dqn updates "
        f"{c['dqn_updates']} -> same bars {c['same_bars']}, same optimizer steps {c['same_optimizer_steps']}"
    )
    print(
        f"  final weights identical on vs off: {c['weights_identical_on_vs_off']}; "
        f"off runs deterministic: {c['off_runs_deterministic']}  => {'PASS' if c['passed'] else 'FAIL'}"
    )
    print(
        "  (dqn/cob_rl learn from actions of the serving copies, which switch to system checkpoints' weights "
        "only with persistence on)"
    )


def run_parent(steps: int, rounds: int, base: Path | None) -> dict[str, Any]:
    root = base or Path(tempfile.mkdtemp(prefix="bench-main-job-"))
    root.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    try:
        for index, variant in round_order(rounds):
            workdir = Path(tempfile.mkdtemp(prefix=f"r{index}-{variant}-", dir=root))
            print(f"round {index} {variant}: running {steps} bars ...", flush=True)
            result = spawn(variant, steps, workdir)
            result["round"] = index
            runs.append(result)
            print(
                f"round {index} {variant}: {result['steps_per_s']:.1f} steps/s (loop {result['loop_s']:.1f} s)",
                flush=True,
            )
    finally:
        if base is None:
            shutil.rmtree(root, ignore_errors=True)
    on = [r for r in runs if r["variant"] == "on"]
    off = [r for r in runs if r["variant"] == "off"]
    on_median, off_median = median_of(on, "steps_per_s"), median_of(off, "steps_per_s")
    on_steady, off_steady = median_of(on, "steady_steps_per_s"), median_of(off, "steady_steps_per_s")
    per_round = [
        next(r for r in on if r["round"] == i)["steps_per_s"] / next(r for r in off if r["round"] == i)["steps_per_s"]
        for i in range(rounds)
    ]
    return {
        "benchmark": "main_job_overhead",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "steps": steps,
        "rounds": rounds,
        "seed": SEED,
        "dir": str(root) if base is not None else None,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": runs[0]["torch"],
        "mlflow": runs[0]["mlflow"],
        "torch_threads": runs[0]["torch_threads"],
        "medians": {
            "on_steps_per_s": on_median,
            "off_steps_per_s": off_median,
            "ratio": on_median / off_median if on_median and off_median else None,
            "on_steady_steps_per_s": on_steady,
            "off_steady_steps_per_s": off_steady,
            "steady_ratio": on_steady / off_steady if on_steady and off_steady else None,
            "on_startup_s": median_of(on, "startup_s"),
            "off_startup_s": median_of(off, "startup_s"),
            "on_shutdown_s": median_of(on, "shutdown_s"),
            "off_shutdown_s": median_of(off, "shutdown_s"),
        },
        "cpu_by_thread_median_s": {"on": thread_cpu_medians(on), "off": thread_cpu_medians(off)},
        "target_ratio": TARGET_RATIO,
        "per_round_ratio": per_round,
        "saves": save_stats(on),
        "equal_work": equal_work_check(runs),
        "runs": runs,
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help=f"bars per run (default {DEFAULT_STEPS})")
    parser.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help=f"on/off pairs (default {DEFAULT_ROUNDS})")
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where the per-run stores and logs go (kept); default: a temp dir, removed at the end",
    )
    parser.add_argument("--variant", choices=("on", "off"), help=argparse.SUPPRESS)
    parser.add_argument("--result-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.rounds < 1:
        parser.error("--steps and --rounds must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.variant is not None:
        workdir = args.dir or Path(tempfile.mkdtemp(prefix=f"bench-main-job-{args.variant}-"))
        result = run_child(args.variant, args.steps, workdir)
        text = json.dumps(result)
        if args.result_file is not None:
            args.result_file.write_text(text)
        else:
            print("CHILD_JSON " + text)
        return 0
    report = run_parent(args.steps, args.rounds, args.dir)
    print_report(report)
    print("BENCH_JSON " + json.dumps(rounded(report), default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
