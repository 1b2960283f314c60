"""Task-free MAS (Aljundi, Kelchtermans, Tuytelaars, *Task-Free Continual Learning*, CVPR 2019).

MAS on a stream with no task boundaries. The paper's three rules (its Algorithm 1, and the
authors' synthetic code ``kkelchte/task_free_continual_learning``), with B the incoming batch
and H the hard buffer:

* **Training.** Each incoming batch is trained on for the stream's passes (several gradient
  steps per batch, as in the paper), each on
  ``L = CE(B ∪ H) + λ Σ Ω (θ − θ*)²`` (H only with ``replay``; CE is the mean over the
  samples, the authors sum them; no factor ½, the authors write λ/2). Before the first update
  there is no Ω and no penalty.
* **When to update the importance.** Before the passes, the task loss of the incoming batch,
  CE(B) (``watch=batch``), or of the batch and the buffer, CE(B ∪ H) as the authors' code
  (``watch=batch+buffer``), joins a window of the last ``window`` losses (never the penalised
  loss: the DRIFT re-implementation's defect was watching it)
  (:class:`~memaware.methods.task_free.LossPlateau`). When the window's mean μ <
  ``mean_threshold`` and its variance σ² < ``variance_threshold`` the loss is on a plateau: the
  model has learned what the stream showed it lately, so Ω and θ* are updated. The next update
  waits for a new peak, a window with μ > μ_p + σ_p (μ_p, σ²_p: the last plateau's).
* **On which data.** H holds the ``hard_buffer`` samples of highest loss among the last
  incoming batch and H itself, re-scored after every batch's passes
  (:class:`~memaware.methods.task_free.HardBuffer`). At a plateau Ω_new is MAS's importance on H,
  exact per sample: Ω_new = (1/|H|) Σ_{x∈H} |∂‖F(x)‖²/∂θ| (F: the shared head's logits; the
  authors' code uses ‖F‖, ``norm=l2``, and sums over H instead of averaging).
* **How to accumulate.** A cumulative moving average over the updates: at the k-th,
  Ω ← Ω + (Ω_new − Ω) / k; θ* ← θ. With H full at every update this is the mean over all the
  samples Ω was measured on, i.e. :meth:`memaware.importance.Importance.merge` of the updates.

The stream's boundaries are never seen: the method is given batches only. The defaults
(λ, the window's thresholds, the buffer) were chosen on a validation stream of Split-MNIST
(see the README, *Streams without task boundaries*).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from memaware.importance import mas
from memaware.importance.mas import Norm
from memaware.methods.base import Batch
from memaware.methods.options import StrengthOptions
from memaware.methods.task_free import HardBuffer, LossPlateau, TaskFree
from memaware.models.multihead import MultiHeadClassifier
from memaware.penalties import QuadraticPenalty


@dataclass(frozen=True, kw_only=True)
class TaskFreeMASOptions(StrengthOptions):
    """Task-free MAS settings; the defaults were chosen on a validation stream (see the README)."""

    method = "task-free-mas"

    strength: float = field(
        default=300.0,
        metadata={"help": "λ >= 0, the weight of the penalty λ Σ Ω (θ − θ*)² (no factor ½)"},
    )
    window: int = field(
        default=5, metadata={"help": "losses in the plateau detector's window, >= 2 (paper: 5)"}
    )
    mean_threshold: float = field(
        default=0.3,
        metadata={"help": "a plateau needs the window's mean loss below this, > 0"},
    )
    variance_threshold: float = field(
        default=0.1,
        metadata={"help": "a plateau needs the window's loss variance below this, > 0"},
    )
    hard_buffer: int = field(
        default=50,
        metadata={"help": "samples of highest loss kept, on which Ω is measured, >= 1"},
    )
    replay: bool = field(
        default=False,
        metadata={
            "help": "also train on the hard buffer with each incoming batch (the paper; off: "
            "the buffer only feeds Ω, which kept more on the validation stream)"
        },
    )
    watch: Literal["batch", "batch+buffer"] = field(
        default="batch",
        metadata={
            "help": "the loss the window watches: of the incoming batch alone, or of the batch "
            "and the hard buffer (the authors' code)"
        },
    )
    norm: Norm = field(
        default="l2sq",
        metadata={
            "help": "the output norm of Ω: l2sq ‖F‖² (the MAS paper), l2 ‖F‖ (the authors' "
            "task-free code), l1, vector (as mas's)"
        },
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_at_least("window", 2)
        self.require_positive("mean_threshold", "variance_threshold")
        self.require_at_least("hard_buffer", 1)


class TaskFreeMAS(TaskFree):
    """MAS on a stream: importance updated at loss plateaus, on a hard buffer (see the module doc)."""

    name = "task-free-mas"
    Options = TaskFreeMASOptions
    opts: TaskFreeMASOptions

    def __init__(
        self, options: TaskFreeMASOptions | None = None, /, *, seed: int = 0, **fields: object
    ) -> None:
        super().__init__(options, seed=seed, **fields)
        self.plateau = LossPlateau(
            self.opts.window, self.opts.mean_threshold, self.opts.variance_threshold
        )
        self.buffer = HardBuffer(self.opts.hard_buffer)
        self.omega: dict[str, torch.Tensor] | None = None
        self.updates = 0

    def stream_batch(self, model: MultiHeadClassifier, incoming: Batch) -> Batch:
        # The buffer's losses are those of its refresh after the last batch, under this same
        # model (nothing trains in between): only the incoming batch needs scoring.
        losses = self.buffer.losses(model, incoming.x, incoming.y)
        if self.opts.watch == "batch+buffer" and self.buffer.loss is not None:
            losses = torch.cat([self.buffer.loss, losses])
        self.watched = float(losses.mean())
        x, y = self.buffer.joined(incoming.x, incoming.y)
        return Batch(x, y, incoming.heads) if self.opts.replay else incoming

    def after_stream_batch(self, model: MultiHeadClassifier, incoming: Batch) -> bool:
        assert self.watched is not None, "stream_batch comes first"
        # The window holds >= 2 losses, so the buffer is filled before the first plateau.
        plateau = self.plateau.observe(self.watched)
        if plateau:
            self.consolidate(model)
        self.buffer.refresh(model, incoming.x, incoming.y)
        return plateau

    def consolidate(self, model: MultiHeadClassifier) -> None:
        """Ω ← Ω + (Ω_new − Ω)/k with Ω_new = MAS's exact Ω on the hard buffer; θ* ← θ."""
        assert self.buffer.x is not None
        new = mas(model, [self.buffer.x], norm=self.opts.norm)
        self.updates += 1
        if self.omega is None:
            self.omega = {name: value.clone() for name, value in new.items()}
        else:
            k = self.updates
            self.omega = {
                name: old + (new[name] - old) / k if name in new else old
                for name, old in self.omega.items()
            }
        self.penalty = QuadraticPenalty(model, self.omega, self.opts.strength)
