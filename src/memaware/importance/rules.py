"""Exact per-sample rules: Σ_k f(g_k) for a layer's own parameters, one rule per module type.

A rule gets what hooks captured for one call of the layer: its inputs ``args`` (detached) and
``grad_output`` = δ, the gradient of Σ_k L(x_k) with respect to the layer's output. Because the
summed objective separates over samples, δ_k is exactly sample k's output gradient, and sample
k's parameter gradient g_k is a contraction of δ_k with the layer's input. ``f`` is ``|·|`` for
MAS and ``(·)²`` for the diagonal Fisher. Rules return ``{local parameter name: Σ_k f(g_k)}``.

The registry follows Opacus' ``grad_sample`` layout: ``@register_rule(nn.Linear)``; a module type
without a rule goes to the ``torch.func`` fallback in :mod:`memaware.importance.fallback`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv1d_weight, conv2d_weight

from memaware.errors import ConfigError


class Reduce(Protocol):
    """The elementwise f of Σ_k f(g_k): ``torch.abs`` (MAS) or ``torch.square`` (Fisher).

    Rules call it with ``out=`` to apply it in place to per-sample tensors they own.
    """

    def __call__(self, input: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor: ...


Rule = Callable[[Any, tuple[Any, ...], Any, Reduce], dict[str, torch.Tensor] | None]
"""A rule returns ``None`` when it cannot handle this configuration of its module type.

Its third argument is δ: a tensor for a module returning one tensor, else a tuple with one
entry per output tensor (``None`` for an output that does not reach the objective).
"""

RULES: dict[type[nn.Module], Rule] = {}

# Per-sample gradients that are not rank one are materialised this many floats (8 MiB) at a time.
CHUNK_ELEMENTS = 1 << 21


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Importance is computed and summed in float32 at least (half-precision sums overflow)."""
    return torch.promote_types(dtype, torch.float32) if dtype.is_floating_point else dtype


def register_rule(*module_types: type[nn.Module]) -> Callable[[Rule], Rule]:
    """Decorator: use the function as the exact rule for ``module_types`` (exact type match)."""

    def decorate(rule: Rule) -> Rule:
        for module_type in module_types:
            RULES[module_type] = rule
        return rule

    return decorate


def sum_over_samples(f: Reduce, per_sample: torch.Tensor) -> torch.Tensor:
    """Σ_k f(g_k) over the first dimension of ``per_sample``, which it overwrites with f(g).

    The sum over samples is a matrix-vector product with a vector of ones (one BLAS pass);
    ``Tensor.sum(0)`` and ``vector_norm(dim=0)`` reduce over the outer dimension 2-3× slower on CPU.
    """
    values = f(per_sample, out=per_sample)
    if not values.is_contiguous():
        return values.sum(0)
    flat = values.view(values.shape[0], -1)
    return (flat.new_ones(flat.shape[0]) @ flat).view(values.shape[1:])


def chunks(n: int, per_sample_elements: int) -> Iterator[slice]:
    """Slices of ``range(n)`` holding at most ``CHUNK_ELEMENTS`` per-sample elements each."""
    step = max(1, CHUNK_ELEMENTS // max(per_sample_elements, 1))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def _with_bias(
    module: nn.Module, out: dict[str, torch.Tensor], bias: Callable[[], torch.Tensor]
) -> None:
    param = getattr(module, "bias", None)
    if isinstance(param, torch.Tensor) and param.requires_grad:
        out["bias"] = bias()


