"""Registry cost against history: start-up restore and one save's work with many registered versions of a model,
against the same with few, on the embedded sqlite store.

For each history size (``--few``, ``--many``) a fresh store gets one real checkpoint saved through mlflow-persist
(a 64x64 linear model with Adam), then more versions registered with MLflow's own client, each on a directory of
its own (the checkpoint's files hard-linked, the registered marker inside) and with the same tags, the step
counting up, as a long run that keeps every version (keep_* windows of 10^6) would leave them. Then, alternating the two stores over ``--rounds`` rounds:

* ``startup_s``: ``Persistence(config)`` + ``track`` + ``restore()`` (what a restart costs before training);
* ``first_save_s``: the first ``handle.save("periodic")`` after that start-up, until the version is registered
  (the writer's whole work: files, registration, `best`, retention; the first one also reads the registry);
* ``save_s``: the median of the ``--saves`` saves after it (the steady state of a run that goes on).

Each figure is the median over rounds; the report gives many/few ratios (issue target <= 1.5x).

    MLFLOW_DISABLE_TELEMETRY=true .venv/bin/python scripts/bench_history.py [--few 10] [--many 5000] [--rounds 3]

The last line of the output is ``BENCH_JSON {...}`` with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

MODEL = "net"
TARGET_RATIO = 1.5
KEEP_ALL = 1_000_000


def config(uri: str) -> Any:
    import mlflow_persist as mp

    return mp.PersistConfig(
        tracking_uri=uri,
        keep_best=KEEP_ALL,
        keep_periodic=KEEP_ALL,
        keep_final=KEEP_ALL,
        log_system_metrics=False,
        min_free_disk_mb=0,
        min_free_disk_percent=0,
        worker_process="off",
    )


def model() -> tuple[Any, Any]:
    import torch

    torch.manual_seed(0)
    net = torch.nn.Linear(64, 64)
    return net, torch.optim.Adam(net.parameters(), lr=1e-3)


def build_store(directory: Path, versions: int) -> str:
    """A store holding `versions` versions of MODEL: one saved for real, the rest registered on its artifacts."""
    from mlflow import MlflowClient

    import mlflow_persist as mp
    from mlflow_persist._policy.versions import checkpoint_dirname, tag
    from mlflow_persist._store.registered_marker import mark_registered

    directory.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{directory / 'mlflow.db'}"
    net, optimizer = model()
    with mp.Persistence(config(uri), install_signal_handlers=False) as persistence:
        handle = persistence.track(MODEL, net, optimizer=optimizer)
        handle.step(loss=1.0)
        job = handle.save("periodic")
        assert job is not None and job.done.wait(120) and job.outcome == "saved", job
        persistence.close(final_checkpoints=False)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    saved = client.search_model_versions(f"name = '{MODEL}'")  # the save, and a performance save of step 1
    first = max(saved, key=lambda mv: int(mv.version))
    first_dir = Path(urlparse(first.source).path)
    step_tag = tag("step")
    for step in range(len(saved) + 1, versions + 1):
        # Its own directory, as a real save's (the files hard-linked: the bytes do not matter here, only how many
        # directories the start-up sweep finds), with the marker this release's registration leaves in it.
        directory = first_dir.parent / checkpoint_dirname(first.name, step)
        directory.mkdir()
        for file in first_dir.iterdir():
            if file.is_file() and not file.name.startswith("."):
                os.link(file, directory / file.name)
        mark_registered(directory)
        source = first.source[: -len(first_dir.name)] + directory.name
        client.create_model_version(MODEL, source, run_id=first.run_id, tags={**first.tags, step_tag: str(step)})
    return uri


def timed_save(handle: Any, loss: float) -> float:
    handle.step(loss=loss)
    began = time.perf_counter()
    job = handle.save("periodic")
    assert job is not None and job.done.wait(600) and job.outcome == "saved", job
    return time.perf_counter() - began


def measure(uri: str, saves: int) -> dict[str, float]:
    import mlflow_persist as mp

    net, optimizer = model()
    started = time.perf_counter()
    persistence = mp.Persistence(config(uri), install_signal_handlers=False)
    try:
        handle = persistence.track(MODEL, net, optimizer=optimizer)
        restored = handle.restore()
        startup = time.perf_counter() - started
        assert restored is not None, "nothing restored"
        first = timed_save(handle, 0.5)
        steady = [timed_save(handle, 0.5) for _ in range(saves)]
    finally:
        persistence.close(final_checkpoints=False)
    return {
        "startup_s": startup,
        "first_save_s": first,
        "save_s": statistics.median(steady),
        "restored_version": float(restored.version),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--few", type=int, default=10, help="versions in the small history (default 10)")
    parser.add_argument("--many", type=int, default=5000, help="versions in the long history (default 5000)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per store (default 3)")
    parser.add_argument("--saves", type=int, default=5, help="saves after the first, per round (default 5)")
    parser.add_argument("--dir", type=Path, help="where the stores go (default: a temporary directory)")
    args = parser.parse_args(argv)
    root = args.dir or Path(tempfile.mkdtemp(prefix="bench-history-"))
    sizes = {"few": args.few, "many": args.many}
    uris: dict[str, str] = {}
    build_s: dict[str, float] = {}
    for label, versions in sizes.items():
        began = time.perf_counter()
        uris[label] = build_store(root / label, versions)
        build_s[label] = time.perf_counter() - began
        print(f"built the {label} store: {versions} versions in {build_s[label]:.1f} s", flush=True)
    runs: dict[str, list[dict[str, float]]] = {"few": [], "many": []}
    for index in range(args.rounds):
        for label in ("few", "many") if index % 2 == 0 else ("many", "few"):
            runs[label].append(measure(uris[label], args.saves))
    keys = ("startup_s", "first_save_s", "save_s")
    medians = {label: {key: statistics.median(run[key] for run in runs[label]) for key in keys} for label in runs}
    ratios = {key: medians["many"][key] / medians["few"][key] for key in keys}
    print(f"\nRegistry cost against history: {args.few} versions vs {args.many}, {args.rounds} rounds, sqlite store")
    for key, what in (
        ("startup_s", "start-up restore"),
        ("first_save_s", "the first save after it"),
        ("save_s", "one save's work (to registered)"),
    ):
        verdict = "PASS" if ratios[key] <= TARGET_RATIO else "FAIL"
        print(
            f"  {what:34} {medians['few'][key] * 1000:8.0f} ms  {medians['many'][key] * 1000:8.0f} ms  "
            f"ratio {ratios[key]:.2f}x  (target <= {TARGET_RATIO}x: {verdict})"
        )
    restored = {label: sorted({int(run["restored_version"]) for run in runs[label]}) for label in runs}
    print(f"  restored versions: {restored}")
    report = {
        "benchmark": "registry_history",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "few": args.few,
        "many": args.many,
        "rounds": args.rounds,
        "saves": args.saves,
        "build_s": build_s,
        "medians": medians,
        "ratios": ratios,
        "target_ratio": TARGET_RATIO,
        "restored_versions": restored,
        "runs": runs,
    }
    print("BENCH_JSON " + json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
