"""Forward hooks that record, for every module owning trainable parameters, each call's inputs and output.

For gradients, the output is kept as its autograd *gradient edge* (the slot of the node that
produced it), not as a tensor, and a hook on the output hands its gradient δ to a callback the
moment the backward pass produces it. Both refer to the output as it was when the module
returned, so δ stays exact when later in-place operations (``ReLU(inplace=True)``) rewrite the
tensor, and no output is kept alive that the backward pass itself would have freed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from memaware.errors import ConfigError


@dataclass
class Call:
    """One call of a module: its (detached) inputs and either its output's gradient edge or a copy of it."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    edge: GradientEdge | None = None
    value: torch.Tensor | None = None


@dataclass
class OwnedParameters:
    """A module that owns trainable parameters directly, with their full and local names."""

    module: nn.Module
    params: dict[str, nn.Parameter]  # local name -> parameter
    full_names: dict[str, str]  # local name -> model.named_parameters() name
    calls: list[Call] = field(default_factory=list)


def owners(model: nn.Module) -> list[OwnedParameters]:
    """Every module of ``model`` that directly owns parameters with ``requires_grad``."""
    found = []
    for module_name, module in model.named_modules():
        params = {n: p for n, p in module.named_parameters(recurse=False) if p.requires_grad}
        if params:
            prefix = f"{module_name}." if module_name else ""
            found.append(OwnedParameters(module, params, {n: prefix + n for n in params}))
    return found


# Called with (owner, index of the call, δ) when the backward pass reaches a recorded output.
GradientCallback = Callable[[OwnedParameters, int, torch.Tensor], None]


@contextmanager
def recording(
    owned: list[OwnedParameters], on_gradient: GradientCallback | None = None
) -> Iterator[None]:
    """Record the calls of ``owned`` modules while the block runs.

    With ``on_gradient``, each call keeps its output's gradient edge (for a backward pass) and a
    hook calls ``on_gradient`` with the output's gradient whenever a backward pass computes it;
    without, each call keeps a copy of its output (for forward-only rules, safe from later
    in-place changes).
    """

    def make_hook(entry: OwnedParameters) -> Any:
        def hook(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
        ) -> None:
            if not isinstance(output, torch.Tensor):
                raise ConfigError(
                    f"{type(module).__name__} returns {type(output).__name__}, not a tensor: exact "
                    "per-sample importance needs tensor outputs; use granularity='batch'"
                )
            detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
            named = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
            if on_gradient is None:
                entry.calls.append(Call(detached, named, value=output.detach().clone()))
                return
            if output.grad_fn is None:
                return  # no graph (frozen inputs and parameters): nothing to measure here
            index = len(entry.calls)
            entry.calls.append(Call(detached, named, edge=get_gradient_edge(output)))
            output.register_hook(  # type: ignore[no-untyped-call]
                lambda delta: on_gradient(entry, index, delta)
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
