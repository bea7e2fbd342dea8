"""DDP through ``torchrun`` (the path for users who outgrow one GPU): a no-op when WORLD_SIZE is unset."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistEnv:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistEnv:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    env = DistEnv(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0")), world)
    if not dist.is_initialized():
        if device_kind == "cuda":
            torch.cuda.set_device(env.local_rank)
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return env


def all_reduce_grads(module: nn.Module, env: DistEnv) -> None:
    """Average gradients of parameters DDP does not own (the loss's learnt task weights)."""
    if not env.enabled:
        return
    for p in module.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= env.world_size


def cleanup(env: DistEnv) -> None:
    if env.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
