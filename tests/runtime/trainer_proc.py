"""A small training process for crash tests: restores, trains, prints what it restored as JSON lines.

Usage: python trainer_proc.py URI NAME STEPS [SLEEP_S] [RECORD]
Prints `RESTORED {json}` (or `RESTORED null`), then `STEP n` after each step, then `DONE`.
With RECORD, right before every step() it appends (and fsyncs) one JSON line {"step", "model", "optimizer",
"rng"}: the digests of the live state that step() snapshots if it saves, the independent record the crash
tests compare restores against.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

import torch

import mlflow_persist as mp


def digest(tensors: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        h.update(key.encode())
        h.update(tensors[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def optimizer_digest(opt: torch.optim.Optimizer) -> str:
    state = opt.state_dict()["state"]
    return digest({f"{i}.{k}": v for i, s in state.items() for k, v in s.items() if isinstance(v, torch.Tensor)})


def state_digests(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, str]:
    return {
        "model": digest(model.state_dict()),
        "optimizer": optimizer_digest(opt),
        "rng": hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest(),
    }


def record(path: str, step: int, model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"step": step, **state_digests(model, opt)}) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def main() -> None:
    uri, name, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
    sleep = float(sys.argv[4]) if len(sys.argv) > 4 else 0.01
    record_path = sys.argv[5] if len(sys.argv) > 5 else None
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    cfg = mp.PersistConfig(
        tracking_uri=uri,
        periodic_every_steps=3,
        keep_periodic=3,
        keep_best=3,
        min_free_disk_mb=1,
        min_free_disk_percent=0,
        scheduler_interval_seconds=0.5,
    )
    with mp.Persistence(cfg) as persist:
        handle = persist.track(name, model, optimizer=opt)
        info = handle.restore()
        restored = None
        if info is not None:
            restored = {
                "version": info.version,
                "step": info.step,
                "category": info.category,
                "run_id": handle.run_id,
                **state_digests(model, opt),
            }
        print("RESTORED", json.dumps(restored), flush=True)
        print("RUN", handle.run_id, flush=True)
        start = handle.current_step
        for _ in range(steps):
            x = torch.randn(32, 16)
            loss = (model(x) - x.sum(dim=1, keepdim=True)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            if record_path:  # the state step() snapshots; recorded first, since step() may raise GracefulExit
                record(record_path, handle.current_step + 1, model, opt)
            handle.step(loss=float(loss))
            print("STEP", handle.current_step, flush=True)
            time.sleep(sleep)
        assert handle.current_step == start + steps
    print("DONE", flush=True)


if __name__ == "__main__":
    main()
