"""The exact per-sample engine: Σ_k f(∂L_k/∂θ) for every parameter, from captured activations.

``L_k`` is a per-sample objective (e.g. ‖F(x_k)‖² for MAS, −log p(y_k|x_k) for the Fisher); the
engine backpropagates Σ_k L_k once, down to the outputs of the deepest layers, and hands each
layer's inputs and output gradient δ to its rule (:mod:`memaware.importance.rules`) or to the
fallback *while the backward pass runs*, as soon as δ exists: like a plain backward, it frees δ
once the layer's rule and the layer below have used it, instead of holding every layer's δ at
the end. No parameter gradient is ever computed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, Node

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
        # δ of the calls of modules called more than once per batch, kept until the pass ends:
        # a shared module's per-sample gradient is the sum over its calls, so f applies after.
        self._shared: dict[int, dict[int, torch.Tensor]] = {}

    def add_batch(self, x: torch.Tensor, objectives: Objectives) -> None:
        """Add Σ_k f(g_k) of this batch's samples to :attr:`sums`."""
        for entry in self.owned:
            entry.calls.clear()
        with recording(self.owned, on_gradient=self._on_gradient):
            losses = objectives(self.model, x)
        called = [entry for entry in self.owned if entry.calls]
        if not called:
            raise ConfigError(
                "no trainable parameter of the model takes part in the output: nothing to measure"
            )
        shared = [entry for entry in called if len(entry.calls) > 1]
        targets = _deepest([call.edge for entry in called for call in entry.calls if call.edge])
        for i, loss in enumerate(losses):
            self._shared = {id(entry): {} for entry in shared}
            # The targets only make the pass run down to every recorded output; the hooks
            # installed by `recording` receive each δ on the way (_on_gradient).
            torch.autograd.grad(loss, targets, allow_unused=True, retain_graph=i < len(losses) - 1)
            for entry in shared:
                deltas = self._shared[id(entry)]
                self._accumulate(entry, [deltas.get(j) for j in range(len(entry.calls))])
        self._shared = {}
        for entry in self.owned:
            entry.calls.clear()

    def _on_gradient(self, entry: OwnedParameters, index: int, delta: torch.Tensor) -> None:
        if len(entry.calls) == 1:
            self._accumulate(entry, [delta])
        else:
            self._shared[id(entry)][index] = delta

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


def _deepest(edges: list[GradientEdge]) -> list[GradientEdge]:
    """The edges below which no other recorded edge lies in the graph.

    A backward pass to these runs through every other recorded edge's node (each has one of
    them below it), so every hook fires; asking for all edges instead would make autograd keep
    every δ until the pass ends.
    """
    above = _above({edge.node for edge in edges})
    return [edge for edge in edges if edge.node not in above]


def _above(targets: set[Node]) -> set[Node]:
    """The nodes of ``targets`` that have another node of ``targets`` strictly below them."""
    leads: dict[Node, bool] = {}  # node reachable from a target -> a target lies strictly below it
    for start in targets:
        stack: list[tuple[Node, bool]] = [(start, False)]
        while stack:
            node, children_done = stack.pop()
            if node in leads:
                continue
            children = [child for child, _ in node.next_functions if child is not None]
            if children_done:
                leads[node] = any(child in targets or leads[child] for child in children)
                continue
            stack.append((node, True))
            stack.extend((child, False) for child in children if child not in leads)
    return {node for node in targets if leads[node]}
