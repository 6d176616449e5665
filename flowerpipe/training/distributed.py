"""Training as one of several processes started by torchrun, with DistributedDataParallel.

torchrun starts one process per GPU (or CPU worker) on each node and tells each its place in the
environment (RANK, LOCAL_RANK, WORLD_SIZE). `process_group` joins them: NCCL on GPUs, gloo on the
CPU. Started without torchrun, a run is the only process of its group and nothing here talks to
another process.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from flowerpipe.core.console import log
from flowerpipe.core.errors import ConfigError
from flowerpipe.model.devices import resolve_device

T = TypeVar("T")


@dataclass(frozen=True)
class Process:
    """This process's place among the run's processes, and the device it trains on."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and outputs."""
        return self.rank == 0

    @contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block before the others do (one download of pretrained weights)."""
        if not self.is_main:
            dist.barrier()
        yield
        if self.is_main and self.world_size > 1:
            dist.barrier()


@contextmanager
def process_group(device_name: str) -> Iterator[Process]:
    """This process under torchrun (joined to the others until the block ends, on its node's GPU
    LOCAL_RANK when training on CUDA), or the only process when started without torchrun."""
    device = resolve_device(device_name)
    if "WORLD_SIZE" not in os.environ:
        yield Process(0, 1, device)
        return
    if device.type == "mps":
        raise ConfigError("train.device", "mps cannot train under torchrun; use cuda or cpu")
    if device.type == "cuda":
        local, visible = int(os.environ["LOCAL_RANK"]), torch.cuda.device_count()
        if local >= visible:
            raise ConfigError(
                "train.launcher", f"{visible} GPUs visible: start at most {visible} processes per node"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    try:
        process = Process(dist.get_rank(), dist.get_world_size(), device)
        log.info("process group: %d processes, %s backend, rank 0 on %s", process.world_size, backend, device)
        yield process
    finally:
        dist.destroy_process_group()


def rank_and_size() -> tuple[int, int]:
    """(rank, number of processes) of the process group this process is in; (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sum_over_processes(values: torch.Tensor) -> torch.Tensor:
    """`values` summed element-wise over all processes (in place); itself for a single process."""
    if rank_and_size()[1] > 1:
        dist.all_reduce(values)
    return values


def same_as_main(module: nn.Module) -> None:
    """Rank 0's parameters and buffers copied into `module` in every process."""
    if rank_and_size()[1] > 1:
        for tensor in module.state_dict().values():
            dist.broadcast(tensor, src=0)


def from_main(obj: T) -> T:
    """Rank 0's `obj`, in every process."""
    if rank_and_size()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
