"""The quadratic anchor penalty λ Σ_i Ω_i (θ_i − θ*_i)² shared by MAS, l-MAS, EWC, SI and L2.

It is an explicit loss term (no hidden optimizer), computed with fused ``torch._foreach_*`` kernels
over all parameters at once, with a hand-written backward: ∂/∂θ_i = 2λ Ω_i (θ_i − θ*_i).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from memaware.errors import ConfigError


class _WeightedSquaredDistance(torch.autograd.Function):
    """λ Σ_i ‖√Ω_i ⊙ (θ_i − θ*_i)‖² over lists of tensors; gradient (2λ√Ω_i) ⊙ √Ω_i ⊙ (θ_i − θ*_i).

    ``grad_scales`` = 2λ√Ω are precomputed, so the step costs four fused passes over the
    parameters: difference, scaling and norm forward, one product backward.
    """

    @staticmethod
    def forward(
        ctx: Any,
        strength: float,
        sqrt_omegas: list[torch.Tensor],
        grad_scales: list[torch.Tensor],
        anchors: list[torch.Tensor],
        *params: torch.Tensor,
    ) -> torch.Tensor:
        scaled = torch._foreach_sub(list(params), anchors)
        torch._foreach_mul_(scaled, sqrt_omegas)
        ctx.grad_scales, ctx.scaled = grad_scales, scaled
        return strength * torch.stack(torch._foreach_norm(scaled)).square().sum()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        grads = torch._foreach_mul(ctx.scaled, ctx.grad_scales)
        # A loss term is almost always back-propagated with weight 1: skip that pass on the CPU,
        # where reading the scalar costs no device synchronisation.
        if grad_output.device.type != "cpu" or float(grad_output) != 1.0:
            torch._foreach_mul_(grads, grad_output)
        return (None, None, None, None, *grads)


class QuadraticPenalty(nn.Module):
    """``λ Σ_i Ω_i (θ_i − θ*_i)²`` over the parameters of ``model`` named in ``importance``.

    ``strength`` (λ) is fixed at construction. Ω and θ* are registered as buffers
    (``omega__<name>``, ``anchor__<name>``, dots replaced by ``__``), so they travel with a
    ``state_dict``. Parameters without an importance entry (e.g. a head added later) are not
    penalised. ``anchors`` default to the parameters' current values.
    """

    def __init__(
        self,
        model: nn.Module,
        importance: Mapping[str, torch.Tensor],
        strength: float = 1.0,
        anchors: Mapping[str, torch.Tensor] | None = None,
    ) -> None:
        super().__init__()
        if strength < 0:
            raise ConfigError(f"the penalty strength λ must be >= 0, got {strength}")
        self.strength = strength
        params = dict(model.named_parameters())
        unknown = sorted(set(importance) - set(params))
        if unknown:
            raise ConfigError(f"importance names {unknown[:3]} are not parameters of the model")
        self.names = [name for name in params if name in importance]
        self._params = [params[name] for name in self.names]
        for name, param in zip(self.names, self._params, strict=True):
            omega = importance[name].detach().to(param.device, param.dtype)
            if omega.shape != param.shape:
                raise ConfigError(
                    f"importance of {name} has shape {tuple(omega.shape)}, parameter {tuple(param.shape)}"
                )
            anchor = (
                (anchors[name] if anchors is not None else param)
                .detach()
                .to(param.device, param.dtype)
            )
            key = name.replace(".", "__")
            self.register_buffer(f"omega__{key}", omega.clone())
            self.register_buffer(f"anchor__{key}", anchor.clone())
            root = omega.clamp_min(0).sqrt()
            self.register_buffer(f"sqrt_omega__{key}", root, persistent=False)
            self.register_buffer(f"grad_scale__{key}", 2 * strength * root, persistent=False)
        self.register_load_state_dict_post_hook(  # type: ignore[no-untyped-call]
            lambda module, _keys: module._refresh_scales()
        )

    def _refresh_scales(self) -> None:
        """Recompute the cached √Ω and 2λ√Ω after Ω buffers were replaced (``load_state_dict``)."""
        for name, omega in zip(self.names, self._buffers_named("omega"), strict=True):
            key = name.replace(".", "__")
            root = omega.clamp_min(0).sqrt()
            getattr(self, f"sqrt_omega__{key}").copy_(root)
            getattr(self, f"grad_scale__{key}").copy_(2 * self.strength * root)

    def _buffers_named(self, prefix: str) -> list[torch.Tensor]:
        return [getattr(self, f"{prefix}__{name.replace('.', '__')}") for name in self.names]

    @property
    def omegas(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self._buffers_named("omega"), strict=True))

    @property
    def anchors(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self._buffers_named("anchor"), strict=True))

    def forward(self) -> torch.Tensor:
        """The penalty value, differentiable with respect to the model's parameters."""
        if not self.names:
            return torch.zeros(())
        value: torch.Tensor = _WeightedSquaredDistance.apply(  # type: ignore[no-untyped-call]
            self.strength,
            self._buffers_named("sqrt_omega"),
            self._buffers_named("grad_scale"),
            self._buffers_named("anchor"),
            *self._params,
        )
        return value
