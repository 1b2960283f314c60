"""The exact per-sample engine: Σ_k f(∂L_k/∂θ) for every parameter, from captured activations.

``L_k`` is a per-sample objective (e.g. ‖F(x_k)‖² for MAS, −log p(y_k|x_k) for the Fisher); the
engine backpropagates Σ_k L_k once, down to the outputs of the deepest layers, and hands each
layer's inputs and output gradient δ to its rule (:mod:`memaware.importance.rules`) or to the
module-level ``torch.func`` fallback *while the backward pass runs*, as soon as δ exists: like a
plain backward, it frees δ once the layer's rule and the layer below have used it. No parameter
gradient is computed on this path.

Three cases cannot be split layer by layer, and take the **graph path** instead: per-sample
gradients of the whole objective, ``∂L_k/∂θ`` for each k, from the same forward graph (one
vectorised backward pass per chunk of samples, ``is_grads_batched``; a plain loop over samples
where vmap cannot go). It is exact for any model whose samples do not interact, at about one
batched backward pass per sample. It is taken for

* a parameter used by several modules (tied weights: Ω needs |Σ_uses g_k|, the sum over its uses
  before the magnitude) or used outside the modules that own it (``F.linear(h, self.emb.weight)``);
* a module whose inputs do not carry the sample on the expected dimension (a layer applied to a
  (T, N, d) sequence-first tensor or to N·T folded rows): the sample is not where a layer rule
  would look for it. The check compares the layer's sample dimension with the batch size, so a
  layout whose leading size happens to equal the batch size is not caught: declare it with
  ``sample_dims`` (``{"encoder": 1}``) — transformers built with ``batch_first=False`` are
  declared automatically;
* attention and recurrent configurations that their rules do not cover (separate key/value
  projection sizes, ``add_bias_kv``, LSTM projections, packed or unbatched sequences, dropout
  in train mode).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, Node
from torch.overrides import TorchFunctionMode

from memaware.errors import ConfigError
from memaware.importance import sequence_rules  # also registers the attention rule
from memaware.importance.capture import Call, OwnedParameters, owners, recording
from memaware.importance.fallback import FallbackCall, fallback_rule
from memaware.importance.rules import RULES, Reduce, chunks, compute_dtype, sum_over_samples

# Builds per-sample objectives from a batch: each returned tensor has shape (N,), L_k for every
# sample k. Most objectives return one; the per-output-unit ("vector") MAS variant one per unit.
Objectives = Callable[[nn.Module, torch.Tensor], Sequence[torch.Tensor]]

#: Modules that lay out their own inputs (``batch_first``): their rules read the layout.
_OWN_LAYOUT: tuple[type[nn.Module], ...] = (nn.MultiheadAttention, nn.RNNBase)


class ExactEngine:
    """Accumulates Σ_k f(g_k) over batches for the trainable parameters of ``model``."""

    def __init__(
        self,
        model: nn.Module,
        f: Reduce,
        degree: int,
        sample_dims: Mapping[str, int] | None = None,
    ) -> None:
        """``degree`` is f's homogeneity, f(s·g) = s^degree·f(g): 1 for |·|, 2 for (·)²."""
        self.model = model
        self.f = f
        self.degree = degree
        self.owned = owners(model, sample_dims)
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        self.sums: dict[str, torch.Tensor] = {}
        # float16's range ends at 65504: its backward pass can overflow where float32's does not.
        # The objective is then scaled down (δ is linear in it) and f's result scaled back up.
        self._overflows = any(p.dtype == torch.float16 for p in self.params.values())
        self._scale = 1.0
        self._batch: dict[str, torch.Tensor] = {}
        self._live = False  # hooks act only during the main backward pass
        self._immediate: set[int] = set()
        self._graph: set[str] = set()  # parameter names on the graph path for this batch
        self._deltas: dict[int, dict[tuple[int, int], torch.Tensor]] = {}
        self._n = 0  # samples in the current batch
        # what self-attention layers' own forward and backward computed, by entry
        self._projections: dict[int, dict[str, torch.Tensor]] = {}
        # parameters used outside their owners, by structure of calls (see _forward)
        self._outside: dict[tuple[Any, ...], set[str]] = {}
        self._watch = not all(_own_parameters_only(type(m)) for m in model.modules())

    def add_batch(self, x: torch.Tensor, objectives: Objectives) -> None:
        """Add Σ_k f(g_k) of this batch's samples to :attr:`sums`."""
        while True:
            self._batch = {}
            self._run(x, objectives, self._scale)
            if not self._overflows or _all_finite(self._batch.values()):
                break
            self._scale /= 2.0**10
            if self._scale < 2.0**-100:
                raise ConfigError(
                    "the float16 backward pass overflows at every scale of the objective: "
                    "compute the importance on a bfloat16 or float32 copy of the model"
                )
        unscale = self._scale**-self.degree
        for name, value in self._batch.items():
            value = value * unscale if unscale != 1.0 else value
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self._batch = {}

    def _run(self, x: torch.Tensor, objectives: Objectives, scale: float) -> None:
        n = self._n = len(x)
        losses, outside = self._forward(x, objectives, track=self._watch and not self._outside)
        if outside is None:  # a structure of calls not seen yet: watch its parameter uses
            losses, outside = self._forward(x, objectives, track=True)
        assert outside is not None
        for loss in losses:
            if loss.shape != (n,):
                raise ConfigError(
                    f"per-sample objectives must have shape ({n},), got {tuple(loss.shape)}"
                )
        called = [entry for entry in self.owned if entry.calls]
        if not called:
            raise ConfigError(
                "no trainable parameter of the model takes part in the output: nothing to measure"
            )
        self._route(called, outside, n)
        edges = [edge for entry in called for call in entry.calls for edge in call.edges]
        targets = _deepest([edge for edge in edges if edge is not None])
        deferred = [entry for entry in called if id(entry) not in self._immediate]
        try:
            for i, loss in enumerate(losses):
                if scale != 1.0:
                    loss = loss * scale
                self._deltas = {id(entry): {} for entry in deferred}
                retain = bool(self._graph) or i < len(losses) - 1
                self._live = True
                try:
                    # The targets only make the pass run down to every recorded output; the hooks
                    # installed by `recording` receive each δ on the way (_on_gradient).
                    torch.autograd.grad(loss.sum(), targets, allow_unused=True, retain_graph=retain)
                finally:
                    self._live = False
                for entry in deferred:
                    self._accumulate(entry, self._deltas[id(entry)])
                if self._graph:
                    self._graph_pass(loss)
        finally:
            self._deltas, self._projections = {}, {}
            for entry in self.owned:
                entry.calls.clear()

    def _forward(
        self, x: torch.Tensor, objectives: Objectives, track: bool
    ) -> tuple[Sequence[torch.Tensor], set[str] | None]:
        """The objectives of the batch, with every owner's calls recorded, and the parameters used
        outside their owners (``None`` if not tracked and this structure of calls is new).

        Watching every operation costs a few per cent of a small model's pass, so it runs only for
        models with a class that does not declare ``OWN_PARAMETERS_ONLY``, once per structure of
        calls (which modules ran, how often, with how many outputs): on the first
        batch, and again on a batch whose structure differs from every tracked one (its forward
        is then run a second time, with the watch on).
        """
        for entry in self.owned:
            entry.calls.clear()
        self._projections = {}
        unwatched: set[str] | None = None if self._watch else set()
        uses: AbstractContextManager[set[str] | None] = (
            _uses(self.owned) if track else nullcontext(unwatched)
        )
        with recording(self.owned, on_gradient=self._on_gradient), uses as outside:
            losses = objectives(self.model, x)
        structure = tuple(
            (index, len(entry.calls), tuple(len(call.edges) for call in entry.calls))
            for index, entry in enumerate(self.owned)
            if entry.calls
        )
        if outside is not None:
            self._outside[structure] = outside
        return losses, self._outside.get(structure)

    def _route(self, called: list[OwnedParameters], outside: set[str], n: int) -> None:
        """Which parameters take the graph path, and which modules' rules run during the pass."""
        users: dict[str, int] = {}
        for entry in called:
            for full in entry.full_names.values():
                users[full] = users.get(full, 0) + 1
        graph = {name for name, count in users.items() if count > 1} | outside
        for entry in called:
            # a layer with its own layout has no fallback: called twice, it takes the graph path
            own_layout_reused = isinstance(entry.module, _OWN_LAYOUT) and len(entry.calls) > 1
            if own_layout_reused or not all(_layout_fits(entry, call, n) for call in entry.calls):
                graph |= set(entry.full_names.values())
        self._graph = graph
        self._immediate = {
            id(entry)
            for entry in called
            if len(entry.calls) == 1
            and len(entry.calls[0].edges) == 1
            and not isinstance(entry.module, nn.MultiheadAttention)  # waits for its projections
            and not set(entry.full_names.values()) <= graph
        }
        for entry in called:
            if isinstance(entry.module, nn.MultiheadAttention) and len(entry.calls) == 1:
                self._watch_projections(entry)

    def _watch_projections(self, entry: OwnedParameters) -> None:
        """Have the backward pass hand over δ of a self-attention layer's packed projection."""
        call = entry.calls[0]
        assert isinstance(entry.module, nn.MultiheadAttention)
        found = sequence_rules.forward_projections(entry.module, call)
        if found is None:
            return
        node, out_input = found
        projections = self._projections.setdefault(id(entry), {"out_input": out_input})

        def keep(grad_outputs: tuple[torch.Tensor | None, ...]) -> None:
            if self._live and grad_outputs[0] is not None:
                projections["in_delta"] = grad_outputs[0].detach()

        node.register_prehook(keep)

    def _on_gradient(
        self, entry: OwnedParameters, index: int, leaf: int, delta: torch.Tensor
    ) -> None:
        if not self._live:
            return
        if id(entry) in self._immediate:
            self._accumulate(entry, {(index, leaf): delta})
        else:
            self._deltas[id(entry)][(index, leaf)] = delta

    def _accumulate(
        self, entry: OwnedParameters, deltas: dict[tuple[int, int], torch.Tensor]
    ) -> None:
        wanted = {local for local, full in entry.full_names.items() if full not in self._graph}
        if not wanted:
            return
        reached = []
        for index, call in enumerate(entry.calls):
            leaves = [deltas.get((index, leaf)) for leaf in range(len(call.edges))]
            if any(d is not None for d in leaves):
                reached.append(_sample_first(entry, call, leaves, self._n))
        if not reached:
            return  # the module ran but does not reach the objective
        result = None
        projections = self._projections.get(id(entry))
        if (
            isinstance(entry.module, nn.MultiheadAttention)
            and projections is not None
            and "in_delta" in projections
        ):
            # δ of the packed projection came with the backward pass itself: nothing to recompute
            args, _, delta, _ = reached[0]
            result = sequence_rules.attention_from_projections(
                entry.module, args[0], projections, delta[0], self.f
            )
        rule = RULES.get(type(entry.module))
        if result is None and rule is not None and len(reached) == 1:
            args, kwargs, delta, _ = reached[0]
            positional = _positional(entry.module, args, kwargs)
            if positional is not None:
                result = rule(
                    entry.module, positional, delta[0] if len(delta) == 1 else tuple(delta), self.f
                )
        if result is None:  # no rule, a configuration the rule declines, or a shared module
            params = {local: entry.params[local] for local in wanted}
            result = fallback_rule(entry.module, reached, params, self.f)
        for local, value in result.items():
            if local in wanted:
                self._add(entry.full_names[local], value)

    def _add(self, name: str, value: torch.Tensor) -> None:
        value = value.detach().to(compute_dtype(value.dtype))
        self._batch[name] = self._batch[name] + value if name in self._batch else value

    def _graph_pass(self, loss: torch.Tensor) -> None:
        """Σ_k f(∂L_k/∂θ) for the graph-path parameters, from per-sample backward passes."""
        names = sorted(name for name in self._graph if name in self.params)
        params = [self.params[name] for name in names]
        n = loss.shape[0]
        eye = torch.eye(n, dtype=loss.dtype, device=loss.device)
        for part in chunks(n, sum(p.numel() for p in params)):
            grads: tuple[torch.Tensor | None, ...]
            try:
                grads = torch.autograd.grad(
                    loss,
                    params,
                    eye[part],
                    retain_graph=True,
                    allow_unused=True,
                    is_grads_batched=True,
                )
            except RuntimeError:  # an operation without a batching rule: one sample at a time
                grads = _looped(loss, params, part)
            for name, grad in zip(names, grads, strict=True):
                if grad is not None:
                    grad = grad.to(compute_dtype(grad.dtype))
                    self._add(name, sum_over_samples(self.f, grad))


