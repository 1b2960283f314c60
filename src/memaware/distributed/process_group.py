"""The process group memaware runs in: who this process is, how it was started, and sums over it.

Without an initialised ``torch.distributed`` process group every helper answers as for one
process (rank 0 of 1) and :func:`sum_over_ranks` returns its argument: the one-process path does
no communication. Under ``torchrun`` the command line starts the group itself
(:func:`process_group`): gloo for a CPU run, nccl for a CUDA one, each process on the GPU of its
``LOCAL_RANK``.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.distributed as dist

from memaware.errors import ConfigError

#: environment variables torchrun sets in every process it starts
_LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

T = TypeVar("T")


def is_distributed() -> bool:
    """Whether a process group of more than one process is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """This process's rank in the group (0 without one)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes in the group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main_process() -> bool:
    """Whether this process is rank 0, the one that prints and writes files."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    """Whether the environment is one that ``torchrun`` sets up for a group of several processes."""
    return all(name in os.environ for name in _LAUNCHER_VARIABLES) and (
        int(os.environ["WORLD_SIZE"]) > 1
    )


def rank_device(device: str) -> str:
    """The device of this process under torchrun for the run's ``--device``.

    ``cuda`` (and ``auto`` on a CUDA machine) becomes ``cuda:<LOCAL_RANK>``, one GPU per process;
    a GPU named by number would be shared by every process, which nccl refuses, so it is an error.
    """
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return f"cuda:{local}"
    if device.startswith("cuda:"):
        raise ConfigError(
            f"--device {device} under torchrun would put every process on one GPU; use "
            "--device cuda: each process takes the GPU of its LOCAL_RANK"
        )
    if device == "mps":
        raise ConfigError("--device mps cannot run under torchrun (no collective backend); use cpu")
    return device


def backend_for(device: torch.device) -> str:
    """The collective backend for the device the processes compute on: nccl on CUDA, else gloo."""
    return "nccl" if device.type == "cuda" else "gloo"


@contextmanager
def process_group(device: str) -> Iterator[str]:
    """Under torchrun, the process group for ``device`` for the block; yields this process's device.

    Outside torchrun (or when a group exists already) nothing is started and ``device`` is
    yielded as it is. The group the block started is destroyed when it ends: after a block that
    ended well, once every rank has got there and the objects still holding it (DDP wrappers in
    reference cycles) are freed, so that no gloo thread outlives it into the interpreter's
    shutdown, where it aborts the process.
    """
    if not launched_by_torchrun() or dist.is_initialized():
        yield device
        return
    mine = rank_device(device)
    placed = torch.device(mine)
    if placed.type == "cuda":
        torch.cuda.set_device(placed)
    dist.init_process_group(backend=backend_for(placed))
    try:
        yield mine
    except BaseException:
        dist.destroy_process_group()  # no barrier: the other ranks may never reach it
        raise
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def _collective_device(tensor: torch.device) -> torch.device:
    """Where a tensor on ``tensor`` is reduced: nccl reduces CUDA tensors, gloo CPU ones."""
    return tensor if dist.get_backend() == "nccl" else torch.device("cpu")


def sum_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """``Σ_r value_r`` over the processes of the group (``value`` itself without one)."""
    if not is_distributed():
        return value
    buffer = value.to(_collective_device(value.device)).clone()
    dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
    return buffer.to(value.device)


@torch.no_grad()
def broadcast_from_main(module: torch.nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers of ``module`` (nothing without a group).

    For state each rank computes on its own that must be the same everywhere: BatchNorm's running
    statistics after a task (each rank saw its part of the batches), or a method's autoencoders
    (trained alike on every rank, up to a GPU's non-deterministic kernels).
    """
    if not is_distributed():
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        where = _collective_device(tensor.device)
        buffer = tensor.detach().to(where)  # the tensor's own storage where it is reduced
        dist.broadcast(buffer, src=0)
        if where != tensor.device:
            tensor.copy_(buffer)


def value_of_main(value: T) -> T:
    """Rank 0's ``value`` on every rank (``value`` itself without a group): a picklable choice
    each rank makes alone that must agree, such as an output folder named by the clock."""
    if not is_distributed():
        return value
    shared: list[object] = [value]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]  # type: ignore[return-value]
