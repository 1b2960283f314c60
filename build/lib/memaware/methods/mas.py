"""Memory Aware Synapses (Aljundi et al., ECCV 2018).

After each task t, on unlabelled inputs of that task:

    Ω_new = (1/N) Σ_k |∂‖F(x_k)‖²/∂θ|   (F = logits of the heads of the tasks learned so far)
    Ω ← Ω + Ω_new                       (the authors' code: plain sum over tasks)
    θ* ← θ

and while learning the next task the loss is  L_task + λ Σ Ω (θ − θ*)²  (no factor ½).
A head created for a new task has no Ω and is free; the heads of past tasks are regularised.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import torch

from memaware.data.scenarios import Task
from memaware.errors import ConfigError
from memaware.importance import batches, mas
from memaware.importance.mas import Granularity, Norm
from memaware.methods.regulariser import QuadraticRegulariser
from memaware.models.multihead import MultiHeadClassifier, heads_output


@dataclass
class MASOptions:
    """MAS settings. ``strength`` is λ; ``importance_batch_size`` 200 is the authors' default.

    ``heads="learned"`` takes F as the concatenated logits of every head learned so far;
    ``"current"`` only the head of the task just learned (what the authors' code sees).
    ``importance_data`` picks the finished task's ``train`` inputs (the code's default), its
    ``test`` inputs, or both, all without labels.
    """

    strength: float = 1.0
    granularity: Granularity = "sample"
    norm: Norm = "l2sq"
    accumulation: Literal["sum", "blend"] = "sum"
    alpha: float = 0.5
    heads: Literal["learned", "current"] = "learned"
    importance_data: Literal["train", "test", "train+test"] = "train"
    importance_batch_size: int = 200
    max_samples: int | None = None

    def __post_init__(self) -> None:
        if self.strength < 0:
            raise ConfigError(f"MAS strength λ must be >= 0, got {self.strength}")
        if self.importance_data not in ("train", "test", "train+test"):
            raise ConfigError(
                f"unknown importance data {self.importance_data!r}: use train, test or train+test"
            )
        if self.heads not in ("learned", "current"):
            raise ConfigError(f"unknown heads option {self.heads!r}: use learned or current")


class MAS(QuadraticRegulariser):
    """Global MAS with exact per-sample importance (or the authors' batched estimate)."""

    name = "mas"
    Options = MASOptions

    def __init__(self, options: MASOptions | None = None, **fields: Any) -> None:
        """``MAS(MASOptions(...))`` or ``MAS(strength=..., granularity=...)`` (fields of MASOptions)."""
        self.opts = replace(options or MASOptions(), **fields)
        super().__init__(self.opts.strength, self.opts.accumulation, self.opts.alpha)

    def options(self) -> dict[str, object]:
        return asdict(self.opts)

    def importance_inputs(self, task: Task) -> torch.Tensor:
        """The unlabelled inputs Ω is computed on."""
        parts = {
            "train": [task.train_x],
            "test": [task.test_x],
            "train+test": [task.train_x, task.test_x],
        }
        return torch.cat(parts[self.opts.importance_data])

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
            batches(self.importance_inputs(task), self.opts.importance_batch_size),
            granularity=self.opts.granularity,
            norm=self.opts.norm,
            outputs=heads_output(heads),
            max_samples=self.opts.max_samples,
        )