def _all_finite(values: Iterable[torch.Tensor]) -> bool:
    """Whether every entry of every tensor is finite, read back from the device once for all."""
    flags = [torch.isfinite(value).all() for value in values]
    return not flags or bool(torch.stack(flags).all())


def _looped(
    loss: torch.Tensor, params: list[nn.Parameter], part: slice
) -> tuple[torch.Tensor | None, ...]:
    """Per-sample gradients of ``loss[k]`` for k in ``part``, one backward pass each."""
    per_sample = [
        torch.autograd.grad(loss[k], params, retain_graph=True, allow_unused=True)
        for k in range(part.start, part.stop)
    ]
    return tuple(
        None if grads[0] is None else torch.stack([g for g in grads if g is not None])
        for grads in zip(*per_sample, strict=True)
    )


#: A module class that sets this attribute to True declares that its forward applies no
#: parameter of another module except by calling that module (the engine then need not watch
#: its operations). The classes of ``torch.nn`` are taken to do so (attention, which does not,
#: owns the parameters it applies).
OWN_PARAMETERS_ONLY = "memaware_own_parameters_only"


def _own_parameters_only(kind: type[nn.Module]) -> bool:
    return kind.__module__.startswith("torch.nn.") or getattr(kind, OWN_PARAMETERS_ONLY, False)


