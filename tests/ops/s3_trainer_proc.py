"""One trainer process of the S3 tests, and the loader the tests run in a separate process.

    python s3_trainer_proc.py train SPEC_JSON
    python s3_trainer_proc.py load TRACKING_URI REQUEST_JSON

`train` tracks one model through the core API against the tracking server in the spec and writes three
records of its own next to the spec (paths in the spec):
- `events`: the core's log events as JSON lines (mlflow_persist._observe.logs), e.g. every saved version;
- `states`: one JSON line per step, `{"step", "state", "outage"}`: `state` is state_digest() of the model
  right after that step's `handle.step()` (the state a checkpoint of that step holds), `outage` whether the
  test had announced an object-store outage (the file `<control>/outage` existed);
- `outbox`: while the outage file exists, every checkpoint seen waiting in the durable outbox
  (`{"sequence", "step", "dirname", "category"}`), once each.
It runs `steps` steps; with a `control` directory it goes on until `<control>/finish` exists and then runs
`tail_steps` more. Exits 0 after `Persistence` closed (which flushes everything, saves the `final`
checkpoint and registers what waits in the outbox) and prints DONE.

`load` waits for REQUEST_JSON (a list of model URIs) to appear, then prints one JSON line
`{"uri", "version", "step", "category", "state"}` per URI, from
`mlflow_persist.load_checkpoint(uri, tracking_uri=TRACKING_URI)`.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import mlflow_persist as mp
from mlflow_persist._observe.logs import configure_logging


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the names and raw bytes of a state dict's tensors, in name order."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def scripted_loss(rng: random.Random, step: int, index: int) -> float:
    """A noisy, decreasing loss; the last digits encode the process so values never collide."""
    return round(1.0 / (1.0 + 0.05 * step) * (1.0 + 0.3 * rng.random()), 6) + index * 1e-9


def train(spec: dict[str, Any]) -> None:
    index, name = int(spec["index"]), spec["model"]
    control = Path(spec["control"]) if spec.get("control") else None
    events = open(spec["events"], "w", encoding="utf-8")  # noqa: SIM115 - kept open for the whole run
    states = open(spec["states"], "w", encoding="utf-8")  # noqa: SIM115
    outbox_log = open(spec["outbox"], "w", encoding="utf-8")  # noqa: SIM115
    configure_logging("INFO", "json", stream=events)
    torch.manual_seed(index)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 8))
    optim = torch.optim.SGD(model.parameters(), lr=0.01)
    rng = random.Random(f"s3-{index}")
    cfg = mp.PersistConfig(
        tracking_uri=spec["uri"], experiment_name=spec["experiment"], min_delta=spec["min_delta"], min_delta_mode="rel",
        periodic_every_steps=spec["periodic_every_steps"], keep_best=spec["keep_best"],
        keep_periodic=spec["keep_periodic"], keep_final=spec["keep_final"], min_free_disk_mb=1,
        min_free_disk_percent=0, scheduler_interval_seconds=0.5, log_system_metrics=False,
    )  # fmt: skip
    seen: set[int] = set()
    with mp.Persistence(cfg) as persist:
        handle = persist.track(name, model, optimizer=optim)
        step, tail = 0, None
        while True:
            step += 1
            x = torch.randn(16, 8)
            loss = (model(x) - x).pow(2).mean()
            optim.zero_grad()
            loss.backward()
            optim.step()
            handle.step(loss=scripted_loss(rng, step, index))
            outage = control is not None and (control / "outage").exists()
            states.write(json.dumps({"step": step, "state": state_digest(model.state_dict()), "outage": outage}) + "\n")
            if outage:
                assert persist.outbox is not None
                for entry in persist.outbox.entries(handle.registered_name):
                    if entry.sequence not in seen:
                        seen.add(entry.sequence)
                        outbox_log.write(
                            json.dumps(
                                {
                                    "sequence": entry.sequence,
                                    "step": entry.step,
                                    "dirname": entry.dirname,
                                    "category": entry.category,
                                }
                            )
                            + "\n"
                        )
                        outbox_log.flush()
            if control is None:
                if step >= spec["steps"]:
                    break
            elif tail is None:
                if step >= spec["steps"] and (control / "finish").exists():
                    tail = spec["tail_steps"]
            else:
                tail -= 1
                if tail <= 0:
                    break
            if step % 10 == 0:
                states.flush()
            time.sleep(spec["step_sleep"])
        print("RUN", handle.name, handle.run_id, flush=True)
    states.close()
    outbox_log.close()
    events.flush()
    print("DONE", flush=True)


def load(tracking_uri: str, request: Path) -> None:
    """Import everything first (started beside the trainers, the imports overlap their run), then wait for
    the REQUEST file (a JSON list of model URIs, written atomically) and load each."""
    import mlflow_persist._store.mlflow_store  # noqa: F401 - imports MLflow now, before the request comes

    deadline = time.monotonic() + 900
    while not request.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"no request at {request} within 900 s")
        time.sleep(0.1)
    for uri in json.loads(request.read_text()):
        state = mp.load_checkpoint(uri, tracking_uri=tracking_uri)
        print(
            json.dumps(
                {
                    "uri": uri,
                    "version": state.version,
                    "step": state.step,
                    "category": state.category,
                    "state": state_digest(state.model_state),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    if sys.argv[1] == "train":
        train(json.loads(Path(sys.argv[2]).read_text()))
    elif sys.argv[1] == "load":
        load(sys.argv[2], Path(sys.argv[3]))
    else:
        raise SystemExit(f"unknown command {sys.argv[1]!r}")
