"""l-MAS, the local (Hebbian) variant of Memory Aware Synapses (Aljundi et al., ECCV 2018, §4.3).

After each task t, on unlabelled inputs of that task (its training inputs, or with
``importance_data`` its test inputs or both, as MAS), every linear or convolutional
layer l is scored alone, with input a and F_l its own output y as the network computes it:

    Ω_new,ij = (1/N) Σ_k |∂‖y^k‖²/∂θ_ij| = (1/N) Σ_k |2 · y_i^k · a_j^k|
             = 2 · mean_k(y_i^k · a_j^k)   where a ReLU follows: y post-ReLU ≥ 0, the co-activation
    Ω ← Ω + Ω_new                                    (sum over tasks, as MAS; or a blend)
    θ* ← θ

For the head and every layer whose output no ReLU directly follows (conv → BatchNorm → ReLU,
a residual add, other nonlinearities), y is the raw layer output and Ω_new is the magnitude of
the derivative of the layer's squared output, (1/N) Σ_k |2 · y_i^k · a_j^k|; biases have a ≡ 1.

and while learning the next task the loss is  L_task + λ Σ Ω (θ − θ*)²  (no factor ½).
Only forward activations are needed (:func:`memaware.importance.local_mas`). The inputs run
through the finished task's own head, so that head's layer (not head 0's) gets the task's Ω;
a head created for a new task has no Ω and is free while its task is learned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch
from torch import nn

from memaware.data.datasets import batches, concat, for_evaluation
from memaware.data.scenarios import SETTINGS, Setting, Task
from memaware.importance import local_mas
from memaware.methods.regulariser import AccumulatedOptions, QuadraticRegulariser
from memaware.models.multihead import MultiHeadClassifier

_PREFIX = "model."


class _HeadView(nn.Module):
    """``model`` answering with one head, so that ``view(x)`` runs the backbone and that head."""

    memaware_own_parameters_only = True  # it applies parameters only through its layers

    def __init__(self, model: MultiHeadClassifier, head: int) -> None:
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.head)  # type: ignore[no-any-return]


@dataclass(frozen=True, kw_only=True)
class LocalMASOptions(AccumulatedOptions):
    """l-MAS settings: λ, the inputs Ω is computed on, and how Ω adds up over tasks."""

    method = "l-mas"

    importance_data: Literal["train", "test", "train+test"] = field(
        default="train",
        metadata={"help": "the finished task's inputs Ω is computed on (unlabelled)"},
    )


class LocalMAS(QuadraticRegulariser):
    """l-MAS: Ω from the co-activations of the neurons each weight connects."""

    name: ClassVar[str] = "l-mas"
    scenarios: ClassVar[tuple[Setting, ...]] = SETTINGS
    Options = LocalMASOptions
    opts: LocalMASOptions

    def importance(
        self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]
    ) -> Mapping[str, torch.Tensor]:
        parts = {
            "train": [task.train],
            "test": [task.test],
            "train+test": [task.train, task.test],
        }[self.opts.importance_data]
        omega = local_mas(
            _HeadView(model, task.head),
            batches(
                concat([for_evaluation(d) for d in parts]),
                self.opts.importance_batch_size,
                device=model.device,
            ),
            max_samples=self.opts.max_samples,
        )
        return {name.removeprefix(_PREFIX): value for name, value in omega.items()}
