"""Shared shape of the quadratic regularisers (MAS, l-MAS, online EWC, SI, L2).

After each task the method measures a per-parameter importance Ω_new (its one job), combines it
with the past (:meth:`QuadraticRegulariser.accumulation`: a sum, or a blend), anchors θ* at the
current parameters, and while learning the next task adds ``λ Σ Ω (θ − θ*)²``
(:class:`~memaware.penalties.QuadraticPenalty`, λ = ``opts.strength``), applied through its
gradient 2λΩ(θ − θ*) in :meth:`after_backward`; ``method.penalty()`` gives its value.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from memaware.data.scenarios import Task
from memaware.importance import accumulate
from memaware.methods.base import MethodState, Penalised
from memaware.methods.options import MethodOptions, SampledOptions, StrengthOptions
from memaware.models.multihead import MultiHeadClassifier
from memaware.penalties import QuadraticPenalty

Accumulation = Literal["sum", "blend"]


@dataclass(frozen=True, kw_only=True)
class AccumulatedOptions(SampledOptions, StrengthOptions):
    """Options of the MAS family: λ, the data Ω is computed on, and how Ω adds up over tasks."""

    accumulation: Accumulation = field(
        default="sum",
        metadata={"help": "sum: Ω ← Ω + Ω_new (the authors' code); blend: Ω ← αΩ + (1 − α)Ω_new"},
    )
    alpha: float = field(
        default=0.5, metadata={"help": "α in [0, 1] of accumulation=blend (FACIL, Avalanche: 0.5)"}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require_within("alpha", 0.0, 1.0)


class QuadraticRegulariser(Penalised):
    """Subclasses implement :meth:`importance`; the rest (accumulation, anchor, penalty) is here."""

    opts: StrengthOptions

    def __init__(
        self, options: MethodOptions | None = None, /, *, seed: int = 0, **fields: Any
    ) -> None:
        super().__init__(options, seed=seed, **fields)
        self.omega: dict[str, torch.Tensor] | None = None
        self.penalty = None

    def importance(
        self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]
    ) -> Mapping[str, torch.Tensor]:
        """Ω_new for the task just learned, keyed by parameter name."""
        raise NotImplementedError

    def accumulation(self) -> tuple[Accumulation, float]:
        """How Ω_new joins Ω (see :func:`memaware.importance.accumulate`).

        The options' ``accumulation`` and ``alpha`` where the method has them, else the sum.
        """
        if isinstance(self.opts, AccumulatedOptions):
            return self.opts.accumulation, self.opts.alpha
        return "sum", 0.5

    def penalty_value(self) -> torch.Tensor | None:
        """λ Σ Ω (θ − θ*)² now (differentiable), ``None`` before the first task ends."""
        return self.penalty() if self.penalty is not None else None

    def state_dict(self) -> MethodState:
        """The penalty's (see :class:`~memaware.methods.base.Penalised`) and Ω so far (``omega``)."""
        state = super().state_dict()
        if self.omega is not None:
            state.put("omega", self.omega)
        return state

    def load_state_dict(self, model: MultiHeadClassifier, state: MethodState) -> None:
        super().load_state_dict(model, state)
        self.omega = state.take("omega", model.device) if "omega" in state.values else None

    def after_task(self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]) -> None:
        new = self.importance(model, task, seen)
        rule, alpha = self.accumulation()
        self.omega = accumulate(self.omega, new, rule=rule, alpha=alpha)
        self.penalty = QuadraticPenalty(model, self.omega, self.opts.strength)
