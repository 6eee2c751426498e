"""A training process for the exit-path tests. Usage: python exit_proc.py URI RECORD MODE [GRACE_S]

MODE `no-close`: two saves of a 4 MB tensor, then the script ends without close().
MODE `slow-update`: every step updates a 200,000-element tensor one element at a time (a signal lands mid-
  update), records the completed state to RECORD, then calls step().
MODE `stuck`: one step, then blocks for a minute without reaching another step() boundary.
RECORD gets one JSON line per completed update: {"step": n, "digest": sha256 of the tensor bytes}, written
and fsynced by this process itself (the independent record the tests compare against).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time

import torch

import mlflow_persist as mp


class Flat(torch.nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(size), requires_grad=False)


def record(path: str, step: int, tensor: torch.Tensor) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps({"step": step, "digest": hashlib.sha256(tensor.numpy().tobytes()).hexdigest()}) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def main() -> None:
    uri, record_path, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    grace = float(sys.argv[4]) if len(sys.argv) > 4 else 30.0
    cfg = mp.PersistConfig(
        tracking_uri=uri,
        min_free_disk_mb=0,
        min_free_disk_percent=0,
        log_system_metrics=False,
        shutdown_grace_seconds=grace,
        keep_best=100,
        keep_final=100,
    )
    if mode == "no-close":
        model = Flat(1 << 20)  # 4 MB of float32
        persist = mp.Persistence(cfg)
        handle = persist.track("big", model)
        for step in (1, 2):
            model.w.data.fill_(float(step))
            record(record_path, step, model.w.data)
            handle.step(loss=1.0 / step)
        print("EXIT", flush=True)
        return  # no close(): the atexit hook must save the final checkpoint
    model = Flat(200_000)
    with mp.Persistence(cfg) as persist:
        handle = persist.track("flat", model)
        print("READY", flush=True)
        while True:
            if mode == "stuck" and handle.current_step >= 1:
                print("STUCK", flush=True)
                time.sleep(60)
            w = model.w.data
            for i in range(w.numel()):  # deliberately slow: a signal lands in the middle of it
                w[i] += 1.0
            record(record_path, handle.current_step + 1, w)
            handle.step(loss=1.0)
            print("STEP", handle.current_step, flush=True)


if __name__ == "__main__":
    main()
