"""The training loop under torchrun: ``DistributedDataParallel`` over each rank's part of a batch.

Every rank draws the same global batch of ``--batch-size`` rows (one seeded permutation, as on one
process) and takes its part, rows ``⌊n·r/N⌋ .. ⌊n·(r+1)/N⌋``; no per-sample Python. Its loss is
the step's loss on the part (the cross-entropy plus the method's ``loss_term``, both means over
the rows) scaled by N·n_r/n,

    L_r = (N/n) Σ_{k ∈ part r} ℓ_k,   so that DDP's mean (1/N) Σ_r ∇L_r = ∇ (1/n) Σ_k ℓ_k,

the gradient of the global batch's mean loss on one process, also when n is not a multiple of
N (the last batch of an epoch). ℓ_k is a row's whole loss: its cross-entropy and, for LwF and
EBLL, its distillation and code terms, computed inside DDP's forward so that their gradient is
reduced with the rest. It differs from one process only by float rounding: each rank sums its
part's gradients and the all-reduce adds the ranks' sums in another order.

DDP is built per task (:func:`distributed_step_loss`), when the task's heads exist, over the
backbone, the heads that the task trains and the past heads the method's loss term reaches
(LwF's distilled heads, :meth:`~memaware.methods.base.Method.loss_heads`); the other past heads
are left out of it (their ``.grad`` stays ``None`` when the loss does not reach them, so the
optimizer does not step them, as on one process). Building it broadcasts rank 0's parameters and
buffers, so every rank starts the task from the same weights. ``find_unused_parameters`` is on
only where a part may miss a head (joint training over several heads).

After ``backward()`` returns, the gradients are the all-reduced ones: a method's
``after_backward`` (the quadratic penalties' 2λΩ(θ − θ*), SI's path integral) then acts on the
same gradient on every rank, and the optimizer keeps the ranks' weights equal. BatchNorm layers
normalise a part by its own statistics (DDP without SyncBatchNorm, which needs a GPU), so a run
with BatchNorm differs from one process there; the running statistics are rank 0's (DDP
broadcasts its buffers at each forward, and
:func:`~memaware.distributed.process_group.broadcast_from_main` once more at the end of a task).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from memaware.distributed.process_group import is_distributed, rank, world_size
from memaware.errors import ConfigError
from memaware.methods.base import Batch
from memaware.models.multihead import MultiHeadClassifier

#: loss(model, batch): the training loop's loss of a batch, a mean over its rows (the
#: cross-entropy plus the method's loss term)
StepLoss = Callable[[MultiHeadClassifier, Batch], torch.Tensor]


def rank_part(n: int) -> slice:
    """This rank's rows of a batch of ``n``: ``⌊n·r/N⌋ .. ⌊n·(r+1)/N⌋`` (disjoint, covering all)."""
    r, ranks = rank(), world_size()
    return slice(n * r // ranks, n * (r + 1) // ranks)


class _PartLoss(nn.Module):
    """The module DDP wraps: ``(N/n) Σ_{k ∈ part} ℓ_k`` of this rank's part of a batch of ``n``.

    ``trained`` are the parameters DDP reduces (the model's, less the ignored past heads).
    """

    def __init__(
        self, model: MultiHeadClassifier, step_loss: StepLoss, trained: list[nn.Parameter]
    ) -> None:
        super().__init__()
        self.model = model
        self.step_loss = step_loss
        self.trained = trained

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, heads: torch.Tensor | int, n: int
    ) -> torch.Tensor:
        if len(x) == 0:  # fewer rows than ranks: no term, but the reduced parameters join in
            return torch.stack([p.sum() for p in self.trained]).sum() * 0.0
        return self.step_loss(self.model, Batch(x, y, heads)) * (len(x) * world_size() / n)


class DistributedStepLoss:
    """The training loop's loss on this rank's part of each batch, through DDP."""

    def __init__(
        self,
        model: MultiHeadClassifier,
        heads: Collection[int],
        step_loss: StepLoss,
        reached: Collection[int] = (),
    ) -> None:
        """DDP over the backbone, ``heads`` (the heads the task trains) and ``reached`` (past
        heads the method's loss term trains) of ``model``."""
        past = {name for name, _ in model.named_parameters_of_heads_besides({*heads, *reached})}
        reduced = [
            p for name, p in model.named_parameters() if name not in past and p.requires_grad
        ]
        module = _PartLoss(model, step_loss, reduced)
        ignored = [f"model.{name}" for name in past]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(  # type: ignore[no-untyped-call]
            module, ignored
        )
        device = model.device
        self.model = model
        self.ddp = DistributedDataParallel(
            module,
            device_ids=[device] if device.type == "cuda" else None,
            find_unused_parameters=len(set(heads)) > 1,
        )

    def __call__(self, model: MultiHeadClassifier, batch: Batch) -> torch.Tensor:
        if model is not self.model:
            raise ConfigError("the distributed step loss was built for another model")
        part = rank_part(len(batch.x))
        heads = batch.heads if isinstance(batch.heads, int) else batch.heads[part]
        loss: torch.Tensor = self.ddp(batch.x[part], batch.y[part], heads, len(batch.x))
        return loss


def distributed_step_loss(
    model: MultiHeadClassifier,
    heads: Collection[int],
    step_loss: StepLoss,
    reached: Collection[int] = (),
) -> StepLoss:
    """``step_loss`` as it is without a process group; under one, :class:`DistributedStepLoss`
    over the backbone, ``heads`` (the heads being trained) and ``reached`` (the past heads the
    method's loss term reaches)."""
    if not is_distributed():
        return step_loss
    return DistributedStepLoss(model, heads, step_loss, reached)
