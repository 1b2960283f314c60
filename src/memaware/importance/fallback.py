"""Generic per-sample rule for any module: ``torch.func`` vjp of the module alone, vmapped over samples.

For module ``m`` called with inputs ``a`` (possibly several calls, e.g. a shared layer), sample
k's gradient is ``g_k = Σ_calls vjp(θ ↦ m(a_k; θ))(δ_k)``; we materialise it in chunks of samples,
apply ``f`` and sum. It needs the module's own inputs and output gradients only, not a second
pass through the network. The engine hands every call over with the sample on dimension 0:
tensor arguments (positional or keyword) whose first dimension is the batch are taken as
batched, others are passed as they are. A module returning several tensors gets one cotangent
per tensor (zeros for outputs that do not reach the objective).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vjp, vmap

from memaware.importance.capture import output_tensors
from memaware.importance.rules import Reduce, chunks, sum_over_samples

#: One call as the engine hands it over: (args, kwargs, δ per output tensor or None where the
#: output does not reach the objective, output shapes), the sample on dimension 0.
FallbackCall = tuple[tuple[Any, ...], dict[str, Any], list[torch.Tensor | None], list[torch.Size]]


def fallback_rule(
    module: nn.Module,
    calls: list[FallbackCall],
    params: dict[str, nn.Parameter],
    f: Reduce,
) -> dict[str, torch.Tensor]:
    """Σ_k f(g_k) for ``params`` (the module's own, by local name) over ``calls``.

    Runs under ``no_grad``: torch.func still differentiates with respect to ``params``, while the
    parameters of the module's children record no graph. Parameters are cast to the dtype of the
    output gradients (float32 for half-precision models).
    """
    names = list(params)
    dtype = next(d.dtype for call in calls for d in call[2] if d is not None)
    detached = {name: params[name].detach().to(dtype) for name in names}
    n = calls[0][3][0][0]
    per_sample_elements = sum(p.numel() for p in detached.values())
    totals = {name: torch.zeros_like(detached[name]) for name in names}
    device = totals[names[0]].device
    cotangents = [
        [
            d if d is not None else torch.zeros(shape, dtype=dtype, device=device)
            for d, shape in zip(deltas, shapes, strict=True)
        ]
        for _, _, deltas, shapes in calls
    ]
    for part in chunks(n, per_sample_elements):
        grads: dict[str, torch.Tensor] | None = None
        for (args, kwargs, _, _), call_cotangents in zip(calls, cotangents, strict=True):
            with torch.no_grad():
                call_grads = _per_sample_vjp(
                    module, detached, args, kwargs, call_cotangents, n, part
                )
            grads = call_grads if grads is None else {k: grads[k] + call_grads[k] for k in names}
        assert grads is not None
        for name in names:
            totals[name] += sum_over_samples(f, grads[name])
    return totals


def _per_sample_vjp(
    module: nn.Module,
    params: dict[str, torch.Tensor],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    cotangents: list[torch.Tensor],
    n: int,
    part: slice,
) -> dict[str, torch.Tensor]:
    keys = list(kwargs)
    values = [*args, *(kwargs[k] for k in keys)]
    batched = [isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n for v in values]
    sliced = [v[part] if b else v for v, b in zip(values, batched, strict=True)]

    def one_sample(
        p: dict[str, torch.Tensor], ds: tuple[torch.Tensor, ...], *sample_values: Any
    ) -> dict[str, torch.Tensor]:
        inputs = [v.unsqueeze(0) if b else v for v, b in zip(sample_values, batched, strict=True)]
        positional, named = (
            tuple(inputs[: len(args)]),
            dict(zip(keys, inputs[len(args) :], strict=True)),
        )

        def forward(q: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
            return tuple(output_tensors(functional_call(module, q, positional, named)))

        pullback = vjp(forward, p)[1]
        (grad,) = pullback(tuple(d.unsqueeze(0) for d in ds))
        return grad  # type: ignore[no-any-return]

    in_dims = (None, 0, *[0 if b else None for b in batched])
    ds = tuple(d[part] for d in cotangents)
    return vmap(one_sample, in_dims=in_dims)(params, ds, *sliced)
