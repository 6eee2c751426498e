"""Side-by-side benchmark: training time lost per persisted checkpoint, four ways of checkpointing.

What is measured
----------------
A model of about `--model-mb` MB of float32 parameters (a stack of `torch.nn.Linear` layers) is trained with
`torch.optim.Adam` on pre-generated random batches, so model + Adam state is about 3x the model size. A training
step is forward, MSE loss, backward and `optimizer.step()`. The monitored loss reported is `1e6 - step`, strictly
decreasing: every step is an improvement, so every step persists a checkpoint in the variants that save on one.

Variants (each in its own subprocess, with its own fresh temporary store directory as the working directory):

- `plain`: the loop, no checkpointing (the baseline).
- `sync`: after each step, `torch.save({"model": ..., "optimizer": ...})` into one file (overwritten),
  `flush()` and `os.fsync()`, on the training thread.
- `persist`: mlflow-persist with its default configuration except a fresh sqlite store; `handle.step(loss=...)`
  after each step. Snapshots are written, fsynced, checksummed and registered on the background writer thread.
- `lightning`: `lightning.pytorch.Trainer` with `ModelCheckpoint(monitor="loss", every_n_train_steps=1)` and an
  `MLFlowLogger(log_model="all")` (every checkpoint is also copied into the MLflow artifact store, synchronously).

Each subprocess runs `--warmup` untimed steps, then `--steps` timed ones, and times the timed part of the loop
on the training thread with `time.perf_counter()`. For `persist` (and `lightning`) the wait, after the loop, until
the last checkpoint is durable and registered (`persist.flush()`; for Lightning: `fit()` returning) is reported
separately as `drain_seconds`, not in the loop time. `saves` counts the checkpoints actually persisted from the
timed steps (mlflow-persist may coalesce snapshots that wait behind a running write: the newest state wins).

The parent runs the variants in rotated order over `--rounds` rounds and reports medians:

- lost per checkpoint (s) = (median s/step(variant) - median s/step(plain)) * steps / median saves(variant);
- ratios persist/sync (target <= 0.35x), persist/lightning (target <= 0.15x), lightning/sync;
- peak RSS (`ru_maxrss`) of every variant, and persist's against the memory bound (see `memory_bound`).

The last line printed is `BENCH_JSON {...}` with every figure, the per-round raw numbers and the machine.

Usage: python scripts/bench_side_by_side.py [--model-mb 100] [--steps 10] [--rounds 3]
                                            [--variants plain,sync,persist,lightning] [--dir DIR]
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.metadata
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench_common import cpu_model

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

VARIANTS = ("plain", "sync", "persist", "lightning")
RESULT_PREFIX = "VARIANT_JSON "
LAYERS = 4
DISTINCT_BATCHES = 4
LOSS_START = 1e6
TARGET_PERSIST_VS_SYNC = 0.35
TARGET_PERSIST_VS_LIGHTNING = 0.15
CHILD_TIMEOUT_SECONDS = 3600


# ============================================================================================ child side
# Everything heavy (torch, mlflow, lightning) is imported only in the variant subprocesses.


def build_model(model_mb: float) -> Any:
    """`LAYERS` square Linear layers with ReLUs between them, about `model_mb` MB of float32 in all."""
    import torch

    width = max(8, int((model_mb * 2**20 / 4 / LAYERS) ** 0.5))
    layers: list[Any] = []
    for i in range(LAYERS):
        layers.append(torch.nn.Linear(width, width))
        if i < LAYERS - 1:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def make_batches(model: Any, batch_size: int) -> list[tuple[Any, Any]]:
    """A few random (input, target) batches made once, so that no step pays for generating data."""
    import torch

    width = model[0].in_features
    generator = torch.Generator().manual_seed(0)
    return [
        (torch.randn(batch_size, width, generator=generator), torch.randn(batch_size, width, generator=generator))
        for _ in range(DISTINCT_BATCHES)
    ]


def tensor_bytes(state: Any) -> int:
    """Bytes of every tensor in a (nested) state dict."""
    from mlflow_persist._runtime.pipeline import tensor_bytes as nested_tensor_bytes

    return nested_tensor_bytes(state)


def current_rss_kb() -> int:
    import psutil

    return psutil.Process().memory_info().rss // 1024


def peak_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KB on Linux


def loss_value(step: int) -> float:
    """The monitored value reported at `step`: strictly decreasing, so every step is an improvement."""
    return LOSS_START - step


class TrainingLoop:
    """The plain training loop shared by the `plain`, `sync` and `persist` variants."""

    def __init__(self, model_mb: float, batch_size: int) -> None:
        import torch

        self.model = build_model(model_mb)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.batches = make_batches(self.model, batch_size)
        self.step_index = 0

    def step(self) -> None:
        import torch

        x, y = self.batches[self.step_index % len(self.batches)]
        self.optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(self.model(x), y)
        loss.backward()
        self.optimizer.step()
        self.step_index += 1

    def sizes(self) -> dict[str, int]:
        return {
            "model_bytes": tensor_bytes(self.model.state_dict()),
            "optimizer_bytes": tensor_bytes(self.optimizer.state_dict()),
        }


def timed_loop(trainer: TrainingLoop, steps: int, after_step: Callable[[int], None]) -> float:
    """Run `steps` steps, calling `after_step(step)` after each; return the wall time in seconds."""
    start = time.perf_counter()
    for _ in range(steps):
        trainer.step()
        after_step(trainer.step_index)
    return time.perf_counter() - start


def run_plain(args: argparse.Namespace, store: Path) -> dict[str, Any]:
    trainer = TrainingLoop(args.model_mb, args.batch)
    timed_loop(trainer, args.warmup, lambda step: None)
    loop = timed_loop(trainer, args.steps, lambda step: None)
    return {"loop_seconds": loop, "saves": 0, "drain_seconds": 0.0, **trainer.sizes()}


def run_sync(args: argparse.Namespace, store: Path) -> dict[str, Any]:
    import torch

    trainer = TrainingLoop(args.model_mb, args.batch)
    path = store / "checkpoint.pt"
    saves = 0

    def save(step: int) -> None:
        nonlocal saves
        with open(path, "wb") as f:  # one file, overwritten each time
            torch.save({"model": trainer.model.state_dict(), "optimizer": trainer.optimizer.state_dict()}, f)
            f.flush()
            os.fsync(f.fileno())
        saves += 1

    timed_loop(trainer, args.warmup, save)
    saves = 0
    loop = timed_loop(trainer, args.steps, save)
    return {"loop_seconds": loop, "saves": saves, "drain_seconds": 0.0, **trainer.sizes()}


def run_persist(args: argparse.Namespace, store: Path) -> dict[str, Any]:
    import mlflow_persist as mp

    trainer = TrainingLoop(args.model_mb, args.batch)
    # Defaults otherwise: retention keeps 3 best + 3 final versions (~2 GB at 100 MB), the disk guard's defaults
    # (500 MB / 2 % free) are met on the benchmark machine.
    cfg = mp.PersistConfig(tracking_uri=f"sqlite:///{store}/mlflow.db")
    with mp.Persistence(cfg, install_signal_handlers=False) as persist:
        handle = persist.track("bench", trainer.model, optimizer=trainer.optimizer)

        def report(step: int) -> None:
            handle.step(loss=loss_value(step))

        timed_loop(trainer, args.warmup, report)
        if not persist.flush(timeout=CHILD_TIMEOUT_SECONDS):
            raise RuntimeError("the warm-up checkpoints were not registered in time")
        saves_before, superseded_before = handle.saves, persist.writer.superseded
        loop = timed_loop(trainer, args.steps, report)
        drain_start = time.perf_counter()
        if not persist.flush(timeout=CHILD_TIMEOUT_SECONDS):
            raise RuntimeError("the timed checkpoints were not registered in time")
        drain = time.perf_counter() - drain_start
        result = {
            "loop_seconds": loop,
            "saves": handle.saves - saves_before,
            "drain_seconds": drain,
            "superseded": persist.writer.superseded - superseded_before,
            "failures": handle.failures,
            "peak_rss_before_close_kb": peak_rss_kb(),
            **trainer.sizes(),
        }
    return result  # close() (its final checkpoint included) is not timed


def run_lightning(args: argparse.Namespace, store: Path) -> dict[str, Any]:
    import warnings

    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import MLFlowLogger

    warnings.filterwarnings("ignore")  # num_workers and similar advice, irrelevant here
    warmup, steps = args.warmup, args.steps
    marks: dict[str, float] = {}
    saves_at: dict[str, int] = {}

    class BenchModule(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = build_model(args.model_mb)
            self.checkpoints_written = 0

        def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = torch.nn.functional.mse_loss(self.model(x), y)
            self.log("loss", loss_value(self.global_step + 1), on_step=True, on_epoch=False)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.Adam(self.model.parameters(), lr=1e-4)

        def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
            if batch_idx == warmup:
                marks["start"] = time.perf_counter()
                saves_at["start"] = self.checkpoints_written

        def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
            # Runs after every callback's on_train_batch_end, ModelCheckpoint's save and the logger's
            # artifact upload included. The logger's per-step metric write of the last step falls after it.
            if batch_idx == warmup + steps - 1:
                marks["end"] = time.perf_counter()
                saves_at["end"] = self.checkpoints_written

        def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
            self.checkpoints_written += 1

    module = BenchModule()
    batches = make_batches(module.model, args.batch)
    data = [batches[i % len(batches)] for i in range(warmup + steps)]  # one epoch of exactly the steps run
    loader = torch.utils.data.DataLoader(data, batch_size=None, shuffle=False)
    artifacts = store / "mlartifacts"
    logger = MLFlowLogger(
        experiment_name="bench",
        tracking_uri=f"sqlite:///{store}/mlflow.db",
        artifact_location=artifacts.as_uri(),
        log_model="all",
    )
    checkpoint = ModelCheckpoint(
        dirpath=store / "checkpoints", monitor="loss", mode="min", save_top_k=2, every_n_train_steps=1
    )
    # log_every_n_steps=1: the loss goes to MLflow every step, as mlflow-persist logs it (buffered) every step.
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=warmup + steps,
        max_epochs=1,
        logger=logger,
        callbacks=[checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        default_root_dir=store,
    )
    trainer.fit(module, train_dataloaders=loader)
    fit_returned = time.perf_counter()
    optimizer = trainer.optimizers[0]
    return {
        "loop_seconds": marks["end"] - marks["start"],
        "saves": saves_at["end"] - saves_at["start"],
        "drain_seconds": fit_returned - marks["end"],
        "artifacts_logged": sum(1 for _ in artifacts.rglob("*.ckpt")),
        "model_bytes": tensor_bytes(module.model.state_dict()),
        "optimizer_bytes": tensor_bytes(optimizer.state_dict()),
    }


RUNNERS: dict[str, Callable[[argparse.Namespace, Path], dict[str, Any]]] = {
    "plain": run_plain,
    "sync": run_sync,
    "persist": run_persist,
    "lightning": run_lightning,
}


def child_main(args: argparse.Namespace) -> None:
    importlib.import_module("torch")  # before the import-time RSS reading: every variant needs it
    if args.variant in ("persist", "lightning"):
        importlib.import_module("mlflow")  # counted in the import-time RSS, not in the checkpoint memory
    rss_after_imports = current_rss_kb()
    result = RUNNERS[args.variant](args, Path(args.store))
    result.update(
        variant=args.variant,
        steps=args.steps,
        warmup=args.warmup,
        batch=args.batch,
        seconds_per_step=result["loop_seconds"] / args.steps,
        peak_rss_kb=peak_rss_kb(),
        rss_after_imports_kb=rss_after_imports,
    )
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# ============================================================================================ parent side


def lightning_available() -> bool:
    probe = subprocess.run(
        [sys.executable, "-c", "import lightning.pytorch, lightning.pytorch.loggers"], capture_output=True, text=True
    )
    return probe.returncode == 0


def run_variant(args: argparse.Namespace, variant: str, base: Path, round_index: int) -> dict[str, Any]:
    """Run one variant in a fresh subprocess with a fresh store directory (removed afterwards)."""
    store = Path(tempfile.mkdtemp(prefix=f"{variant}-", dir=base))
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--variant",
        variant,
        "--store",
        str(store),
        "--model-mb",
        str(args.model_mb),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--batch",
        str(args.batch),
    ]
    # No MLFLOW_PERSIST_* overrides from the caller's shell: the persist variant runs the default configuration.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_PERSIST_")}
    env["MLFLOW_DISABLE_TELEMETRY"] = "true"
    try:
        done = subprocess.run(
            command, cwd=store, env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_SECONDS
        )
    finally:
        shutil.rmtree(store, ignore_errors=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not lines:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-25:])
        sys.exit(
            f"bench_side_by_side: variant {variant!r} (round {round_index + 1}) failed with exit code "
            f"{done.returncode}{'' if lines else ' and printed no result'}; stderr tail:\n{tail}"
        )
    result = json.loads(lines[-1][len(RESULT_PREFIX) :])
    result["round"] = round_index + 1
    return result


def rotated(variants: list[str], round_index: int) -> list[str]:
    shift = round_index % len(variants)
    return variants[shift:] + variants[:shift]


def median_of(results: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in results if r.get(key) is not None]
    return statistics.median(values) if values else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """None when either side is missing or the denominator is not a positive cost (noise ate it)."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def summarize(variant: str, results: list[dict[str, Any]], plain_sps: float | None, steps: int) -> dict[str, Any]:
    sps = median_of(results, "seconds_per_step")
    saves = median_of(results, "saves")
    drain = median_of(results, "drain_seconds")
    lost = lost_with_drain = None
    if variant != "plain" and plain_sps is not None and sps is not None and saves:
        lost = (sps - plain_sps) * steps / saves
        lost_with_drain = ((sps - plain_sps) * steps + (drain or 0.0)) / saves
    return {
        "seconds_per_step": sps,
        "loop_seconds": median_of(results, "loop_seconds"),
        "saves": saves,
        "drain_seconds": drain,
        "lost_per_checkpoint_seconds": lost,
        "lost_per_checkpoint_with_drain_seconds": lost_with_drain,
        "peak_rss_kb": median_of(results, "peak_rss_kb"),
        "rss_after_imports_kb": median_of(results, "rss_after_imports_kb"),
        "model_bytes": median_of(results, "model_bytes"),
        "optimizer_bytes": median_of(results, "optimizer_bytes"),
    }