def _layout_fits(entry: OwnedParameters, call: Call, n: int) -> bool:
    """Whether the call's outputs hold the ``n`` samples where the module's rule looks for them."""
    module = entry.module
    if isinstance(module, nn.MultiheadAttention):
        return sequence_rules.attention_supported(module, call.args, call.kwargs, n)
    if isinstance(module, nn.RNNBase):
        return type(module) in RULES and sequence_rules.recurrent_supported(module, call.args, n)
    d = entry.sample_dim
    return all(len(shape) > d and shape[d] == n for shape in call.shapes)


def _sample_first(
    entry: OwnedParameters, call: Call, deltas: list[torch.Tensor | None], n: int
) -> FallbackCall:
    """The call's inputs, output gradients and output shapes with the sample on dimension 0, in
    the compute dtype (float32 for half-precision models). Attention lays out its own inputs."""
    d = 0 if isinstance(entry.module, _OWN_LAYOUT) else entry.sample_dim

    def move(t: Any) -> Any:
        if isinstance(t, tuple):
            return tuple(move(item) for item in t)
        if not isinstance(t, torch.Tensor):
            return t
        if t.is_floating_point():
            t = t.to(compute_dtype(t.dtype))
        return t.movedim(d, 0) if d and t.dim() > d and t.shape[d] == n else t

    shapes = [torch.Size((s[d], *s[:d], *s[d + 1 :])) if d else s for s in call.shapes]
    return (
        tuple(move(a) for a in call.args),
        {k: move(v) for k, v in call.kwargs.items()},
        [move(delta) for delta in deltas],
        shapes,
    )


