"""Elastic Weight Consolidation (Kirkpatrick et al., PNAS 2017), one Fisher and one anchor per task.

After each task t, on that task's labelled training data and the logits of its head:

    F_t,i = (1/N) Σ_k (∂ log p(y_k | x_k; θ)/∂θ_i)²    (exact per-sample diagonal Fisher)
    θ*_t  ← θ

with y_k drawn from the model, y_k ~ p(·|x_k; θ) (``labels="true"``, the Fisher proper, from a
generator seeded by the run's seed and the task index, so runs repeat), or taken from the data
(``labels="empirical"``). While learning task t+1 the loss is

    L_task + λ Σ_{s≤t} Σ_i F_s,i (θ_i − θ*_s,i)²

We write no factor ½, like the MAS penalty (:mod:`memaware.penalties.quadratic`): our λ is half the
λ of papers that write (λ/2) Σ F (θ − θ*)² (Kirkpatrick et al., van de Ven et al.).

The per-task sum is evaluated as one quadratic with the same value and gradient:

    Σ_s F_s (θ − θ*_s)² = Ω (θ − m)² + c,   Ω = Σ_s F_s,   m = (Σ_s F_s θ*_s) / Ω,
    c = Σ_s F_s θ*_s² − Ω m²  (a constant ≥ 0; where Ω = 0 the entry has no penalty and m = θ)

so a training step costs one fused :class:`~memaware.penalties.QuadraticPenalty` whatever the
number of tasks (its gradient is added in :meth:`EWC.after_backward`; :meth:`EWC.penalty_value`
gives the per-task sum's value). The per-task Fishers and anchors are kept (:attr:`EWC.fishers`,
:attr:`EWC.anchors`) for inspection. A head created after task s has no F_s and is free while
its task is learned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch

from memaware.data.datasets import batches, for_evaluation
from memaware.data.scenarios import SETTINGS, Setting, Task
from memaware.importance import fisher
from memaware.methods.base import MethodState, Penalised, task_seed
from memaware.methods.options import MethodOptions, SampledOptions, StrengthOptions
from memaware.models.multihead import MultiHeadClassifier, heads_output
from memaware.penalties import QuadraticPenalty

FisherLabels = Literal["empirical", "true"]


@dataclass(frozen=True, kw_only=True)
class EWCOptions(SampledOptions, StrengthOptions):
    """EWC settings: λ, the Fisher's labels and the data it is computed on."""

    method = "ewc"

    labels: FisherLabels = field(
        default="true",
        metadata={
            "help": "true: y drawn from the model (the Fisher proper, seeded by the run's seed); "
            "empirical: the data's labels"
        },
    )


def task_fisher(
    model: MultiHeadClassifier,
    task: Task,
    *,
    labels: FisherLabels,
    batch_size: int,
    max_samples: int | None,
    seed: int,
) -> dict[str, torch.Tensor]:
    """Exact diagonal Fisher of ``task``'s training data on the logits of the task's head.

    With ``labels="true"`` the sampled labels come from a generator seeded by ``seed`` and the
    task's index, on the model's device, so the same run gives the same Fisher. Under a process
    group the empirical Fisher is sharded over the ranks and all-reduced; the true one is
    computed whole on every rank (its labels are drawn batch after batch), the same on each.
    """
    device = model.device
    generator = torch.Generator(device=device).manual_seed(task_seed(seed, task))
    estimate = fisher(
        model,
        batches(for_evaluation(task.train), batch_size, device=device),
        labels=labels,
        outputs=heads_output([task.head]),
        max_samples=max_samples,
        generator=generator,
        distributed="shard" if labels == "empirical" else "none",
    )
    return {name: value.detach() for name, value in estimate.items()}


class EWC(Penalised):
    """EWC with exact per-sample Fisher, a separate F_t and θ*_t for every task learned."""

    name: ClassVar[str] = "ewc"
    scenarios: ClassVar[tuple[Setting, ...]] = SETTINGS
    Options = EWCOptions
    opts: EWCOptions

    def __init__(
        self, options: MethodOptions | None = None, /, *, seed: int = 0, **fields: Any
    ) -> None:
        super().__init__(options, seed=seed, **fields)
        #: F_t of every task learned so far, keyed by parameter name
        self.fishers: list[dict[str, torch.Tensor]] = []
        #: θ*_t, the parameters (those with an F_t entry) at the end of every task learned so far
        self.anchors: list[dict[str, torch.Tensor]] = []
        self.penalty = None
        #: the constant c that makes the fused penalty's value the per-task sum's
        self.offset = 0.0

    def penalty_value(self) -> torch.Tensor | None:
        """λ Σ_s Σ_i F_s,i (θ_i − θ*_s,i)² now (differentiable), ``None`` before the first task ends."""
        if self.penalty is None:
            return None
        value: torch.Tensor = self.penalty() + self.offset
        return value

    def after_task(self, model: MultiHeadClassifier, task: Task, seen: Sequence[Task]) -> None:
        f = task_fisher(
            model,
            task,
            labels=self.opts.labels,
            batch_size=self.opts.importance_batch_size,
            max_samples=self.opts.max_samples,
            seed=self.seed,
        )
        params = dict(model.named_parameters())
        self.fishers.append(f)
        self.anchors.append({name: params[name].detach().clone() for name in f})
        self._consolidate(model)

    def state_dict(self) -> MethodState:
        """The fused penalty (the base's), every task's F_t and θ*_t, and the constant c."""
        state = super().state_dict()
        state.put_list("fishers", self.fishers)
        state.put_list("anchors", self.anchors)
        state.values["offset"] = self.offset
        return state

    def load_state_dict(self, model: MultiHeadClassifier, state: MethodState) -> None:
        super().load_state_dict(model, state)
        self.fishers = state.take_list("fishers", model.device)
        self.anchors = state.take_list("anchors", model.device)
        self.offset = float(state.values["offset"])

    def _consolidate(self, model: MultiHeadClassifier) -> None:
        """Fuse Σ_s F_s (θ − θ*_s)² into Ω (θ − m)² + c (sums in float64)."""
        params = dict(model.named_parameters())
        total: dict[str, torch.Tensor] = {}  # Σ_s F_s
        moment: dict[str, torch.Tensor] = {}  # Σ_s F_s θ*_s
        offset = 0.0  # accumulates Σ_s F_s θ*_s², then subtracts Ω m²
        for fisher_s, anchor_s in zip(self.fishers, self.anchors, strict=True):
            for name, value in fisher_s.items():
                f, a = value.double(), anchor_s[name].double()
                total[name] = total[name] + f if name in total else f
                moment[name] = moment[name] + f * a if name in moment else f * a
                offset += float((f * a.square()).sum())
        centres: dict[str, torch.Tensor] = {}
        for name, omega in total.items():
            weighted = omega > 0
            safe = torch.where(weighted, omega, torch.ones_like(omega))
            mean = torch.where(weighted, moment[name] / safe, params[name].detach().double())
            centres[name] = mean
            offset -= float((omega * mean.square()).sum())
        self.offset = self.opts.strength * max(offset, 0.0)
        self.penalty = QuadraticPenalty(model, total, self.opts.strength, anchors=centres)

    @property
    def omega(self) -> dict[str, torch.Tensor] | None:
        """Ω = Σ_t F_t, the total importance (``None`` before the first task ends)."""
        return self.penalty.omegas if self.penalty is not None else None
