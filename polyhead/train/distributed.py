"""Data parallel training under torchrun: one process per rank, gradients all-reduced by DDP.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; without them the run is
a single process and nothing here touches torch.distributed. Backend: nccl on GPU, gloo on CPU.
"""

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass
class DistContext:
    rank: int = 0  # this process's rank
    world_size: int = 1  # processes in the job
    local_rank: int = 0  # rank on this machine (picks the GPU)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where this rank computes

    @property
    def is_main(self) -> bool:
        """Rank 0 writes checkpoints, logs, plots and the exported packs."""
        return self.rank == 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistContext:
    """Join the process group if launched by torchrun (WORLD_SIZE > 1), else a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(device=torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        device, backend = torch.device("cpu"), "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world_size)
    return DistContext(rank, world_size, local_rank, device)


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.is_distributed and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(ctx: DistContext, flag: bool) -> bool:
    """True on every rank when it is True on at least one (so all ranks stop at the same step)."""
    if not ctx.is_distributed:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(ctx: DistContext) -> None:
    if ctx.is_distributed:
        dist.barrier()
