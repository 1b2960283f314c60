"""Online EWC (Schwarz et al., "Progress & Compress", ICML 2018): one running Fisher, one anchor.

After each task t, on that task's labelled training data and the logits of its head:

    F_new,i = (1/N) Σ_k (∂ log p(y_k | x_k; θ)/∂θ_i)²    (exact per-sample diagonal Fisher)
    F ← γ F + F_new                                        (γ ∈ [0, 1]; γ = 1: plain sum)
    θ* ← θ                                                 (the latest parameters only)

and while learning task t+1 the loss is  L_task + λ Σ_i F_i (θ_i − θ*_i)².

Labels are drawn from the model (``labels="true"``, seeded by the run's seed) or taken from the
data (``labels="empirical"``). We write no factor ½, like the MAS penalty: our λ is half the λ of
papers that write (λ/2) Σ F (θ − θ*)². γ also decays the Fisher of parameters the new task does
not reach (the heads of earlier tasks), as F ← γF + F_new does with F_new = 0 there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from memaware.data.scenarios import SETTINGS, Setting, Task
from memaware.methods.ewc import EWCOptions, task_fisher
from memaware.methods.regulariser import QuadraticRegulariser
from memaware.models.multihead import MultiHeadClassifier


@dataclass(frozen=True, kw_only=True)
class OnlineEWCOptions(EWCOptions):
    """Online EWC settings: EWC's, and the decay γ of the running Fisher."""

    method = "online-ewc"

    gamma: float = field(
        default=1.0, metadata={"help": "γ in F ← γF + F_new, in [0, 1] (1: the plain sum)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_within("gamma", 0.0, 1.0)


class OnlineEWC(QuadraticRegulariser):
    """Online EWC: Ω = the γ-decayed sum of the tasks' exact Fishers, anchored at the latest θ."""

    name: ClassVar[str] = "online-ewc"
    scenarios: ClassVar[tuple[Setting, ...]] = SETTINGS
    Options = OnlineEWCOptions
    opts: OnlineEWCOptions

    def importance(
        self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]
    ) -> Mapping[str, torch.Tensor]:
        return task_fisher(
            model,
            task,
            labels=self.opts.labels,
            batch_size=self.opts.importance_batch_size,
            max_samples=self.opts.max_samples,
            seed=self.seed,
        )

    def after_task(self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]) -> None:
        # F ← γF + F_new: decay the running Fisher, then the base class adds F_new ("sum") and
        # re-anchors the penalty at the current parameters.
        if self.omega is not None and self.opts.gamma != 1.0:
            self.omega = {name: self.opts.gamma * value for name, value in self.omega.items()}
        super().after_task(model, task, seen)
