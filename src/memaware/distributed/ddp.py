"""The training loop under torchrun: ``DistributedDataParallel`` over each rank's part of a batch.

Every rank draws the same global batch of ``--batch-size`` rows (one seeded permutation, as on one
process) and takes its part, rows ``⌊n·r/N⌋ .. ⌊n·(r+1)/N⌋``; no per-sample Python. Its loss is
the part's summed cross-entropy scaled by N/n,

    L_r = (N/n) Σ_{k ∈ part r} ℓ_k,   so that DDP's mean (1/N) Σ_r ∇L_r = ∇ (1/n) Σ_k ℓ_k,

the gradient of the global batch's mean loss on one process, also when n is not a multiple of
N (the last batch of an epoch). It differs from one process only by float rounding: each rank sums
its part's gradients and the all-reduce adds the ranks' sums in another order.

DDP is built per task (:func:`distributed_task_loss`), when the task's heads exist, over the
backbone and the heads that the task trains; the heads of past tasks are left out of it (their
``.grad`` stays ``None`` when the loss does not reach them, so the optimizer does not step them,
as on one process). Building it broadcasts rank 0's parameters and buffers, so every rank starts
the task from the same weights. ``find_unused_parameters`` is on only where a part may miss a
head (joint training over several heads).

After ``backward()`` returns, the gradients are the all-reduced ones: a method's
``after_backward`` (the quadratic penalties' 2λΩ(θ − θ*), SI's path integral) then acts on the
same gradient on every rank, and the optimizer keeps the ranks' weights equal.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from memaware.distributed.process_group import is_distributed, rank, world_size
from memaware.errors import ConfigError
from memaware.models.multihead import MultiHeadClassifier

#: loss(model, x, y, heads): the training loop's task loss (mean cross-entropy of a batch)
TaskLoss = Callable[
    [MultiHeadClassifier, torch.Tensor, torch.Tensor, "torch.Tensor | int"], torch.Tensor
]

#: methods refused under torchrun, with the reason: their loss term (``Method.loss_term``) is a
#: forward pass of their own on the whole batch, outside DDP's and not split over the ranks, and
#: their warm-up or autoencoders train in loops of their own; none of it is shown to match one
#: process, so they do not run there
REFUSED: dict[str, str] = {
    "lwf": "its distillation loss is a forward pass of its own outside DistributedDataParallel's "
    "(and it trains the past heads, which DDP does not hold)",
    "ebll": "its code loss is a forward pass of its own outside DistributedDataParallel's "
    "(through autoencoders trained in a loop of their own)",
}


def check_methods(names: Sequence[str]) -> None:
    """Under a process group, :class:`ConfigError` naming the first method that cannot run there."""
    if not is_distributed():
        return
    for name in names:
        if name in REFUSED:
            raise ConfigError(
                f"method {name} cannot run under torchrun: {REFUSED[name]}; run it as one "
                "process, or leave it out of --methods"
            )


def rank_part(n: int) -> slice:
    """This rank's rows of a batch of ``n``: ``⌊n·r/N⌋ .. ⌊n·(r+1)/N⌋`` (disjoint, covering all)."""
    r, ranks = rank(), world_size()
    return slice(n * r // ranks, n * (r + 1) // ranks)


class _PartLoss(nn.Module):
    """The module DDP wraps: ``(N/n) Σ_{k ∈ part} ℓ_k`` of this rank's part of a batch of ``n``.

    ``trained`` are the parameters DDP reduces (the model's, less the ignored past heads).
    """

    def __init__(
        self, model: MultiHeadClassifier, task_loss: TaskLoss, trained: list[nn.Parameter]
    ) -> None:
        super().__init__()
        self.model = model
        self.task_loss = task_loss
        self.trained = trained

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, heads: torch.Tensor | int, n: int
    ) -> torch.Tensor:
        if len(x) == 0:  # fewer rows than ranks: no term, but the reduced parameters join in
            return torch.stack([p.sum() for p in self.trained]).sum() * 0.0
        return self.task_loss(self.model, x, y, heads) * (len(x) * world_size() / n)


class DistributedTaskLoss:
    """The training loop's task loss on this rank's part of each batch, through DDP."""

    def __init__(
        self, model: MultiHeadClassifier, heads: Collection[int], task_loss: TaskLoss
    ) -> None:
        """DDP over the backbone and ``heads`` (the heads the task trains) of ``model``."""
        trained = {str(head) for head in heads}
        past = {
            f"heads.{key}.{name}"
            for key, head in model.heads.items()
            if key not in trained
            for name, _ in head.named_parameters()
        }
        reduced = [
            p for name, p in model.named_parameters() if name not in past and p.requires_grad
        ]
        module = _PartLoss(model, task_loss, reduced)
        ignored = [f"model.{name}" for name in past]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(  # type: ignore[no-untyped-call]
            module, ignored
        )
        device = model.device
        self.model = model
        self.ddp = DistributedDataParallel(
            module,
            device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=len(trained) > 1,
        )

    def __call__(
        self,
        model: MultiHeadClassifier,
        x: torch.Tensor,
        y: torch.Tensor,
        heads: torch.Tensor | int,
    ) -> torch.Tensor:
        if model is not self.model:
            raise ConfigError("the distributed task loss was built for another model")
        part = rank_part(len(x))
        mine = heads if isinstance(heads, int) else heads[part]
        loss: torch.Tensor = self.ddp(x[part], y[part], mine, len(x))
        return loss


def distributed_task_loss(
    model: MultiHeadClassifier, heads: Collection[int], task_loss: TaskLoss
) -> TaskLoss:
    """``task_loss`` as it is without a process group; under one, :class:`DistributedTaskLoss`
    over the backbone and ``heads``, the heads being trained."""
    return DistributedTaskLoss(model, heads, task_loss) if is_distributed() else task_loss