def memory_bound(summary: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """persist's peak RSS against: (model + optimizer) * 3 (live state + 2 snapshots) * 1.1 (10 %), plus the
    plain variant's overhead beyond its own model + optimizer (interpreter, torch, gradients, activations):
    plain peak RSS - (model + optimizer). mlflow's import footprint is not in that overhead; it is reported
    alongside as `persist_import_overhead_kb` (persist's RSS after imports minus plain's)."""
    plain, persist = summary.get("plain"), summary.get("persist")
    if not plain or not persist or plain["peak_rss_kb"] is None or persist["peak_rss_kb"] is None:
        return None
    state_kb = (persist["model_bytes"] + persist["optimizer_bytes"]) / 1024
    plain_state_kb = (plain["model_bytes"] + plain["optimizer_bytes"]) / 1024
    baseline_kb = plain["peak_rss_kb"] - plain_state_kb
    bound_kb = state_kb * 3 * 1.1 + baseline_kb
    import_overhead = None
    if persist["rss_after_imports_kb"] is not None and plain["rss_after_imports_kb"] is not None:
        import_overhead = persist["rss_after_imports_kb"] - plain["rss_after_imports_kb"]
    with_imports = None if import_overhead is None else persist["peak_rss_kb"] / (bound_kb + import_overhead)
    return {
        "state_kb": state_kb,
        "plain_baseline_overhead_kb": baseline_kb,
        "bound_kb": bound_kb,
        "persist_peak_rss_kb": persist["peak_rss_kb"],
        "persist_vs_bound": persist["peak_rss_kb"] / bound_kb,
        "persist_import_overhead_kb": import_overhead,
        "persist_vs_bound_plus_imports": with_imports,
        "formula": "(model_bytes + optimizer_bytes) * 3 * 1.1 + (plain peak RSS - plain model+optimizer bytes)",
    }


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def fmt(value: float | None, spec: str, suffix: str = "") -> str:
    if value is None:
        width = spec.split(".")[0]
        return f"{'n/a':>{int(width) if width.isdigit() else 0}}"
    return f"{value:{spec}}{suffix}"


def print_table(
    summary: dict[str, dict[str, Any]],
    ratios: dict[str, float | None],
    bound: dict[str, Any] | None,
    args: argparse.Namespace,
) -> None:
    print(
        f"\nmedians over {args.rounds} round(s), {args.steps} timed steps after {args.warmup} warm-up, "
        f"batch {args.batch}"
    )
    header = (
        f"{'variant':<10} {'s/step':>8} {'loop s':>8} {'saves':>6} {'drain s':>8} {'lost/ckpt s':>12} "
        f"{'+drain s':>9} {'peak RSS MB':>12} {'import RSS MB':>14}"
    )
    print(header)
    print("-" * len(header))
    for variant, s in summary.items():
        print(
            f"{variant:<10} {fmt(s['seconds_per_step'], '8.3f')} {fmt(s['loop_seconds'], '8.2f')} "
            f"{fmt(s['saves'], '6.0f')} {fmt(s['drain_seconds'], '8.2f')} "
            f"{fmt(s['lost_per_checkpoint_seconds'], '12.3f')} "
            f"{fmt(s['lost_per_checkpoint_with_drain_seconds'], '9.3f')} "
            f"{fmt(s['peak_rss_kb'] / 1024 if s['peak_rss_kb'] else None, '12.0f')} "
            f"{fmt(s['rss_after_imports_kb'] / 1024 if s['rss_after_imports_kb'] else None, '14.0f')}"
        )
    print("\nlost/ckpt = (s/step - plain s/step) * steps / saves; +drain adds the post-loop wait for the last one")
    targets = {"persist_vs_sync": TARGET_PERSIST_VS_SYNC, "persist_vs_lightning": TARGET_PERSIST_VS_LIGHTNING}
    for name, value in ratios.items():
        target = targets.get(name)
        verdict = (
            ""
            if target is None or value is None
            else f"  (target <= {target}x: {'met' if value <= target else 'NOT met'})"
        )
        print(f"{name:<22} {fmt(value, '.3f', 'x')}{verdict}")
    if bound:
        print(
            f"\npersist peak RSS {bound['persist_peak_rss_kb'] / 1024:.0f} MB vs bound {bound['bound_kb'] / 1024:.0f}"
            f" MB = {bound['persist_vs_bound']:.2f}x; bound = {bound['formula']} = "
            f"{bound['state_kb'] / 1024:.0f} MB * 3.3 + {bound['plain_baseline_overhead_kb'] / 1024:.0f} MB; "
            f"mlflow import adds {fmt((bound['persist_import_overhead_kb'] or 0) / 1024, '.0f')} MB beyond plain "
            f"(vs bound + that: {fmt(bound['persist_vs_bound_plus_imports'], '.2f', 'x')})"
        )


def parent_main(args: argparse.Namespace) -> None:
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        sys.exit(f"bench_side_by_side: unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    notes = []
    if "lightning" in variants and not lightning_available():
        variants.remove("lightning")
        notes.append("lightning.pytorch is not importable: the lightning variant is skipped")
        print(f"note: {notes[-1]}")
    base = Path(args.dir or tempfile.gettempdir()).resolve()
    base.mkdir(parents=True, exist_ok=True)
    raw: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    load_start = os.getloadavg()  # other processes on the machine skew every figure: recorded for the reader
    for round_index in range(args.rounds):
        for variant in rotated(variants, round_index):
            result = run_variant(args, variant, base, round_index)
            raw[variant].append(result)
            print(
                f"round {round_index + 1}/{args.rounds} {variant:<10} {result['seconds_per_step']:.3f} s/step, "
                f"{result['saves']} saves, drain {result['drain_seconds']:.2f} s, "
                f"peak RSS {result['peak_rss_kb'] / 1024:.0f} MB",
                flush=True,
            )
    plain_sps = median_of(raw["plain"], "seconds_per_step") if "plain" in raw else None
    summary = {v: summarize(v, raw[v], plain_sps, args.steps) for v in variants}
    lost = {v: summary[v]["lost_per_checkpoint_seconds"] for v in variants}
    ratios = {
        "persist_vs_sync": ratio(lost.get("persist"), lost.get("sync")),
        "persist_vs_lightning": ratio(lost.get("persist"), lost.get("lightning")),
        "lightning_vs_sync": ratio(lost.get("lightning"), lost.get("sync")),
    }
    bound = memory_bound(summary)
    load_end = os.getloadavg()
    print_table(summary, ratios, bound, args)
    print(
        f"load average (1/5/15 min) at start {'/'.join(f'{x:.2f}' for x in load_start)}, "
        f"at end {'/'.join(f'{x:.2f}' for x in load_end)} on {os.cpu_count()} CPUs"
    )
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "args": {
            "model_mb": args.model_mb,
            "steps": args.steps,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "batch": args.batch,
            "variants": variants,
        },
        "machine": {
            "processor": platform.processor(),
            "cpu_model": cpu_model(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": package_version("torch"),
            "mlflow": package_version("mlflow"),
            "lightning": package_version("lightning"),
            "mlflow_persist": package_version("mlflow-persist"),
            "loadavg_start": load_start,
            "loadavg_end": load_end,
        },
        "targets": {"persist_vs_sync": TARGET_PERSIST_VS_SYNC, "persist_vs_lightning": TARGET_PERSIST_VS_LIGHTNING},
        "medians": summary,
        "ratios": ratios,
        "memory_bound": bound,
        "raw": raw,
        "notes": notes,
    }
    print("BENCH_JSON " + json.dumps(report, sort_keys=True))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--model-mb", type=float, default=100.0, help="model size in MB of float32 parameters")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before the timed ones")
    parser.add_argument("--batch", type=int, default=16, help="batch size (a step of ~50-300 ms at 100 MB)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the variant order rotates each round")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma list of " + ", ".join(VARIANTS))
    parser.add_argument("--dir", default=None, help="where the temporary stores go (default: the temp dir)")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--store", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.rounds < 1 or args.warmup < 1 or args.batch < 1:
        parser.error("--steps, --rounds, --warmup and --batch must be at least 1")
    return args


def main() -> None:
    args = parse_args()
    if args.variant:
        child_main(args)
    else:
        parent_main(args)


if __name__ == "__main__":
    main()
