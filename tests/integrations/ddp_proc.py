"""A data-parallel trainer for `torchrun --nproc-per-node 2` on CPU (gloo), with DistributedPersistence.

Usage: ddp_proc.py URI DIGEST_LOG STEPS [--fail-saves] [--stop-on-signals] [--rank-zero-timeout S]
Prints `RESTORED {...}` (per rank: restored step and a digest of the live state) and `DONE {...}`.
With `--stop-on-signals` the ranks handle SIGTERM (0.05 s a step), print `PID {...}` and `STEP {...}`, and on the stop
`STOPPED {rank, step}` before closing. With `--rank-zero-timeout S` (the other ranks' wait for a lost rank 0) it
prints `PID` and `STEP` and sleeps 0.05 s a step too.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mlflow_persist as mp  # noqa: E402
from integrations.support import DigestLog, emit, state_digest  # noqa: E402
from mlflow_persist.integrations.distributed import DistributedPersistence  # noqa: E402

PICKLED_BYTES = [0]  # what this rank handed to broadcast_object_list: the collectives that pickle


def _counting_broadcast_object_list(original):  # type: ignore[no-untyped-def]
    def broadcast_object_list(objects, *args, **kwargs):  # type: ignore[no-untyped-def]
        if dist.get_rank() == 0:
            PICKLED_BYTES[0] += sum(len(pickle.dumps(item)) for item in objects)
        return original(objects, *args, **kwargs)

    return broadcast_object_list


def tensor_bytes(*states: object) -> int:
    """The bytes of every tensor in `states` (nested dicts and lists)."""
    total = 0
    pending = list(states)
    while pending:
        value = pending.pop()
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, (list, tuple)):
            pending.extend(value)
    return total


def main() -> None:
    uri, log_path, steps = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    fail_saves = "--fail-saves" in sys.argv
    signals = "--stop-on-signals" in sys.argv
    dist.init_process_group("gloo")
    dist.broadcast_object_list = _counting_broadcast_object_list(dist.broadcast_object_list)
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(6, 512), torch.nn.Tanh(), torch.nn.Linear(512, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1)
    )
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.Adam(ddp.parameters(), lr=0.01)
    store = None
    if fail_saves:
        from mlflow_persist.testing import MemoryStore

        store = MemoryStore()
        store.fail("write", times=None)  # every save fails on rank 0
    config = mp.PersistConfig(
        tracking_uri=uri,
        periodic_every_steps=4,
        keep_best=100,
        keep_periodic=100,
        log_system_metrics=False,
        min_free_disk_mb=0,
        min_free_disk_percent=0,
        save_retry_attempts=2,
        save_retry_max_wait_seconds=0.1,
    )
    timeout = float(sys.argv[sys.argv.index("--rank-zero-timeout") + 1]) if "--rank-zero-timeout" in sys.argv else 60.0
    persist = DistributedPersistence(config, store=store, install_signal_handlers=signals, rank_zero_timeout=timeout)
    if signals or "--rank-zero-timeout" in sys.argv:
        emit("PID", {"rank": rank, "pid": os.getpid()})
    handle = persist.track("ddp_net", model, optimizer)
    pickled_before = PICKLED_BYTES[0]
    info = handle.restore()
    emit(
        "RESTORED",
        {
            "rank": rank,
            "step": info.step if info else None,
            "version": info.version if info else None,
            "digest": state_digest(model.state_dict(), optimizer.state_dict()),
            "mlflow_imported": "mlflow" in sys.modules,
            "pickled_bytes": PICKLED_BYTES[0] - pickled_before,
            "state_bytes": tensor_bytes(model.state_dict(), optimizer.state_dict()),
        },
    )
    log = DigestLog(log_path)
    generator = torch.Generator().manual_seed(1000 * rank + handle.current_step)
    target_w = torch.arange(6, dtype=torch.float32) / 6
    stopped = None
    for _ in range(steps):
        x = torch.randn(32, 6, generator=generator)
        y = (x @ target_w).unsqueeze(1)
        loss = torch.nn.functional.mse_loss(ddp(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        try:
            decision = handle.step(loss=float(mean_loss) / dist.get_world_size())
        except SystemExit as stop:  # GracefulExit: a stop signal reached some rank
            stopped = stop
            emit("STOPPED", {"rank": rank, "step": handle.current_step, "code": stop.code})
            break
        if decision.save and rank == 0:
            log.append(
                event="saved", step=handle.current_step, digest=state_digest(model.state_dict(), optimizer.state_dict())
            )
        if signals or "--rank-zero-timeout" in sys.argv:
            emit("STEP", {"rank": rank, "step": handle.current_step})
            time.sleep(0.05)
    if rank == 0:  # the final checkpoint close() takes holds this state
        log.append(
            event="saved", step=handle.current_step, digest=state_digest(model.state_dict(), optimizer.state_dict())
        )
    lost = None
    try:
        persist.close()
    except mp.PersistError as exc:  # saves that never succeeded are reported here, after training finished
        lost = str(exc)
    emit(
        "DONE",
        {
            "rank": rank,
            "step": handle.current_step,
            "lost": lost,
            "digest": state_digest(model.state_dict(), optimizer.state_dict()),
            "mlflow_imported": "mlflow" in sys.modules,
        },
    )
    dist.barrier()  # both ranks are done communicating before either tears gloo down (else: SIGABRT at exit)
    dist.destroy_process_group()
    if stopped is not None:
        raise stopped


if __name__ == "__main__":
    main()
