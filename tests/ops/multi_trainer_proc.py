"""One trainer process of the shared-server test: trains its own model and the shared one.

Usage: python multi_trainer_proc.py TRACKING_URI INDEX STEPS EVENTS_JSONL

Tracks `own<INDEX>` and `shared` through the core API, reports a scripted, deterministic
loss sequence (distinct values per process, so every checkpoint can be traced back to the
process and step that made it), and writes the core's checkpoint log events as JSON lines
(mlflow_persist._observe.logs) to EVENTS_JSONL. Exits 0 after `Persistence` closed, which
flushes everything and saves one `final` checkpoint per model.
"""

from __future__ import annotations

import random
import sys
import time

import torch

import mlflow_persist as mp
from mlflow_persist._observe.logs import configure_logging


def scripted_loss(rng: random.Random, step: int, index: int, salt: int) -> float:
    """A noisy, decreasing loss; the last digits encode (process, model) so values never collide."""
    base = 1.0 / (1.0 + 0.05 * step) * (1.0 + 0.3 * rng.random())
    return round(base, 6) + (index * 10 + salt) * 1e-9


def main() -> None:
    uri, index, steps, events_path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    events = open(events_path, "w", encoding="utf-8")  # noqa: SIM115 - kept open for the whole run
    configure_logging("INFO", "json", stream=events)
    torch.manual_seed(index)
    models = {name: torch.nn.Linear(8, 8) for name in (f"own{index}", "shared")}
    optims = {name: torch.optim.SGD(m.parameters(), lr=0.01) for name, m in models.items()}
    rngs = {name: random.Random(f"{index}-{name}") for name in models}
    cfg = mp.PersistConfig(
        tracking_uri=uri, experiment_name="multi-trainer", min_delta=0.15, min_delta_mode="rel",
        keep_best=1000, keep_periodic=1000, keep_final=1000, min_free_disk_mb=1, min_free_disk_percent=0,
        scheduler_interval_seconds=1.0, log_system_metrics=False,
    )  # fmt: skip
    with mp.Persistence(cfg) as persist:
        handles = {name: persist.track(name, model, optimizer=optims[name]) for name, model in models.items()}
        for step in range(1, steps + 1):
            for salt, (name, handle) in enumerate(handles.items()):
                x = torch.randn(16, 8)
                loss = (models[name](x) - x).pow(2).mean()
                optims[name].zero_grad()
                loss.backward()
                optims[name].step()
                handle.step(loss=scripted_loss(rngs[name], step, index, salt))
            time.sleep(0.01)
        for handle in handles.values():
            print("RUN", handle.name, handle.run_id, flush=True)
    events.flush()
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
