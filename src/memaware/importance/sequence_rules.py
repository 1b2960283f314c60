"""Exact per-sample rule for ``nn.MultiheadAttention`` (and so for the ``nn.Transformer*`` layers).

Attention applies its parameters as linear maps at every position of a sample:
``q = x_q W_qᵀ + b_q`` (likewise k, v with ``in_proj_weight``'s other two blocks) and
``out = A W_oᵀ + b_o`` on the attended values A. With the output gradient δ, sample k's
gradients are sums over positions of rank-one terms,

    g_k(W_q) = Σ_t δq_kt x_q,ktᵀ,   g_k(W_o) = Σ_t δ_kt A_ktᵀ,   g_k(b_o) = Σ_t δ_kt,

so the rule recomputes the attention core from the layer's recorded inputs (one batched
forward and backward of softmax(q kᵀ/√d + mask) v, no parameter gradient) to get δq, δk, δv and
A, then contracts per sample as the linear rule does. Masks (``key_padding_mask``,
``attn_mask`` 2-D or 3-D, boolean or additive) and both layouts (``batch_first``) are supported;
a gradient reaching the returned attention weights is followed too.
Separate q/k/v projection weights (``kdim``/``vdim``), ``add_bias_kv``, ``add_zero_attn``,
unbatched inputs and dropout in train mode take the engine's graph path instead.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from memaware.importance.rules import Reduce, register_rule, sequence_linear


def attention_supported(
    module: nn.MultiheadAttention, args: tuple[Any, ...], kwargs: dict[str, Any], n: int
) -> bool:
    """Whether :func:`attention_rule` covers this call (else the engine takes the graph path)."""
    if (
        not module._qkv_same_embed_dim
        or module.bias_k is not None
        or module.add_zero_attn
        or (module.training and module.dropout > 0)
    ):
        return False
    query = args[0] if args else kwargs.get("query")
    if not isinstance(query, torch.Tensor) or query.dim() != 3:
        return False
    return query.shape[0 if module.batch_first else 1] == n


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True = not attended, PyTorch's convention) as 0 / −inf; a float one as is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(
            mask, float("-inf")
        )
    return mask.to(dtype)


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    heads: int,
    key_padding_mask: torch.Tensor | None,
    attn_mask: torch.Tensor | None,
    average: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attended values A (N, L, E) and the attention weights, from projected (N, ·, E) q, k, v."""
    n, length, embed = q.shape
    source = k.shape[1]
    head_dim = embed // heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(n, -1, heads, head_dim).transpose(1, 2)

    scores = split(q) @ split(k).transpose(-2, -1) / math.sqrt(head_dim)
    if attn_mask is not None:
        mask = _additive(attn_mask, scores.dtype)
        scores = scores + (mask.reshape(n, heads, length, source) if mask.dim() == 3 else mask)
    if key_padding_mask is not None:
        scores = scores + _additive(key_padding_mask, scores.dtype).reshape(n, 1, 1, source)
    weights = torch.softmax(scores, dim=-1)
    attended = (weights @ split(v)).transpose(1, 2).reshape(n, length, embed)
    return attended, weights.mean(1) if average else weights


@register_rule(nn.MultiheadAttention)
def attention_rule(
    module: nn.MultiheadAttention, args: tuple[Any, ...], delta: Any, f: Reduce
) -> dict[str, torch.Tensor]:
    """Σ_k f(g_k) for ``in_proj_weight``, ``in_proj_bias``, ``out_proj.weight``, ``out_proj.bias``."""
    query, key, value, key_padding_mask, _, attn_mask, average = args[:7]
    out_delta, weights_delta = delta if isinstance(delta, tuple) else (delta, None)
    if not module.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        if out_delta is not None:
            out_delta = out_delta.transpose(0, 1)
    dtype = query.dtype
    weight = module.in_proj_weight.detach().to(dtype)
    bias = module.in_proj_bias.detach().to(dtype) if module.in_proj_bias is not None else None
    out_weight = module.out_proj.weight.detach().to(dtype)
    inputs = (query, key, value)
    w_blocks = weight.chunk(3)
    b_blocks = bias.chunk(3) if bias is not None else (None, None, None)
    with torch.enable_grad():
        projected = [
            F.linear(x, w, b).requires_grad_()
            for x, w, b in zip(inputs, w_blocks, b_blocks, strict=True)
        ]
        q, k, v = projected
        attended, weights = _attend(
            q, k, v, module.num_heads, key_padding_mask, attn_mask, bool(average)
        )
        outputs, cotangents = [], []
        if out_delta is not None:
            outputs.append(attended)
            cotangents.append(out_delta @ out_weight)
        if weights_delta is not None:
            outputs.append(weights)
            cotangents.append(weights_delta)
        grads = torch.autograd.grad(outputs, projected, cotangents, allow_unused=True)
    grads = tuple(
        g if g is not None else torch.zeros_like(p) for g, p in zip(grads, projected, strict=True)
    )
    result: dict[str, torch.Tensor] = {}
    if module.in_proj_weight.requires_grad:
        result["in_proj_weight"] = torch.cat(
            [sequence_linear(g, x, f) for g, x in zip(grads, inputs, strict=True)]
        )
    if module.in_proj_bias is not None and module.in_proj_bias.requires_grad:
        result["in_proj_bias"] = torch.cat([f(g.sum(1)).sum(0) for g in grads])
    if out_delta is not None:
        if module.out_proj.weight.requires_grad:
            result["out_proj.weight"] = sequence_linear(out_delta, attended.detach(), f)
        if module.out_proj.bias is not None and module.out_proj.bias.requires_grad:
            result["out_proj.bias"] = f(out_delta.sum(1)).sum(0)
    return result
