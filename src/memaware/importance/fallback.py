"""Generic per-sample rule for any module: ``torch.func`` vjp of the module alone, vmapped over samples.

For module ``m`` called with inputs ``a`` (possibly several calls, e.g. a shared layer), sample
k's gradient is ``g_k = Σ_calls vjp(θ ↦ m(a_k; θ))(δ_k)``; we materialise it in chunks of samples,
apply ``f`` and sum. It needs the module's own inputs and output gradient only, not a second pass
through the network. Tensor arguments are taken as batched along dim 0; others are passed as is.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vjp, vmap

from memaware.importance.rules import Reduce, chunks


def fallback_rule(
    module: nn.Module,
    calls: list[tuple[tuple[Any, ...], torch.Tensor]],
    params: dict[str, nn.Parameter],
    f: Reduce,
) -> dict[str, torch.Tensor]:
    """Σ_k f(g_k) for ``params`` (the module's own, by local name) over ``calls`` = [(args, δ), ...]."""
    names = list(params)
    detached = {name: params[name].detach() for name in names}
    n = calls[0][1].shape[0]
    per_sample_elements = sum(p.numel() for p in detached.values())
    totals = {name: torch.zeros_like(detached[name]) for name in names}
    for part in chunks(n, per_sample_elements):
        grads: dict[str, torch.Tensor] | None = None
        for args, delta in calls:
            call_grads = _per_sample_vjp(module, detached, args, delta, part)
            grads = call_grads if grads is None else {k: grads[k] + call_grads[k] for k in names}
        assert grads is not None
        for name in names:
            totals[name] += f(grads[name]).sum(0)
    return totals


def _per_sample_vjp(
    module: nn.Module,
    params: dict[str, torch.Tensor],
    args: tuple[Any, ...],
    delta: torch.Tensor,
    part: slice,
) -> dict[str, torch.Tensor]:
    batched = [isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == delta.shape[0] for a in args]
    sliced = [a[part] if b else a for a, b in zip(args, batched, strict=True)]

    def one_sample(p: dict[str, torch.Tensor], d: torch.Tensor, *sample_args: Any) -> dict[str, torch.Tensor]:
        inputs = tuple(a.unsqueeze(0) if b else a for a, b in zip(sample_args, batched, strict=True))
        _, pullback = vjp(lambda q: functional_call(module, q, inputs), p)
        (grad,) = pullback(d.unsqueeze(0))
        return grad  # type: ignore[no-any-return]

    in_dims = (None, 0, *[0 if b else None for b in batched])
    return vmap(one_sample, in_dims=in_dims)(params, delta[part], *sliced)  # type: ignore[no-any-return]
