"""One trainer process of the several-workers test: trains one model through the core API.

Usage: python workers_trainer_proc.py TRACKING_URI MODEL INDEX STEPS EVENTS_JSONL REPORTED_JSONL GO_FILE

Tracks MODEL, reports a scripted, deterministic loss sequence whose last digits encode INDEX (two processes
may train the same MODEL; their values never collide), writes the core's log events as JSON lines
(mlflow_persist._observe.logs) to EVENTS_JSONL, and, as the test's own record independent of the core, every
(step, loss) it reported to REPORTED_JSONL. Exits 0 after `Persistence` closed, which flushes everything
and saves one `final` checkpoint. Once its model is tracked it touches REPORTED_JSONL's sibling `ready`
and waits for GO_FILE to exist, so that every process trains (and saves) at the same time.
"""

from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import torch

import mlflow_persist as mp
from mlflow_persist._observe.logs import configure_logging

PERIODIC_EVERY_STEPS = 15
STEP_SLEEP_S = 0.2  # slow enough that most decisions become saves, not coalesced in the writer queue


def scripted_loss(rng: random.Random, step: int, index: int) -> float:
    """A noisy, decreasing loss; the last digits encode the process so values never collide."""
    base = 1.0 / (1.0 + 0.06 * step) * (1.0 + 0.3 * rng.random())
    return round(base, 6) + (index + 1) * 1e-9


def main() -> None:
    uri, model_name, index, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    events_path, reported_path, go_file = sys.argv[5], sys.argv[6], Path(sys.argv[7])
    events = open(events_path, "w", encoding="utf-8")  # noqa: SIM115 - kept open for the whole run
    reported = open(reported_path, "w", encoding="utf-8")  # noqa: SIM115
    configure_logging("INFO", "json", stream=events)
    torch.manual_seed(index)
    model = torch.nn.Linear(4, 4)
    optim = torch.optim.SGD(model.parameters(), lr=0.01)
    rng = random.Random(f"{index}-{model_name}")
    # Retention keeps everything (keep_* far above the number of saves), so every save stays registered
    # and the registry's count of versions is exactly the count of saves.
    cfg = mp.PersistConfig(
        tracking_uri=uri, experiment_name="workers", min_delta=0.1, min_delta_mode="rel",
        periodic_every_steps=PERIODIC_EVERY_STEPS,
        keep_best=1000, keep_periodic=1000, keep_final=1000, min_free_disk_mb=1, min_free_disk_percent=0,
        scheduler_interval_seconds=1.0, log_system_metrics=False,
    )  # fmt: skip
    with mp.Persistence(cfg) as persist:
        handle = persist.track(model_name, model, optimizer=optim)
        Path(reported_path).with_name("ready").touch()
        deadline = time.monotonic() + 300
        while not go_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        for step in range(1, steps + 1):
            x = torch.randn(8, 4)
            loss = (model(x) - x).pow(2).mean()
            optim.zero_grad()
            loss.backward()
            optim.step()
            value = scripted_loss(rng, step, index)
            reported.write(json.dumps({"step": step, "loss": value}) + "\n")
            handle.step(loss=value)
            time.sleep(STEP_SLEEP_S)
        reported.flush()
        print("RUN", handle.name, handle.run_id, flush=True)
    events.flush()
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
