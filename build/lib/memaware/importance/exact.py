"""The exact per-sample engine: Σ_k f(∂L_k/∂θ) for every parameter, from captured activations.

``L_k`` is a per-sample objective (e.g. ‖F(x_k)‖² for MAS, −log p(y_k|x_k) for the Fisher); the
engine backpropagates Σ_k L_k once to every layer's output and hands each layer's inputs and
output gradient to its rule (:mod:`memaware.importance.rules`) or to the fallback.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.autograd.graph import GradientEdge

from memaware.errors import ConfigError
from memaware.importance.capture import OwnedParameters, owners, recording
from memaware.importance.fallback import fallback_rule
from memaware.importance.rules import RULES, Reduce

# Builds the scalar objectives from a batch: each returned scalar is Σ_k L_k over the batch. Most
# objectives return one scalar; the per-output-unit ("vector") MAS variant returns one per unit.
Objectives = Callable[[nn.Module, torch.Tensor], Sequence[torch.Tensor]]


class ExactEngine:
    """Accumulates Σ_k f(g_k) over batches for the trainable parameters of ``model``."""

    def __init__(self, model: nn.Module, f: Reduce) -> None:
        self.model = model
        self.f = f
        self.owned = owners(model)
        self.sums: dict[str, torch.Tensor] = {}

    def add_batch(self, x: torch.Tensor, objectives: Objectives) -> None:
        """Add Σ_k f(g_k) of this batch's samples to :attr:`sums`."""
        for entry in self.owned:
            entry.calls.clear()
        with recording(self.owned, keep="edge"):
            losses = objectives(self.model, x)
        called = [entry for entry in self.owned if entry.calls]
        outputs = [edge for entry in called for edge in _edges(entry)]
        if not outputs:
            raise ConfigError(
                "no trainable parameter of the model takes part in the output: nothing to measure"
            )
        for i, loss in enumerate(losses):
            deltas = torch.autograd.grad(
                loss, outputs, allow_unused=True, retain_graph=i < len(losses) - 1
            )
            position = 0
            for entry in called:
                calls = len(entry.calls)
                self._accumulate(entry, list(deltas[position : position + calls]))
                position += calls
        for entry in self.owned:
            entry.calls.clear()

    def _accumulate(self, entry: OwnedParameters, deltas: list[torch.Tensor | None]) -> None:
        reached = [(call, d) for call, d in zip(entry.calls, deltas, strict=True) if d is not None]
        if not reached:
            return  # the module ran but does not reach the objective
        result = None
        rule = RULES.get(type(entry.module))
        # Rules read positional inputs only; a call with keyword arguments goes to the fallback.
        if rule is not None and len(reached) == 1 and not reached[0][0].kwargs:
            result = rule(entry.module, reached[0][0].args, reached[0][1], self.f)
        if result is None:  # no rule, a configuration the rule declines, or a shared module
            result = fallback_rule(
                entry.module, [(c.args, c.kwargs, d) for c, d in reached], entry.params, self.f
            )
        for local, value in result.items():
            full = entry.full_names[local]
            self.sums[full] = self.sums[full] + value if full in self.sums else value.detach()


def _edges(entry: OwnedParameters) -> list[GradientEdge]:
    """The gradient edges of an entry's calls (recorded with ``keep="edge"``, so all present)."""
    edges = [call.edge for call in entry.calls if call.edge is not None]
    assert len(edges) == len(entry.calls)
    return edges
