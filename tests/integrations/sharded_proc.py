"""An FSDP2 trainer (`fully_shard`) for `torchrun --nproc-per-node 2` on CPU (gloo), with sharded checkpoints.

Usage: sharded_proc.py URI STEPS [--plain] [--slow] [--ddp]
Trains to step STEPS in total; each step's batch depends only on the step and the rank, so a resumed run sees
the batches an uninterrupted one sees. `--plain` trains without persistence (the reference); `--ddp` replicates
the model with DistributedDataParallel instead of sharding it (rank 0 saves the whole state). Prints, per rank,
`PID {...}` at the start, `RESTORED {...}` after the restore, `STEP {...}` after every step, and at the end `DONE {...}`: the step, the
digest of the full (gathered) weights and optimizer state, the learning rate, and how many parameter elements
this rank held (its shard).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from integrations.support import emit, keep_everything_config, state_digest  # noqa: E402
from mlflow_persist.integrations.distributed import DistributedPersistence  # noqa: E402

NAME = "fsdp_net"
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def build(ddp: bool) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The model, sharded with FSDP2 (every rank holds half of each parameter), or replicated with DDP."""
    torch.manual_seed(0)  # on every rank: the ranks draw the same dropout masks, from one random stream
    model = torch.nn.Sequential(
        torch.nn.Linear(16, 256),
        torch.nn.Tanh(),
        torch.nn.Dropout(0.2),
        torch.nn.Linear(256, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 4),
    )
    if ddp:
        model = DistributedDataParallel(model)
    else:
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer)
        fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=4, gamma=0.8)
    return model, optimizer, scheduler


def batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(8, 16, generator=generator), torch.randn(8, 4, generator=generator)


def main() -> None:
    uri, total = sys.argv[1], int(sys.argv[2])
    plain, slow, ddp = "--plain" in sys.argv, "--slow" in sys.argv, "--ddp" in sys.argv
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    emit("PID", {"rank": rank, "pid": os.getpid()})
    model, optimizer, scheduler = build(ddp)
    persist = handle = None
    start = 0
    if not plain:
        config = keep_everything_config(uri, periodic_every_steps=3)
        persist = DistributedPersistence(config, install_signal_handlers=False)
        tracked = model.module if isinstance(model, DistributedDataParallel) else model
        handle = persist.track(NAME, tracked, optimizer, scheduler)
        info = handle.restore()
        start = info.step if info is not None else 0
        emit("RESTORED", {"rank": rank, "step": start, "version": info.version if info is not None else None})
    for step in range(start + 1, total + 1):
        inputs, targets = batch(step, rank)
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        reported = loss.detach().clone()
        dist.all_reduce(reported)
        if handle is not None:
            handle.step(step=step, loss=float(reported) / dist.get_world_size())
        emit("STEP", {"rank": rank, "step": step})
        if slow:
            time.sleep(0.1)
    if persist is not None:
        persist.close()
    weights = get_model_state_dict(model, options=FULL)
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=FULL)
    held = sum(getattr(parameter, "to_local", lambda p=parameter: p)().numel() for parameter in model.parameters())
    emit(
        "DONE",
        {
            "rank": rank,
            "step": total,
            "weights": state_digest(weights) if rank == 0 else None,
            "optimizer": state_digest(optimizer_state) if rank == 0 else None,
            "lr": scheduler.get_last_lr()[0],
            "held": held,
            "total": sum(parameter.numel() for parameter in model.parameters()),
        },
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
