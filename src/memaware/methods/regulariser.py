"""Shared shape of the quadratic regularisers (MAS, l-MAS, online EWC, SI, L2).

After each task the method measures a per-parameter importance Ω_new (its one job), combines it
with the past (sum, or a blend), anchors θ* at the current parameters, and while learning the
next task adds ``λ Σ Ω (θ − θ*)²`` (:class:`~memaware.penalties.QuadraticPenalty`), applied
through its gradient 2λΩ(θ − θ*) in :meth:`after_backward`; ``method.penalty()`` gives its value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch

from memaware.data.scenarios import Task
from memaware.errors import ConfigError
from memaware.importance import accumulate
from memaware.methods.base import Penalised
from memaware.models.multihead import MultiHeadClassifier
from memaware.penalties import QuadraticPenalty


class QuadraticRegulariser(Penalised):
    """Subclasses implement :meth:`importance`; the rest (accumulation, anchor, penalty) is here."""

    def __init__(
        self,
        strength: float,
        accumulation: Literal["sum", "blend"] = "sum",
        alpha: float = 0.5,
    ) -> None:
        if strength < 0:
            raise ConfigError(f"{self.name}: the strength λ must be >= 0, got {strength}")
        self.strength = strength
        self.accumulation: Literal["sum", "blend"] = accumulation
        self.alpha = alpha
        self.omega: dict[str, torch.Tensor] | None = None
        self.penalty = None

    def importance(
        self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]
    ) -> Mapping[str, torch.Tensor]:
        """Ω_new for the task just learned, keyed by parameter name."""
        raise NotImplementedError

    def penalty_value(self) -> torch.Tensor | None:
        """λ Σ Ω (θ − θ*)² now (differentiable), ``None`` before the first task ends."""
        return self.penalty() if self.penalty is not None else None

    def after_task(self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]) -> None:
        new = self.importance(model, task, seen)
        self.omega = accumulate(self.omega, new, rule=self.accumulation, alpha=self.alpha)
        self.penalty = QuadraticPenalty(model, self.omega, self.strength)
