"""Forward hooks that record, for every module owning trainable parameters, each call's inputs and output.

The outputs stay in the autograd graph so that one ``torch.autograd.grad(loss, outputs)`` gives
every layer's output gradient δ without computing any parameter gradient.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from memaware.errors import ConfigError


@dataclass
class Call:
    """One call of a module: its (detached) inputs, its output, and the output's autograd version."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    output: torch.Tensor
    version: int


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


class InplaceModified(Exception):
    """A recorded output was modified in place after the call (e.g. ``ReLU(inplace=True)``)."""


@contextmanager
def recording(owned: list[OwnedParameters], clone_outputs: bool) -> Iterator[None]:
    """Record calls while the block runs. ``clone_outputs`` hands the rest of the network a copy,
    so that in-place operations downstream cannot change the recorded output."""

    def make_hook(entry: OwnedParameters) -> Any:
        def hook(
            module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any
        ) -> Any:
            if not isinstance(output, torch.Tensor):
                raise ConfigError(
                    f"{type(module).__name__} returns {type(output).__name__}, not a tensor: exact "
                    "per-sample importance needs tensor outputs; use granularity='batch'"
                )
            detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
            named = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
            entry.calls.append(Call(detached, named, output, output._version))
            return output.clone() if clone_outputs else None

        return hook

    handles = [
        entry.module.register_forward_hook(make_hook(entry), with_kwargs=True) for entry in owned
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def check_versions(owned: list[OwnedParameters]) -> None:
    """Raise :class:`InplaceModified` if any recorded output changed after it was recorded."""
    for entry in owned:
        for call in entry.calls:
            if call.output._version != call.version:
                raise InplaceModified
