"""A rank-0 adapter under DDP without ``find_unused_parameters`` (the HF Trainer's setting under gradient
checkpointing): 2 CPU processes (gloo). A rank-0 forward skips the adapter path, so a parameter of it that
asked for a gradient would never get one, and DDP raises at the next forward."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from dynlora.core.distributed import rewrap
from dynlora.core.layer import LoraLayer


def _train(process: int, store: str) -> None:
    torch.set_num_threads(1)
    # a short timeout: a collective one process never joins fails the test instead of hanging it
    dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=process, world_size=2,
                            timeout=timedelta(seconds=60))
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).requires_grad_(False)
        layers = [LoraLayer(model[i], rank=2, alpha=4.0, use_gate=True, input_gate=True,
                            generator=torch.Generator().manual_seed(i)) for i in (0, 2)]
        model[0], model[2] = layers
        layers[1].resize(keep=[])  # a method shrank it to nothing (min_rank 0)
        wrapper = nn.parallel.DistributedDataParallel(model, find_unused_parameters=False)
        x = torch.randn(4, 6, generator=torch.Generator().manual_seed(process))
        for _ in range(2):  # DDP finds an unreduced parameter at the forward after the first backward
            wrapper(x).sum().backward()
        layers[1].resize(keep=[], grow=2)  # given ranks back: it trains again
        wrapper = rewrap(wrapper)  # new parameters: a new reducer (the controller's generation changed)
        for _ in range(2):
            wrapper(x).sum().backward()
        assert layers[1].lora_B.grad is not None and layers[1].gate_w.grad is not None
        del wrapper
        dist.barrier()  # both processes are done with every collective before either tears gloo down
    finally:
        dist.destroy_process_group()
    # passed: leave without the interpreter's teardown, where gloo's threads aborted a finished process now and
    # then ("terminate called without an active exception": 2 runs in 12, 1 in 13 with the barrier alone)
    os._exit(0)


def test_ddp_without_unused_parameter_search_trains_past_a_rank_zero_adapter(tmp_path: Path) -> None:
    # spawn, not fork: a fork of a process whose thread pools already ran (any earlier test's) can copy a held
    # lock into the child, which then waits for it forever (seen once in a full suite run)
    mp.start_processes(_train, args=(str(tmp_path / "store"),), nprocs=2, join=True, start_method="spawn")
