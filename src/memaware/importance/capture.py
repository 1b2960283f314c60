"""Forward hooks that record, for every module owning trainable parameters, each call's inputs and outputs.

For gradients, each tensor output is kept as its autograd *gradient edge* (the slot of the node
that produced it), not as a tensor, and a hook on it hands its gradient δ to a callback the
moment the backward pass produces it. Both refer to the output as it was when the module
returned, so δ stays exact when later in-place operations (``ReLU(inplace=True)``) rewrite the
tensor, and no output is kept alive that the backward pass itself would have freed. A module
may return several tensors (``nn.MultiheadAttention``, ``nn.LSTM``): each tensor leaf of the
returned structure gets its own edge and hook.

Parameters are named as ``model.named_parameters()`` names them: a parameter shared by several
modules (tied weights) has one name, the first one PyTorch lists.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge
from torch.utils._pytree import tree_flatten

from memaware.errors import ConfigError

#: Modules whose forward uses their children's parameters without calling the children
#: (``MultiheadAttention`` applies ``out_proj.weight`` with ``F.linear``): they own those too.
COMPOSITES: tuple[type[nn.Module], ...] = (nn.MultiheadAttention,)

#: Containers that lay sequences out as (T, N, ...) when ``batch_first`` is false; the layers
#: inside them see the sample on dimension 1.
_SEQUENCE_CONTAINERS: tuple[type[nn.Module], ...] = (
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
    nn.TransformerEncoder,
    nn.TransformerDecoder,
    nn.Transformer,
)


@dataclass
class Call:
    """One call of a module: its (detached) inputs, and its outputs' gradient edges or a copy.

    ``edges`` has one entry per tensor leaf of the output (``None`` for a leaf without a graph),
    ``shapes`` their shapes; ``value`` is a copy of a tensor output (forward-only).
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    edges: list[GradientEdge | None] = field(default_factory=list)
    shapes: list[torch.Size] = field(default_factory=list)
    value: torch.Tensor | None = None

    @property
    def edge(self) -> GradientEdge | None:
        """The edge of a single-tensor output (``None`` for several outputs)."""
        return self.edges[0] if len(self.edges) == 1 else None


@dataclass
class OwnedParameters:
    """A module that owns trainable parameters, with their local and model-wide names.

    ``sample_dim`` is the dimension of the sample in the module's inputs and outputs (1 inside a
    sequence-first transformer, or as the user declared it); modules with a ``batch_first``
    flag of their own (attention, recurrent layers) read it themselves.
    """

    module: nn.Module
    name: str
    params: dict[str, nn.Parameter]  # local name -> parameter
    full_names: dict[str, str]  # local name -> model.named_parameters() name
    sample_dim: int = 0
    calls: list[Call] = field(default_factory=list)


def _batch_first(module: nn.Module) -> bool | None:
    """The ``batch_first`` flag of a sequence container (read from its first attention layer)."""
    for sub in module.modules():
        if isinstance(sub, nn.MultiheadAttention):
            return bool(sub.batch_first)
    return None


def owners(model: nn.Module, sample_dims: Mapping[str, int] | None = None) -> list[OwnedParameters]:
    """Every module of ``model`` that owns parameters with ``requires_grad`` (composites whole).

    ``sample_dims`` maps module names to the dimension holding the sample in that module's (and
    its descendants') inputs and outputs, for layouts the engine cannot see (default: 0, or 1
    inside a transformer built with ``batch_first=False``).
    """
    declared = dict(sample_dims or {})
    names = dict(model.named_modules())
    unknown = sorted(set(declared) - set(names))
    if unknown:
        raise ConfigError(
            f"sample_dims names modules the model does not have: {', '.join(unknown)}"
        )
    canonical = {id(p): n for n, p in model.named_parameters()}
    dims: dict[str, int] = {}
    found: list[OwnedParameters] = []
    inside_composite: list[str] = []
    for module_name, module in model.named_modules():
        dim = dims.get(module_name.rpartition(".")[0], 0)  # the parent's ("" is the root)
        if isinstance(module, _SEQUENCE_CONTAINERS) and _batch_first(module) is False:
            dim = 1
        dim = declared.get(module_name, dim)
        dims[module_name] = dim
        if any(module_name.startswith(prefix + ".") for prefix in inside_composite):
            continue
        composite = isinstance(module, COMPOSITES)
        if composite:
            inside_composite.append(module_name)
        params = {n: p for n, p in module.named_parameters(recurse=composite) if p.requires_grad}
        if params:
            full = {n: canonical[id(p)] for n, p in params.items()}
            found.append(OwnedParameters(module, module_name, params, full, dim))
    return found


# Called with (owner, index of the call, index of the output leaf, δ) when the backward pass
# reaches a recorded output.
GradientCallback = Callable[[OwnedParameters, int, int, torch.Tensor], None]


def output_tensors(output: Any) -> list[torch.Tensor]:
    """The tensor leaves of a module's output structure (a tensor, tuples, lists, dicts), in order."""
    if isinstance(output, torch.Tensor):
        return [output]
    return [leaf for leaf in tree_flatten(output)[0] if isinstance(leaf, torch.Tensor)]


def _detach(value: Any) -> Any:
    return value.detach() if isinstance(value, torch.Tensor) else value


@contextmanager
def recording(
    owned: list[OwnedParameters], on_gradient: GradientCallback | None = None
) -> Iterator[None]:
    """Record the calls of ``owned`` modules while the block runs.

    With ``on_gradient``, each call keeps its tensor outputs' gradient edges (for a backward
    pass) and a hook calls ``on_gradient`` with each output's gradient whenever a backward pass
    computes it; without, each call keeps a copy of its (single tensor) output, for
    forward-only rules, safe from later in-place changes.
    """

    def make_hook(entry: OwnedParameters) -> Any:
        def hook(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
        ) -> None:
            detached = tuple(_detach(a) for a in args)
            named = {k: _detach(v) for k, v in kwargs.items()}
            if on_gradient is None:
                if not isinstance(output, torch.Tensor):
                    raise ConfigError(
                        f"{type(module).__name__} returns {type(output).__name__}, not a tensor: "
                        "this forward-only importance needs modules that return one tensor"
                    )
                entry.calls.append(Call(detached, named, value=output.detach().clone()))
                return
            tensors = output_tensors(output)
            if not tensors:
                raise ConfigError(
                    f"{entry.name or type(module).__name__} ({type(module).__name__}) returns "
                    f"{type(output).__name__} with no tensor in it: exact per-sample importance "
                    "cannot follow its output; use granularity='batch'"
                )
            edges = [get_gradient_edge(t) if t.grad_fn is not None else None for t in tensors]
            if all(edge is None for edge in edges):
                return  # no graph (frozen inputs and parameters): nothing to measure here
            index = len(entry.calls)
            entry.calls.append(Call(detached, named, edges, [t.shape for t in tensors]))
            for leaf, (tensor, edge) in enumerate(zip(tensors, edges, strict=True)):
                if edge is not None:
                    tensor.register_hook(  # type: ignore[no-untyped-call]
                        lambda delta, leaf=leaf: on_gradient(entry, index, leaf, delta)
                    )

        return hook

    handles = [
        entry.module.register_forward_hook(make_hook(entry), with_kwargs=True) for entry in owned
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
