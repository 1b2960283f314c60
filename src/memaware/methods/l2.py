"""L2 regularisation towards the previous task's solution (the uniform-importance baseline).

After each task t, for every trainable parameter of the model:

    Ω_i = 1            (every parameter equally important; no data are looked at)
    θ* ← θ             (the parameters at the end of task t)

and while learning task t+1 the loss is  L_task + λ Σ_i (θ_i − θ*_i)² = L_task + λ ‖θ − θ*‖².

Ω stays 1 (it is replaced, not summed over tasks), as in Hsu et al.'s benchmark code: only the
anchor moves. No factor ½, like the MAS penalty. A head created for a new task has no Ω and is
free while its task is learned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from memaware.data.scenarios import SETTINGS, Setting, Task
from memaware.methods.options import StrengthOptions
from memaware.methods.regulariser import Accumulation, QuadraticRegulariser
from memaware.models.multihead import MultiHeadClassifier


@dataclass(frozen=True, kw_only=True)
class L2Options(StrengthOptions):
    """L2 settings: λ only (Ω ≡ 1)."""

    method = "l2"


class L2(QuadraticRegulariser):
    """λ ‖θ − θ*‖² with θ* the parameters at the end of the previous task."""

    name: ClassVar[str] = "l2"
    scenarios: ClassVar[tuple[Setting, ...]] = SETTINGS
    Options = L2Options
    opts: L2Options

    def accumulation(self) -> tuple[Accumulation, float]:
        # "blend" with α = 0 replaces Ω by the new Ω (ones): Ω ≡ 1, never summed.
        return "blend", 0.0

    def importance(
        self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]
    ) -> Mapping[str, torch.Tensor]:
        return {
            name: torch.ones_like(param)
            for name, param in model.named_parameters()
            if param.requires_grad
        }
