"""Memory Aware Synapses (Aljundi et al., ECCV 2018).

After each task t, on unlabelled inputs of that task (the model in eval mode):

    Ω_new = (1/N) Σ_k |∂‖F(x_k)‖²/∂θ|   (F = logits of the heads of the tasks learned so far)
    Ω ← Ω + Ω_new                       (the authors' code: plain sum over tasks)
    θ* ← θ

and while learning the next task the loss is  L_task + λ Σ Ω (θ − θ*)²  (no factor ½).
A head created for a new task has no Ω and is free; the heads of past tasks are regularised.

The importance preset ``authors`` (``MAS(importance_preset="authors")``) is Ω as the authors'
code computes it (``compute_importance_l2`` in ``MAS_Omega_Acuumelation``): over the task's
training inputs in B batches b of n_b ≤ 200, with F = the logits of the head of the task just
learned only,

    Ω_new = (1/B) Σ_b |G_b| / n_b,   G_b = ∂(Σ_{x∈b} ‖F(x)‖²)/∂θ   (the gradient of the batch sum)
    Ω ← Ω + Ω_new

which is ≤ the per-sample Ω by the triangle inequality (equal for batches of one).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from memaware.data.datasets import LabelledData, batches, concat, for_evaluation
from memaware.data.scenarios import Task
from memaware.importance import mas
from memaware.importance.mas import Granularity, Norm
from memaware.methods.regulariser import AccumulatedOptions, QuadraticRegulariser
from memaware.models.multihead import MultiHeadClassifier, heads_output


@dataclass(frozen=True, kw_only=True)
class MASOptions(AccumulatedOptions):
    """MAS settings (see :func:`memaware.importance.mas` for granularity and norm).

    ``importance_preset="authors"`` (:data:`~memaware.methods.options.PRESET_KEY`) sets the
    fields to what the authors' code computes (see the module doc); fields given next to it win.
    """

    method = "mas"
    importance_presets: ClassVar[Mapping[str, Mapping[str, object]]] = {
        "authors": {
            "granularity": "batch",
            "importance_batch_size": 200,
            "heads": "current",
            "accumulation": "sum",
            "norm": "l2sq",
            "importance_data": "train",
        }
    }

    importance_batch_size: int = field(
        default=200,
        metadata={
            "help": "inputs per batch of the Ω pass, >= 1; with granularity=batch also the batch "
            "each gradient is taken over (the authors' 200)"
        },
    )
    granularity: Granularity = field(
        default="sample",
        metadata={
            "help": "sample: the exact per-sample Ω, mean_k |g_k|; batch: the authors' estimator, "
            "(1/B) Σ_b |G_b|/n_b with G_b the gradient of batch b's summed ‖F‖² (F stays what "
            "heads says)"
        },
    )
    norm: Norm = field(
        default="l2sq", metadata={"help": "the output norm: l2sq ‖F‖² (the paper), l2, l1, vector"}
    )
    heads: Literal["learned", "current"] = field(
        default="learned",
        metadata={
            "help": "F = the logits of every head learned so far (learned) or of the task just "
            "learned (current, what the authors' code sees)"
        },
    )
    importance_data: Literal["train", "test", "train+test"] = field(
        default="train",
        metadata={"help": "the finished task's inputs Ω is computed on (unlabelled)"},
    )


class MAS(QuadraticRegulariser):
    """Global MAS with exact per-sample importance (or the authors' batched estimate).

    ``MAS(MASOptions(...))`` or ``MAS(strength=..., granularity=...)`` (fields of MASOptions).
    """

    name = "mas"
    Options = MASOptions
    opts: MASOptions

    def importance_data(self, task: Task) -> LabelledData:
        """The data whose (unlabelled, unaugmented) inputs Ω is computed on."""
        parts = {
            "train": [task.train],
            "test": [task.test],
            "train+test": [task.train, task.test],
        }
        return concat([for_evaluation(d) for d in parts[self.opts.importance_data]])

    def importance(
        self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]
    ) -> Mapping[str, torch.Tensor]:
        heads = (
            [task.head]
            if self.opts.heads == "current"
            else list(dict.fromkeys(t.head for t in seen))
        )
        return mas(
            model,
            batches(
                self.importance_data(task), self.opts.importance_batch_size, device=model.device
            ),
            granularity=self.opts.granularity,
            norm=self.opts.norm,
            outputs=heads_output(heads),
            max_samples=self.opts.max_samples,
        )