def _wants_weight(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(weight, torch.Tensor) and weight.requires_grad


@register_rule(nn.Linear)
def linear_rule(
    module: nn.Linear, args: tuple[Any, ...], delta: torch.Tensor, f: Reduce
) -> dict[str, torch.Tensor]:
    """``g_k = Σ_t δ_kt a_ktᵀ``; with one position per sample (2-D input) Σ_k f(g_k) = f(δ)ᵀ f(a).

    The rank-one identity holds for f = |·| and f = (·)² elementwise, so the exact sum costs the
    same matmul as the batched gradient. Inputs with extra dimensions (sequences) materialise g_k
    in chunks.
    """
    a = args[0]
    out: dict[str, torch.Tensor] = {}
    if a.dim() == 2:
        if _wants_weight(module):
            out["weight"] = f(delta).t().mm(f(a))
        _with_bias(module, out, lambda: f(delta).sum(0))
        return out
    n = a.shape[0]
    a3 = a.reshape(n, -1, a.shape[-1])
    d3 = delta.reshape(n, -1, delta.shape[-1])
    if _wants_weight(module):
        out["weight"] = sequence_linear(d3, a3, f)
    _with_bias(module, out, lambda: f(d3.sum(1)).sum(0))
    return out


def sequence_linear(d3: torch.Tensor, a3: torch.Tensor, f: Reduce) -> torch.Tensor:
    """Σ_k f(Σ_t δ_kt a_ktᵀ) for a linear map applied at every position t of each sample.

    ``d3`` is (N, T, out), ``a3`` (N, T, in); the per-sample gradients (out × in) are
    materialised ``CHUNK_ELEMENTS`` at a time.
    """
    total: torch.Tensor | None = None
    for part in chunks(d3.shape[0], d3.shape[-1] * a3.shape[-1]):
        per_sample = torch.bmm(d3[part].transpose(1, 2), a3[part])
        reduced = sum_over_samples(f, per_sample)
        total = reduced if total is None else total.add_(reduced)
    assert total is not None  # at least one sample
    return total


# Measured on CPU, one thread: copying each output position's receptive field out of a strided
# view of the padded input and contracting it with δ sample by sample (a batched matmul) beats
# the grouped weight-gradient convolution for a small fan-in (3×3 over 1-3 channels, 256 samples:
# 4.8-10.4 ms against 11.4-24.6 ms) and wherever the fan-in is at least the number of output
# positions, where writing the per-sample gradients, not the contraction, is the cost (the
# reduced ResNet-18's 3×3 convolutions over 80 and 160 channels, 32 samples: 4.2-7.9 ms against
# 10.6-35.6 ms; a full ResNet-18's over 512 channels at 7×7: 169 against 379 ms). Over more
# positions than the fan-in the grouped convolution is as fast or faster (64 channels at 56×56:
# 66 against 91 ms) and copies nothing.
UNFOLD_MAX_FAN_IN = 64
GROUPED_MAX_SAMPLES = 32


def unfolds(fan_in: int, positions: int) -> bool:
    """Whether :func:`conv_rule` copies receptive fields (else: the grouped convolution)."""
    return fan_in <= UNFOLD_MAX_FAN_IN or fan_in >= positions


@register_rule(nn.Conv1d, nn.Conv2d)
def conv_rule(
    module: nn.Conv1d | nn.Conv2d, args: tuple[Any, ...], delta: torch.Tensor, f: Reduce
) -> dict[str, torch.Tensor] | None:
    """Per-sample weight gradients ``g_k[o, c, i] = Σ_l δ_k[o, l] · x_k[c, l + i]``, in chunks of samples.

    Two exact ways, picked by the fan-in C/G·k of an output channel and the number of output
    positions: for a small fan-in, or one no smaller than the number of positions, copy
    every output position's receptive field (``unfold``) and contract it with δ sample by sample
    (a batched matmul); otherwise lay m samples side by side as one image with m·C channels and
    ``groups = m·G``, so that the library's weight-gradient convolution returns all m per-sample
    gradients at once. Either yields chunks of per-sample gradients whose sum over the chunk's
    samples has the weight's layout. Returns ``None`` (→ fallback) for string padding or a padding
    mode other than zeros.
    """
    if isinstance(module.padding, str) or module.padding_mode != "zeros":
        return None
    x = args[0]
    n = x.shape[0]
    out: dict[str, torch.Tensor] = {}
    if _wants_weight(module):
        if unfolds(module.weight[0].numel(), delta[0, 0].numel()):
            per_sample_chunks = _unfolded(module, x, delta)
        else:
            per_sample_chunks = _grouped(module, x, delta)
        weight = module.weight.new_zeros(module.weight.shape, dtype=delta.dtype)
        for per_sample in per_sample_chunks:
            weight += sum_over_samples(f, per_sample).reshape(weight.shape)
        out["weight"] = weight
    _with_bias(module, out, lambda: f(delta.reshape(n, module.out_channels, -1).sum(-1)).sum(0))
    return out


def _grouped(
    module: nn.Conv1d | nn.Conv2d, x: torch.Tensor, delta: torch.Tensor
) -> Iterator[torch.Tensor]:
    """(m, *weight.shape) per-sample gradients of m samples at a time, each chunk from one grouped
    weight-gradient convolution."""
    weight_grad = conv2d_weight if isinstance(module, nn.Conv2d) else conv1d_weight
    budget = max(module.weight.numel(), CHUNK_ELEMENTS // GROUPED_MAX_SAMPLES)
    for part in chunks(x.shape[0], budget):
        xs, ds = x[part], delta[part]
        m = xs.shape[0]
        per_sample: torch.Tensor = weight_grad(  # type: ignore[no-untyped-call]
            xs.reshape(1, m * module.in_channels, *xs.shape[2:]),
            (m * module.out_channels, *module.weight.shape[1:]),
            ds.reshape(1, m * module.out_channels, *ds.shape[2:]),
            stride=module.stride,
            padding=module.padding,
            dilation=module.dilation,
            groups=m * module.groups,
        )
        yield per_sample.reshape(m, *module.weight.shape)


def _unfolded(
    module: nn.Conv1d | nn.Conv2d, x: torch.Tensor, delta: torch.Tensor
) -> Iterator[torch.Tensor]:
    """Per-sample gradients of m samples at a time, shaped (m, *weight.shape), as δ_k · P_kᵀ per group.

    P_k (C/G·∏k × positions) holds sample k's receptive fields, copied from a strided view of
    the zero-padded input into one buffer reused by every chunk (``F.unfold`` is several times
    slower on CPU and allocates each time).
    """
    assert not isinstance(module.padding, str)  # conv_rule sends string padding to the fallback
    kernel, dilation = tuple(module.kernel_size), tuple(module.dilation)
    padding, stride = tuple(module.padding), tuple(module.stride)
    if isinstance(module, nn.Conv1d):  # as a 2-D convolution of height 1
        x, delta = x.unsqueeze(-2), delta.unsqueeze(-2)
        kernel, dilation, padding, stride = (
            (1, *kernel),
            (1, *dilation),
            (0, *padding),
            (1, *stride),
        )
    n, channels = x.shape[:2]
    groups, out_per_group = module.groups, module.out_channels // module.groups
    out_h, out_w = delta.shape[-2:]
    padded = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    s_n, s_c, s_h, s_w = padded.stride()
    fields = padded.as_strided(
        (n, channels, *kernel, out_h, out_w),
        (s_n, s_c, dilation[0] * s_h, dilation[1] * s_w, stride[0] * s_h, stride[1] * s_w),
    )
    fan_in, positions = channels // groups * kernel[0] * kernel[1], out_h * out_w
    parts = list(chunks(n, groups * fan_in * positions + module.weight.numel()))
    buffer = x.new_empty(parts[0].stop if parts else 0, channels, *kernel, out_h, out_w)
    for part in parts:
        m = part.stop - part.start
        patches = buffer[:m]
        patches.copy_(fields[part])
        d = delta[part].reshape(m * groups, out_per_group, positions)
        per_sample = torch.bmm(d, patches.view(m * groups, fan_in, positions).transpose(1, 2))
        yield per_sample.view(m, *module.weight.shape)


@register_rule(nn.Embedding)
def embedding_rule(
    module: nn.Embedding, args: tuple[Any, ...], delta: torch.Tensor, f: Reduce
) -> dict[str, torch.Tensor] | None:
    """``g_k[v] = Σ_{t: idx_kt = v} δ_kt``: scatter δ by (sample, row), apply f, then sum over samples.

    ``max_norm`` (which rewrites the weight) and ``scale_grad_by_freq`` go to the fallback.
    """
    if module.max_norm is not None or module.scale_grad_by_freq:
        return None
    if not _wants_weight(module):
        return {}
    idx = args[0]
    n, rows, dim = idx.shape[0], module.num_embeddings, module.embedding_dim
    flat = idx.reshape(n, -1)
    keys = (torch.arange(n, device=idx.device).unsqueeze(1) * rows + flat).reshape(-1)
    unique, inverse = torch.unique(keys, return_inverse=True)
    per_pair = torch.zeros(len(unique), dim, dtype=delta.dtype, device=delta.device)
    per_pair.index_add_(0, inverse, delta.reshape(-1, dim))
    weight = module.weight.new_zeros(module.weight.shape, dtype=delta.dtype)
    weight.index_add_(0, unique % rows, f(per_pair))
    if module.padding_idx is not None:
        weight[module.padding_idx] = 0
    return {"weight": weight}


def _affine_rule(
    module: nn.Module, normalised: torch.Tensor, delta: torch.Tensor, f: Reduce
) -> dict[str, torch.Tensor]:
    """Affine parameters of a normalisation layer: g_k = Σ_t δ_kt·x̂_kt (weight), Σ_t δ_kt (bias).

    ``normalised`` and ``delta`` come shaped ``(N, positions, *parameter_shape)``.
    """
    out: dict[str, torch.Tensor] = {}
    if _wants_weight(module):
        out["weight"] = f((delta * normalised).sum(1)).sum(0)
    _with_bias(module, out, lambda: f(delta.sum(1)).sum(0))
    return out


@register_rule(nn.LayerNorm)
def layer_norm_rule(
    module: nn.LayerNorm, args: tuple[Any, ...], delta: torch.Tensor, f: Reduce
) -> dict[str, torch.Tensor]:
    """LayerNorm's elementwise affine: x̂ = layer_norm(x) without affine, summed over leading positions."""
    if not module.elementwise_affine:
        return {}
    x_hat = F.layer_norm(args[0], module.normalized_shape, None, None, module.eps)
    shape = (delta.shape[0], -1, *module.normalized_shape)
    return _affine_rule(module, x_hat.reshape(shape), delta.reshape(shape), f)


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """``(N, C, *spatial) -> (N, positions, C)`` so that the channel is the parameter axis."""
    return t.reshape(t.shape[0], t.shape[1], -1).transpose(1, 2)


@register_rule(nn.GroupNorm)
def group_norm_rule(
    module: nn.GroupNorm, args: tuple[Any, ...], delta: torch.Tensor, f: Reduce
) -> dict[str, torch.Tensor]:
    """GroupNorm's per-channel affine: x̂ = group_norm(x) without affine, summed over positions."""
    if not module.affine:
        return {}
    x_hat = F.group_norm(args[0], module.num_groups, None, None, module.eps)
    return _affine_rule(module, _channels_last(x_hat), _channels_last(delta), f)


@register_rule(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
def batch_norm_rule(
    module: nn.modules.batchnorm._BatchNorm, args: tuple[Any, ...], delta: torch.Tensor, f: Reduce
) -> dict[str, torch.Tensor]:
    """BatchNorm in eval mode: x̂ = (x − running_mean)/√(running_var + ε) per channel.

    In train mode the batch statistics couple the samples, so per-sample gradients are not
    defined: compute importance with ``mode="eval"``.
    """
    if not module.affine:
        return {}
    if module.training or module.running_mean is None or module.running_var is None:
        raise ConfigError(
            f"{type(module).__name__} in train mode mixes samples through batch statistics: "
            "per-sample importance needs mode='eval' (and running statistics)"
        )
    x = args[0]
    view = (1, -1) + (1,) * (x.dim() - 2)
    x_hat = (x - module.running_mean.reshape(view)) / torch.sqrt(
        module.running_var.reshape(view) + module.eps
    )
    if x.dim() == 2:
        x_hat, delta = x_hat.unsqueeze(-1), delta.unsqueeze(-1)
    return _affine_rule(module, _channels_last(x_hat), _channels_last(delta), f)
