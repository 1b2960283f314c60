"""Exact per-sample rules for attention (and so the ``nn.Transformer*`` layers) and recurrent layers.

Attention applies its parameters as linear maps at every position of a sample:
``q = x_q W_qᵀ + b_q`` (likewise k, v with ``in_proj_weight``'s other two blocks) and
``out = A W_oᵀ + b_o`` on the attended values A. With the output gradient δ, sample k's
gradients are sums over positions of rank-one terms,

    g_k(W_q) = Σ_t δq_kt x_q,ktᵀ,   g_k(W_o) = Σ_t δ_kt A_ktᵀ,   g_k(b_o) = Σ_t δ_kt,

so the rule recomputes the attention core from the layer's recorded inputs (one batched
forward and backward of softmax(q kᵀ/√d + mask) v with the fused kernel, no parameter gradient)
to get δq, δk, δv and A, then contracts per sample as the linear rule does (for self-attention,
one contraction for the packed (3E × E) projection). Masks (``key_padding_mask``,
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
from torch.autograd.graph import Node

from memaware.importance.capture import Call
from memaware.importance.rules import Reduce, compute_dtype, register_rule, sequence_linear


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
    weights_wanted: bool,
    average: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Attended values A (N, L, E) and, if wanted, the attention weights, from projected q, k, v."""
    n, length, embed = q.shape
    source = k.shape[1]
    head_dim = embed // heads

    def split(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(n, -1, heads, head_dim).transpose(1, 2)

    mask = None
    if attn_mask is not None:
        mask = _additive(attn_mask, q.dtype)
        mask = mask.reshape(n, heads, length, source) if mask.dim() == 3 else mask
    if key_padding_mask is not None:
        padding = _additive(key_padding_mask, q.dtype).reshape(n, 1, 1, source)
        mask = padding if mask is None else mask + padding
    if not weights_wanted:  # the fused kernel, as the layer's own forward uses
        attended = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=mask)
        return attended.transpose(1, 2).reshape(n, length, embed), None
    scores = split(q) @ split(k).transpose(-2, -1) / math.sqrt(head_dim)
    weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
    attended = (weights @ split(v)).transpose(1, 2).reshape(n, length, embed)
    return attended, weights.mean(1) if average else weights


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether two recorded (separately detached) inputs are the same tensor: self-attention."""
    return a.data_ptr() == b.data_ptr() and a.shape == b.shape and a.stride() == b.stride()


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
    self_attention = _same(query, key) and _same(key, value)
    with torch.enable_grad():
        # δ is wanted with respect to the projections: they are the leaves of this small graph.
        if self_attention:  # one projection (N, L, 3E) for q, k and v, as the layer computes it
            projected = [F.linear(query, weight, bias).requires_grad_()]
            q, k, v = projected[0].chunk(3, -1)
            sources = [query]
        else:
            b_blocks = bias.chunk(3) if bias is not None else (None, None, None)
            projected = [
                F.linear(x, w, b).requires_grad_()
                for x, w, b in zip((query, key, value), weight.chunk(3), b_blocks, strict=True)
            ]
            q, k, v = projected
            sources = [query, key, value]
        attended, weights = _attend(
            q,
            k,
            v,
            module.num_heads,
            key_padding_mask,
            attn_mask,
            weights_delta is not None,
            bool(average),
        )
        outputs, cotangents = [], []
        if out_delta is not None:
            outputs.append(attended)
            cotangents.append(out_delta @ out_weight)
        if weights_delta is not None:
            assert weights is not None
            outputs.append(weights)
            cotangents.append(weights_delta)
        grads = torch.autograd.grad(outputs, projected, cotangents, allow_unused=True)
    grads = tuple(
        g if g is not None else torch.zeros_like(p) for g, p in zip(grads, projected, strict=True)
    )
    return _projection_importance(
        module, list(zip(grads, sources, strict=True)), out_delta, attended.detach(), f
    )


def _projection_importance(
    module: nn.MultiheadAttention,
    inputs: list[tuple[torch.Tensor, torch.Tensor]],
    out_delta: torch.Tensor | None,
    attended: torch.Tensor,
    f: Reduce,
) -> dict[str, torch.Tensor]:
    """Σ_k f(g_k) of the input projection's blocks, from (δ, input) pairs (one pair for the packed
    q/k/v projection, three for separate inputs), and of the output projection, from its δ and
    input A; every tensor (N, L, ·)."""
    result: dict[str, torch.Tensor] = {}
    if module.in_proj_weight.requires_grad:
        result["in_proj_weight"] = torch.cat([sequence_linear(d, x, f) for d, x in inputs])
    if module.in_proj_bias is not None and module.in_proj_bias.requires_grad:
        result["in_proj_bias"] = torch.cat([f(d.sum(1)).sum(0) for d, _ in inputs])
    if out_delta is not None:
        if module.out_proj.weight.requires_grad:
            result["out_proj.weight"] = sequence_linear(out_delta, attended, f)
        if module.out_proj.bias is not None and module.out_proj.bias.requires_grad:
            result["out_proj.bias"] = f(out_delta.sum(1)).sum(0)
    return result


def forward_projections(
    module: nn.MultiheadAttention, call: Call
) -> tuple[Node, torch.Tensor] | None:
    """For a self-attention call: the graph node of its packed input projection (whose output
    gradient is δ of q, k, v as rows (L·N, 3E)) and the input of its output projection, A as
    rows (L·N, E), both as ``F.multi_head_attention_forward`` computed them.

    Found by walking the layer's part of the graph from its output to the products with
    ``in_proj_weight`` and ``out_proj.weight``; ``None`` (the rule recomputes them) for cross
    attention or a graph of another shape.
    """
    query, key, value = (*call.args, None, None, None)[:3]
    edge = call.edges[0]
    if not (
        isinstance(query, torch.Tensor)
        and isinstance(key, torch.Tensor)
        and isinstance(value, torch.Tensor)
        and _same(query, key)
        and _same(key, value)
        and edge is not None
    ):
        return None
    weights = {id(module.in_proj_weight): "in", id(module.out_proj.weight): "out"}
    found: dict[str, Node] = {}
    stack: list[Node] = [edge.node]
    seen: set[Node] = set()
    while stack and len(seen) < _WALK_LIMIT and len(found) < 2:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is None:
                continue
            if child.name() == "TBackward0":  # the product's weight operand is wᵀ
                leaf = child.next_functions[0][0]
                kind = weights.get(id(getattr(leaf, "variable", None)))
                if kind is not None:
                    found[kind] = node
            stack.append(child)
    if set(found) != {"in", "out"}:
        return None
    out_input = getattr(found["out"], "_saved_mat1", None)
    length, n, embed = (
        query.shape if not module.batch_first else (query.shape[1], query.shape[0], query.shape[2])
    )
    if not isinstance(out_input, torch.Tensor) or out_input.shape != (length * n, embed):
        return None
    return found["in"], out_input.detach()


#: Nodes visited at most to find an attention layer's projections (its own part of the graph
#: has a few dozen).
_WALK_LIMIT = 200


def attention_from_projections(
    module: nn.MultiheadAttention,
    query: torch.Tensor,
    projections: dict[str, torch.Tensor],
    out_delta: torch.Tensor | None,
    f: Reduce,
) -> dict[str, torch.Tensor] | None:
    """The rule's result from what the layer's own forward and backward computed (self-attention).

    ``projections`` holds δ of the packed input projection and the output projection's input,
    as rows l·N + n (see :func:`forward_projections`); ``query`` and ``out_delta`` are in the
    layer's layout. ``None`` when the shapes are not the expected ones.
    """
    dtype = compute_dtype(query.dtype)
    x = query.to(dtype) if module.batch_first else query.to(dtype).transpose(0, 1)
    n, length, embed = x.shape
    in_delta = projections["in_delta"]
    if in_delta.shape != (length * n, 3 * embed):
        return None
    d = in_delta.to(dtype).reshape(length, n, -1).transpose(0, 1)
    attended = projections["out_input"].to(dtype).reshape(length, n, -1).transpose(0, 1)
    od = None
    if out_delta is not None:
        od = out_delta.to(dtype) if module.batch_first else out_delta.to(dtype).transpose(0, 1)
    return _projection_importance(module, [(d, x)], od, attended, f)


# ---------------------------------------------------------------------------------------------
# Recurrent layers


def recurrent_supported(module: nn.RNNBase, args: tuple[Any, ...], n: int) -> bool:
    """Whether :func:`recurrent_rule` covers this call (else the engine takes the graph path)."""
    if getattr(module, "proj_size", 0) or (module.training and module.dropout > 0):
        return False
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        return False  # unbatched input or a PackedSequence
    return x.shape[0 if module.batch_first else 1] == n


def _cell(
    mode: str, gi: torch.Tensor, gh: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One step of PyTorch's cells from the input and hidden pre-activations gi, gh."""
    if mode == "LSTM":
        assert c is not None
        i, f, g, o = (gi + gh).chunk(4, -1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    if mode == "GRU":
        r_i, z_i, n_i = gi.chunk(3, -1)
        r_h, z_h, n_h = gh.chunk(3, -1)
        r, z = torch.sigmoid(r_i + r_h), torch.sigmoid(z_i + z_h)
        candidate = torch.tanh(n_i + r * n_h)
        return (1 - z) * candidate + z * h, None
    total = gi + gh
    return (torch.tanh(total) if mode == "RNN_TANH" else torch.relu(total)), None


@register_rule(nn.RNN, nn.GRU, nn.LSTM)
def recurrent_rule(
    module: nn.RNNBase, args: tuple[Any, ...], delta: Any, f: Reduce
) -> dict[str, torch.Tensor]:
    """Σ_k f(g_k) for every ``weight_ih/hh_l{l}[_reverse]`` and ``bias_ih/hh_l{l}[_reverse]``.

    The layer is unrolled again from its recorded input and initial state (one batched forward
    and backward over time, no parameter gradient) to get the gradients of the pre-activations
    gi_t = W_ih x_t + b_ih and gh_t = W_hh h_{t−1} + b_hh at every step; then, per sample,
    g_k(W_ih) = Σ_t δgi_kt x_ktᵀ, g_k(W_hh) = Σ_t δgh_kt h_k,t−1ᵀ and the biases' Σ_t δ.
    """
    x, hx = args[0], args[1] if len(args) > 1 else None
    deltas = list(delta) if isinstance(delta, tuple) else [delta]
    if module.batch_first is False:
        x = x.transpose(0, 1)
    n, steps = x.shape[:2]
    dtype = x.dtype
    directions = 2 if module.bidirectional else 1
    layers, hidden = module.num_layers, module.hidden_size
    lstm = module.mode == "LSTM"
    if hx is None:
        h0 = x.new_zeros(layers * directions, n, hidden)
        c0 = h0 if lstm else None
    elif lstm:
        h0, c0 = hx
    else:
        h0, c0 = hx, None

    def weight(name: str) -> torch.Tensor | None:
        p = getattr(module, name, None)
        return p.detach().to(dtype) if isinstance(p, torch.Tensor) else None

    records: list[
        tuple[str, torch.Tensor, torch.Tensor, list[torch.Tensor], list[torch.Tensor]]
    ] = []
    last_h, last_c = [], []
    with torch.enable_grad():
        # the pre-activations must be nodes of a graph: start it at the (detached) input
        layer_input = x.detach().requires_grad_()
        for layer in range(layers):
            outputs = []
            for direction in range(directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                w_ih, w_hh = weight("weight_ih" + suffix), weight("weight_hh" + suffix)
                assert w_ih is not None and w_hh is not None
                gi = F.linear(layer_input, w_ih, weight("bias_ih" + suffix))
                state = layer * directions + direction
                h = h0[state].detach().requires_grad_()  # so that gh_0 is a graph node too
                c = c0[state] if c0 is not None else None
                hs, ghs, previous = [], [], []
                order = range(steps - 1, -1, -1) if direction else range(steps)
                for t in order:
                    gh = F.linear(h, w_hh, weight("bias_hh" + suffix))
                    previous.append(h)
                    ghs.append(gh)
                    h, c = _cell(module.mode, gi[:, t], gh, h, c)
                    hs.append(h)
                if direction:
                    hs, ghs, previous = hs[::-1], ghs[::-1], previous[::-1]
                records.append((suffix, layer_input, gi, ghs, previous))
                outputs.append(torch.stack(hs, 1))
                last_h.append(h)
                last_c.append(c)
            layer_input = torch.cat(outputs, -1) if directions == 2 else outputs[0]
        returned = [layer_input, torch.stack(last_h)]
        if lstm:
            returned.append(torch.stack([c for c in last_c if c is not None]))
        if module.batch_first is False and deltas[0] is not None:
            deltas[0] = deltas[0].transpose(0, 1)
        pairs = [(out, d) for out, d in zip(returned, deltas, strict=True) if d is not None]
        wanted = [g for _, _, gi, ghs, _ in records for g in (gi, *ghs)]
        grads = torch.autograd.grad(
            [out for out, _ in pairs], wanted, [d for _, d in pairs], allow_unused=True
        )
    result: dict[str, torch.Tensor] = {}
    position = 0
    for suffix, inputs, gi, ghs, previous in records:
        d_gi = grads[position]
        d_gh = grads[position + 1 : position + 1 + len(ghs)]
        position += 1 + len(ghs)
        d_gi = d_gi if d_gi is not None else torch.zeros_like(gi)
        d_gh_all = torch.stack(
            [d if d is not None else torch.zeros_like(g) for d, g in zip(d_gh, ghs, strict=True)], 1
        )
        h_prev = torch.stack(previous, 1).detach()

        def wants(name: str) -> bool:
            param = getattr(module, name, None)
            return isinstance(param, torch.Tensor) and param.requires_grad

        if wants("weight_ih" + suffix):
            result["weight_ih" + suffix] = sequence_linear(d_gi, inputs.detach(), f)
        if wants("weight_hh" + suffix):
            result["weight_hh" + suffix] = sequence_linear(d_gh_all, h_prev, f)
        if wants("bias_ih" + suffix):
            result["bias_ih" + suffix] = f(d_gi.sum(1)).sum(0)
        if wants("bias_hh" + suffix):
            result["bias_hh" + suffix] = f(d_gh_all.sum(1)).sum(0)
    return result
