"""MAS inside your own DistributedDataParallel loop: two Split-MNIST tasks, one MLP, one head each.

Run on two CPU processes (gloo; nccl on GPUs) or on one, with the same numbers:

    torchrun --nproc_per_node=2 examples/ddp_own_loop.py --out omega.safetensors
    python examples/ddp_own_loop.py --out omega.safetensors

What is distributed, and how it stays equal to one process:

* training: every rank draws the same global batch (one seeded permutation) and takes its part;
  its loss is the part's *summed* cross-entropy times N/n, so that DDP's gradient average is the
  gradient of the global batch's mean loss even when n is not a multiple of N;
* the penalty: ``penalty.add_to_grad()`` after ``backward()``, which returns once DDP has
  all-reduced the gradients, so every rank adds 2λΩ(θ − θ*) to the same gradient;
* Ω: every rank passes the same data to :func:`memaware.importance.mas`, which measures its
  share of the batches and all-reduces the sums and counts (``distributed="shard"``, the
  default): the one-process Ω, on every rank. Data already split per rank go with
  ``distributed="reduce"`` (split them with ``memaware.distributed.shard_indices``, not
  ``DistributedSampler``, which pads with repeated samples).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from memaware.data.mnist import load_mnist
from memaware.data.scenarios import split_scenario
from memaware.distributed import is_main_process, rank, world_size
from memaware.importance import accumulate, batches, mas
from memaware.penalties import QuadraticPenalty


class Net(nn.Module):
    """A shared body and one 2-way head per task: ``heads[t](body(x))``."""

    def __init__(self, n_tasks: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(784, 128), nn.ReLU())
        self.heads = nn.ModuleList([nn.Linear(128, 2) for _ in range(n_tasks)])

    def forward(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return self.heads[t](self.body(x))  # type: ignore[no-any-return]


def main(
    n_train: int = 2000, epochs: int = 1, strength: float = 1.0, out: Path | None = None
) -> list[float]:
    started = "RANK" in os.environ and not dist.is_initialized()  # under torchrun
    if started:
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    torch.manual_seed(0)  # the same weights on every rank (DDP broadcasts rank 0's anyway)
    tasks = split_scenario(load_mnist(), "task").tasks[:2]
    model = Net(len(tasks))
    ddp = DistributedDataParallel(model, find_unused_parameters=True) if started else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)  # the same batches on every rank

    omega, penalty = None, None
    for t, task in enumerate(tasks):
        x, y = task.train_x[:n_train], task.train_y[:n_train]
        for _ in range(epochs):
            for index in torch.randperm(len(y), generator=generator).split(128):
                part = index.tensor_split(world_size())[rank()]  # this rank's rows
                logits = ddp(x[part], t)
                loss = F.cross_entropy(logits, y[part], reduction="sum") * world_size() / len(index)
                optimizer.zero_grad()
                loss.backward()  # returns with the gradients all-reduced
                if penalty is not None:
                    penalty.add_to_grad()  # .grad += 2λΩ(θ − θ*), the same on every rank
                optimizer.step()
        # Ω from unlabelled inputs of the task just learned, F = the logits of this task's head;
        # each rank measures every N-th batch, the sums and counts are all-reduced
        new = mas(model, batches(x, 256), outputs=lambda m, inputs, t=t: m(inputs, t))
        omega = accumulate(omega, new, rule="sum")  # the authors' Ω ← Ω + Ω_new
        penalty = QuadraticPenalty(model, omega, strength=strength)  # θ* = the parameters now
        if out is not None and is_main_process() and t == len(tasks) - 1:
            new.save(out)  # only rank 0 writes

    with torch.no_grad():
        accuracy = [
            float((model(task.test_x, t).argmax(1) == task.test_y).float().mean())
            for t, task in enumerate(tasks)
        ]
    if is_main_process():
        print(json.dumps({"test_accuracy": accuracy}))
    if started:
        dist.destroy_process_group()
    return accuracy


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="where rank 0 saves the last Ω")
    args = parser.parse_args()
    main(args.n_train, args.epochs, out=args.out)