_SIGNATURES: dict[type[nn.Module], inspect.Signature] = {}


def _positional(
    module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, ...] | None:
    """The call's arguments as a positional tuple (defaults filled in), for the layer rules;
    ``None`` when they cannot be bound that way."""
    if not kwargs and not isinstance(module, _OWN_LAYOUT):
        return args  # the rules of layers with their own layout read optional arguments too
    kind = type(module)
    if kind not in _SIGNATURES:
        _SIGNATURES[kind] = inspect.signature(kind.forward)
    try:
        bound = _SIGNATURES[kind].bind(module, *args, **kwargs)
    except TypeError:
        return None
    bound.apply_defaults()
    if bound.kwargs:
        return None
    return tuple(bound.args[1:])


@contextmanager
def _uses(owned: list[OwnedParameters]) -> Iterator[set[str]]:
    """Collects, while the block runs, the names of parameters used by an operation that runs
    outside every module owning them (a parent applying ``self.child.weight`` itself)."""
    owned_by: dict[int, tuple[set[int], str]] = {}
    for entry in owned:
        for local, param in entry.params.items():
            modules, _ = owned_by.setdefault(id(param), (set(), entry.full_names[local]))
            modules.add(id(entry.module))
    running: dict[int, int] = {}  # id of a module whose forward is running -> depth of calls
    outside: set[str] = set()

    def enter(module: nn.Module, args: Any) -> None:
        running[id(module)] = running.get(id(module), 0) + 1

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        running[id(module)] -= 1
        if not running[id(module)]:
            del running[id(module)]

    class Tracker(TorchFunctionMode):
        def __torch_function__(
            self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None
        ) -> Any:
            kwargs = kwargs or {}
            for value in (*args, *kwargs.values()):
                for item in value if isinstance(value, (list, tuple)) else (value,):
                    found = owned_by.get(id(item))
                    if found is not None and found[0].isdisjoint(running):
                        outside.add(found[1])
            return func(*args, **kwargs)

    handles = []
    for entry in owned:
        handles.append(entry.module.register_forward_pre_hook(enter))
        handles.append(entry.module.register_forward_hook(leave, always_call=True))
    try:
        with Tracker():
            yield outside
    finally:
        for handle in handles:
            handle.remove()


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
