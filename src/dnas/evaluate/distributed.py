"""Single-process or ``torchrun`` data-parallel execution: who am I, which device, how to combine numbers.

Under ``torchrun --nproc_per_node K`` the environment carries ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``;
``init_distributed`` then joins the process group (NCCL on CUDA, Gloo on CPU) and each rank uses
``cuda:LOCAL_RANK`` (or the CPU). Without those variables everything is a plain single process.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import DnasError
from ..launch import env_int, world_size
from ..rundir import resolve_device


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over ranks (float64, on the rank's device as NCCL requires)."""
        if not self.distributed:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_buffers(self, model: torch.nn.Module) -> None:
        """Give every rank rank 0's buffers (BN running statistics drift apart between DDP steps)."""
        if self.distributed:
            for b in model.buffers():
                dist.broadcast(b, 0)


def init_distributed(device: str = "auto") -> DistContext:
    """The context of this process; joins the process group when launched by ``torchrun`` with K > 1."""
    world = world_size()
    if world <= 1:
        return DistContext(device=resolve_device(device))
    rank, local = env_int("RANK"), env_int("LOCAL_RANK")
    if rank is None:
        raise DnasError("WORLD_SIZE is set but RANK is not (launch with torchrun)")
    local = rank if local is None else local
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise DnasError("--device cuda requested but no CUDA device is available")
        # One GPU per rank. torchrun tells every rank how many it started here (LOCAL_WORLD_SIZE), so all of them
        # refuse alike (one line, from local rank 0), not only the ranks left without a GPU.
        here, gpus = env_int("LOCAL_WORLD_SIZE"), torch.cuda.device_count()
        if here is not None and here > gpus:
            raise DnasError(f"torchrun started {here} processes on this machine, which has {gpus} GPU(s): "
                            f"use --nproc_per_node <= the GPU count")
        if local >= gpus:
            raise DnasError(f"this is local rank {local} but this machine has {gpus} GPU(s): start at most one "
                            f"process per GPU")
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    else:
        dev = resolve_device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev)


def shutdown_distributed(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
